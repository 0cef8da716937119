//! gRPC, the grpc-ecosystem metrics: calls by service and method (from the call's path,
//! `/package.Service/Method`), their outcome by canonical code, and how long whole calls took,
//! streaming ones included. Service and method labels are capped like endpoints.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use rustc_hash::FxHashMap;

use crate::{
    exchange::GrpcEnd,
    metrics::{Buckets, DURATION_BUCKETS},
};

/// Distinct (service, method) pairs labelled; calls to others are labelled `other`.
pub const MAX_METHODS: usize = 256;

/// The label value of services and methods past the cap, and of paths that are not
/// `/service/method`.
const OTHER: &str = "other";

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
    pub grpc_code: &'static str,
}

type HandlingFamily = Family<MethodLabels, Histogram, Buckets>;

pub struct GrpcMetrics {
    pub started: Family<MethodLabels, Counter>,
    pub handled: Family<CodeLabels, Counter>,
    pub handling: HandlingFamily,
}

impl GrpcMetrics {
    /// `native`: the handling histogram gets native buckets too.
    pub fn register(registry: &mut Registry, native: bool) -> Self {
        let started = Family::default();
        let handled = Family::default();
        let handling = HandlingFamily::new_with_constructor(Buckets { classic: &DURATION_BUCKETS, native });
        registry.register("grpc_server_started", "gRPC calls started on the server", started.clone());
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed on the server, by canonical status code (from grpc-status; a reset stream is Canceled)",
            handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC calls from the first byte of the request's headers read to the end of the response (trailers), streaming calls included",
            handling.clone(),
        );
        GrpcMetrics { started, handled, handling }
    }
}

/// The (service, method) labels of calls, each pair made once and kept (bounded by the cap).
#[derive(Default)]
pub struct Methods {
    known: FxHashMap<(String, String), MethodLabels>,
}

impl Methods {
    /// The labels of a call to `path`; `other` past the cap or for a path of another shape.
    pub fn labels(&mut self, path: &str) -> MethodLabels {
        let other = MethodLabels { grpc_service: OTHER, grpc_method: OTHER };
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return other;
        };
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return other;
        }
        let key = (service.to_owned(), method.to_owned());
        if let Some(labels) = self.known.get(&key) {
            return *labels;
        }
        if self.known.len() >= MAX_METHODS {
            return other;
        }
        // Leaked once per pair, at most MAX_METHODS of them: label values live as long as
        // the families that hold them.
        let labels = MethodLabels {
            grpc_service: Box::leak(key.0.clone().into_boxed_str()),
            grpc_method: Box::leak(key.1.clone().into_boxed_str()),
        };
        self.known.insert(key, labels);
        labels
    }
}

/// The canonical name of how a call ended (grpc/doc/statuscodes.md); `None` for a call that
/// did not end (its connection went away).
pub fn code(end: GrpcEnd, answered: bool) -> Option<&'static str> {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    match end {
        GrpcEnd::Status(code) => Some(NAMES.get(usize::from(code)).copied().unwrap_or("Unknown")),
        GrpcEnd::Reset => Some("Canceled"),
        // A response that ended without grpc-status is malformed: Unknown, as clients take it.
        GrpcEnd::Unknown => Some("Unknown"),
        GrpcEnd::Missing if answered => Some("Unknown"),
        GrpcEnd::Missing => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_capped_labels() {
        let mut methods = Methods::default();
        let labels = methods.labels("/helloworld.Greeter/SayHello");
        assert_eq!((labels.grpc_service, labels.grpc_method), ("helloworld.Greeter", "SayHello"));
        for bad in ["/", "/x", "nope/a", "//a", "/a/", "/a/b/c"] {
            assert_eq!(methods.labels(bad).grpc_service, OTHER, "{bad}");
        }
        for i in 0..MAX_METHODS + 10 {
            methods.labels(&format!("/s/m{i}"));
        }
        assert_eq!(methods.labels("/s/late").grpc_method, OTHER);
        assert_eq!(methods.labels("/helloworld.Greeter/SayHello").grpc_method, "SayHello", "kept");
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code(GrpcEnd::Status(0), true), Some("OK"));
        assert_eq!(code(GrpcEnd::Status(5), true), Some("NotFound"));
        assert_eq!(code(GrpcEnd::Status(99), true), Some("Unknown"));
        assert_eq!(code(GrpcEnd::Reset, false), Some("Canceled"));
        assert_eq!(code(GrpcEnd::Missing, false), None);
    }
}
