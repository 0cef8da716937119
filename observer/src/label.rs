//! From exchanges to metrics: a request's head becomes its labels when it is read (endpoint,
//! method, gRPC service and method, all bounded), and a finished exchange becomes the metric
//! updates. The same for HTTP/1 and HTTP/2: the connection table only follows bytes.

use crate::{
    exchange::{Finished, RequestHead},
    grpc::{self, MethodLabels, Methods},
    metrics::{Answered, Handles, Metrics},
    peer::{ClientHandles, PeerRequestLabels, Peers},
    route::{Endpoint, Router, Rules},
};

/// What a request is labelled by, fixed when its head is read.
#[derive(Debug, Clone, Copy)]
pub struct Tag {
    /// `None` for requests an `ignore` rule leaves out of the metrics.
    pub endpoint: Option<&'static str>,
    method: &'static str,
    /// A gRPC call's labels.
    grpc: Option<MethodLabels>,
    /// A request the target made (the client role), to this peer.
    pub peer: Option<&'static str>,
}

/// Methods kept as their own label value; any other token becomes `OTHER`, so a client
/// cannot grow the label set.
const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

fn method_label(method: &str) -> &'static str {
    METHODS.iter().find(|m| **m == method).copied().unwrap_or("OTHER")
}

/// The endpoint of requests whose target cannot be known (HTTP/2 joined late).
const UNKNOWN_ENDPOINT: &str = "unknown";

/// Labels requests and records what they did.
pub struct Labels<'m> {
    router: Router,
    methods: Methods,
    pub handles: Handles<'m>,
    pub peers: Peers,
    pub client: ClientHandles<'m>,
}

impl<'m> Labels<'m> {
    pub fn new(metrics: &'m Metrics, router: Router) -> Self {
        Labels {
            router,
            methods: Methods::default(),
            handles: Handles::new(metrics),
            peers: Peers::default(),
            client: ClientHandles::new(&metrics.client),
        }
    }

    pub fn set_rules(&mut self, mut rules: Rules) {
        self.peers.set_file_names(&rules.take_peers());
        self.router.set_rules(rules);
    }

    /// A request's head was read: its labels, and it is in flight.
    pub fn start(&mut self, head: RequestHead<'_>) -> Tag {
        start_request(&mut self.router, &mut self.methods, &mut self.handles, head)
    }

    /// A request the target wrote to `peer`: its labels, and it is in flight.
    pub fn start_client(&mut self, peer: &'static str, head: RequestHead<'_>) -> Tag {
        let method = method_label(head.method);
        let grpc = head.grpc.then(|| self.methods.labels(head.target.unwrap_or("")));
        if let Some(labels) = grpc {
            self.client.grpc_started(labels);
        }
        self.client.started(peer);
        Tag { endpoint: None, method, grpc, peer: Some(peer) }
    }

    /// A request left its connection: answered or abandoned.
    pub fn finish(&mut self, finished: Finished<Tag>) {
        match finished.tag.peer {
            Some(peer) => record_client(&mut self.client, peer, finished),
            None => record(&mut self.handles, finished),
        }
    }
}

fn start_request(
    router: &mut Router,
    methods: &mut Methods,
    handles: &mut Handles<'_>,
    head: RequestHead<'_>,
) -> Tag {
    let method = method_label(head.method);
    let grpc = head.grpc.then(|| methods.labels(head.target.unwrap_or("")));
    if let Some(labels) = grpc {
        handles.grpc_started(labels);
    }
    let (endpoint, overflowed) = match head.target {
        Some(target) => router.classify(head.method, target),
        None => (Endpoint::Label(UNKNOWN_ENDPOINT), false),
    };
    if overflowed {
        handles.endpoint_overflowed();
    }
    let Endpoint::Label(endpoint) = endpoint else {
        return Tag { endpoint: None, method, grpc, peer: None };
    };
    handles.started(endpoint);
    Tag { endpoint: Some(endpoint), method, grpc, peer: None }
}

fn seconds(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}

/// A request the target made: from its first byte written to its response's last byte read.
fn record_client(client: &mut ClientHandles<'_>, peer: &'static str, finished: Finished<Tag>) {
    let took = seconds(finished.start_ns, finished.end_ns);
    if let (Some(labels), Some(end)) = (finished.tag.grpc, finished.grpc)
        && let Some(code) = grpc::code(end, finished.status.is_some())
    {
        client.grpc_handled(labels, code, took);
    }
    match finished.status {
        Some(status) => {
            client.answered(PeerRequestLabels { peer, method: finished.tag.method, status }, took)
        }
        None => client.abandoned(peer),
    }
}

fn record(handles: &mut Handles<'_>, finished: Finished<Tag>) {
    if let (Some(labels), Some(end)) = (finished.tag.grpc, finished.grpc)
        && let Some(code) = grpc::code(end, finished.status.is_some())
    {
        handles.grpc_handled(labels, code, seconds(finished.start_ns, finished.end_ns));
    }
    let Tag { endpoint: Some(endpoint), method, .. } = finished.tag else {
        return; // ignored
    };
    let Some(status) = finished.status else {
        handles.abandoned(endpoint);
        return;
    };
    handles.answered(Answered {
        endpoint,
        method,
        status,
        seconds: seconds(finished.start_ns, finished.end_ns),
        first_byte_seconds: finished.first_byte_ns.map(|first| seconds(finished.start_ns, first)),
        response_bytes: finished.response_bytes,
        transfer: finished
            .first_byte_ns
            .zip(finished.tcp)
            .map(|(first, span)| (finished.end_ns.saturating_sub(first), span)),
    });
}
