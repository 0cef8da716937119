//! The client role: what the targets ask of their upstreams. Their own connections are
//! labelled by peer (the remote address and port as the socket saw it, or the name
//! `--peer-name` gave it; never a host name from a request, which a client could forge), capped
//! like endpoints; their requests, connects and failed connects are counted per peer.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use observer_common::{CONNECT_ABANDONED, PEER_ADDR_LEN};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use rustc_hash::FxHashMap;

use crate::{
    grpc::{CodeLabels, MethodLabels},
    metrics::{Buckets, DURATION_BUCKETS, WAIT_BUCKETS},
};

/// Distinct peers labelled by default (`--max-peers`); connections to others are labelled
/// `other`.
pub const DEFAULT_MAX_PEERS: usize = 100;

/// The label of peers past the cap.
const OTHER: &str = "other";

/// The label of a connection whose connect was not seen (its record lost).
pub const UNKNOWN: &str = "unknown";

/// The peer a client `Kind::Open` record names: its address (IPv4 mapped into IPv6 by the
/// kernel, unmapped here) and port.
pub fn peer_of(head: &[u8], port: u16) -> Option<SocketAddr> {
    let bytes: [u8; PEER_ADDR_LEN] = head.get(..PEER_ADDR_LEN)?.try_into().ok()?;
    let v6 = Ipv6Addr::from(bytes);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    Some(SocketAddr::new(ip, port))
}

/// Why a connect failed, from the socket's error (`Kind::Open`'s negative `ret`): the
/// `reason` label of `tcp_connect_failures_total`.
pub fn failure_reason(ret: i64) -> &'static str {
    const ENETDOWN: i64 = 100;
    const ENETUNREACH: i64 = 101;
    const ETIMEDOUT: i64 = 110;
    const ECONNREFUSED: i64 = 111;
    const EHOSTDOWN: i64 = 112;
    const EHOSTUNREACH: i64 = 113;
    if ret == CONNECT_ABANDONED {
        return "abandoned";
    }
    // A record's `ret` is whatever the kernel wrote: i64::MIN has no negation (found by
    // fuzzing the record decode).
    match ret.checked_neg().unwrap_or(0) {
        ECONNREFUSED => "refused",
        ETIMEDOUT => "timeout",
        ENETDOWN | ENETUNREACH | EHOSTDOWN | EHOSTUNREACH => "unreachable",
        _ => "other",
    }
}

/// `--peer-name ADDR:PORT=NAME`.
pub fn parse_peer_name(value: &str) -> Result<(SocketAddr, String), String> {
    let (addr, name) = value.split_once('=').ok_or("expected ADDR:PORT=NAME")?;
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let name = name.trim();
    let fits = !name.is_empty() && name.len() <= 64;
    if !fits || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        return Err(format!("{name:?}: a name is 1 to 64 of [A-Za-z0-9-_.:]"));
    }
    Ok((addr, name.to_owned()))
}

/// Peer labels, each made once and kept (bounded by the cap); named peers (`--peer-name`,
/// the routes file's `[[peer]]`) do not count against it.
pub struct Peers {
    /// Names by address: the command line's, then the routes file's (reloaded on SIGHUP).
    names: FxHashMap<SocketAddr, &'static str>,
    cli: Vec<(SocketAddr, String)>,
    known: FxHashMap<SocketAddr, &'static str>,
    max: usize,
}

impl Peers {
    pub fn new(names: &[(SocketAddr, String)], max: usize) -> Peers {
        let mut peers =
            Peers { names: FxHashMap::default(), cli: names.to_vec(), known: FxHashMap::default(), max };
        peers.set_file_names(&[]);
        peers
    }

    /// The routes file's names (a reload): the command line's win where both name an address.
    pub fn set_file_names(&mut self, file: &[(SocketAddr, String)]) {
        self.names = file
            .iter()
            .chain(&self.cli)
            .map(|(addr, name)| (*addr, &*Box::leak(name.clone().into_boxed_str())))
            .collect();
    }

    /// The label of `peer`, and whether it was one past the cap.
    pub fn label(&mut self, peer: SocketAddr) -> (&'static str, bool) {
        if let Some(name) = self.names.get(&peer) {
            return (name, false);
        }
        if let Some(label) = self.known.get(&peer) {
            return (label, false);
        }
        if self.known.len() >= self.max {
            return (OTHER, true);
        }
        let label: &'static str = Box::leak(peer.to_string().into_boxed_str());
        self.known.insert(peer, label);
        (label, false)
    }
}

impl Default for Peers {
    fn default() -> Self {
        Peers::new(&[], DEFAULT_MAX_PEERS)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerRequestLabels {
    pub peer: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub peer: &'static str,
    pub reason: &'static str,
}

type PeerHistograms = Family<PeerLabels, Histogram, Buckets>;

/// The client role's families, OpenTelemetry's names in Prometheus' form.
pub struct ClientMetrics {
    pub requests: Family<PeerRequestLabels, Counter>,
    pub duration: PeerHistograms,
    pub in_flight: Family<PeerLabels, Gauge>,
    pub incomplete: Family<PeerLabels, Counter>,
    pub connect_duration: PeerHistograms,
    pub connect_failures: Family<FailureLabels, Counter>,
    pub peers_overflowed: Counter,
    pub grpc_started: Family<MethodLabels, Counter>,
    pub grpc_handled: Family<CodeLabels, Counter>,
    pub grpc_handling: Family<MethodLabels, Histogram, Buckets>,
}

impl ClientMetrics {
    /// `native`: latencies get native buckets too.
    pub fn register(registry: &mut Registry, native: bool) -> Self {
        let histograms = |classic: &'static [f64]| Family::new_with_constructor(Buckets { classic, native });
        let metrics = ClientMetrics {
            requests: Family::default(),
            duration: histograms(&DURATION_BUCKETS),
            in_flight: Family::default(),
            incomplete: Family::default(),
            connect_duration: histograms(&WAIT_BUCKETS),
            connect_failures: Family::default(),
            peers_overflowed: Counter::default(),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_handling: Family::new_with_constructor(Buckets { classic: &DURATION_BUCKETS, native }),
        };
        let m = &metrics;
        registry.register(
            "http_client_requests",
            "HTTP requests the targets made and had answered, by peer, method and status",
            m.requests.clone(),
        );
        registry.register(
            "http_client_request_duration_seconds",
            "From the first byte of a target's request written to the last byte of its response read, by peer",
            m.duration.clone(),
        );
        registry.register(
            "http_client_requests_in_flight",
            "HTTP requests the targets wrote whose response has not been read in full, by peer",
            m.in_flight.clone(),
        );
        registry.register(
            "http_client_requests_incomplete",
            "HTTP requests the targets made that never got a whole response (connection closed, events lost), by peer",
            m.incomplete.clone(),
        );
        registry.register(
            "tcp_connect_duration_seconds",
            "From a target's SYN sent to its connection established, from the kernel's own state changes, by peer",
            m.connect_duration.clone(),
        );
        registry.register(
            "tcp_connect_failures",
            "Connects of the targets that failed, by peer and reason: refused (a reset), timeout (the kernel's SYN retries ran out), unreachable (ICMP), abandoned (the process closed the socket while it was connecting: its own connect timeout), other",
            m.connect_failures.clone(),
        );
        registry.register(
            "observer_peers_overflowed",
            "Connections labelled peer=\"other\" because the peer label cap (--max-peers) was reached",
            m.peers_overflowed.clone(),
        );
        registry.register("grpc_client_started", "gRPC calls the targets started", m.grpc_started.clone());
        registry.register(
            "grpc_client_handled",
            "gRPC calls the targets completed, by canonical status code (from grpc-status; a reset stream is Canceled)",
            m.grpc_handled.clone(),
        );
        registry.register(
            "grpc_client_handling_seconds",
            "gRPC calls the targets made, from the first byte of the request's headers written to the end of the response read",
            m.grpc_handling.clone(),
        );
        metrics
    }
}

/// The per-peer series of one peer, fetched once.
#[derive(Clone)]
struct PeerSeries {
    in_flight: Gauge,
    duration: Histogram,
    incomplete: Counter,
}

/// Where client requests are recorded: handles by label set, kept (bounded like peers).
pub struct ClientHandles<'m> {
    metrics: &'m ClientMetrics,
    peers: FxHashMap<&'static str, PeerSeries>,
    requests: HashMap<PeerRequestLabels, Counter>,
}

impl<'m> ClientHandles<'m> {
    pub fn new(metrics: &'m ClientMetrics) -> Self {
        ClientHandles { metrics, peers: FxHashMap::default(), requests: HashMap::new() }
    }

    fn series(&mut self, peer: &'static str) -> &PeerSeries {
        let metrics = self.metrics;
        self.peers.entry(peer).or_insert_with(|| {
            let labels = PeerLabels { peer };
            PeerSeries {
                in_flight: metrics.in_flight.get_or_create(&labels).clone(),
                duration: metrics.duration.get_or_create(&labels).clone(),
                incomplete: metrics.incomplete.get_or_create(&labels).clone(),
            }
        })
    }

    pub fn connected(&self, peer: &'static str, seconds: f64) {
        self.metrics.connect_duration.get_or_create(&PeerLabels { peer }).observe(seconds);
    }

    pub fn connect_failed(&self, peer: &'static str, reason: &'static str) {
        self.metrics.connect_failures.get_or_create(&FailureLabels { peer, reason }).inc();
    }

    pub fn peer_overflowed(&self) {
        self.metrics.peers_overflowed.inc();
    }

    /// A request was written: it is in flight.
    pub fn started(&mut self, peer: &'static str) {
        self.series(peer).in_flight.inc();
    }

    pub fn answered(&mut self, labels: PeerRequestLabels, seconds: f64) {
        let metrics = self.metrics;
        let peer = labels.peer;
        self.requests
            .entry(labels)
            .or_insert_with_key(|labels| metrics.requests.get_or_create(labels).clone())
            .inc();
        let series = self.series(peer);
        series.in_flight.dec();
        series.duration.observe(seconds);
    }

    pub fn abandoned(&mut self, peer: &'static str) {
        let series = self.series(peer);
        series.in_flight.dec();
        series.incomplete.inc();
    }

    pub fn grpc_started(&self, labels: MethodLabels) {
        self.metrics.grpc_started.get_or_create(&labels).inc();
    }

    pub fn grpc_handled(&self, labels: MethodLabels, code: &'static str, seconds: f64) {
        let MethodLabels { grpc_service, grpc_method } = labels;
        self.metrics
            .grpc_handled
            .get_or_create(&CodeLabels { grpc_service, grpc_method, grpc_code: code })
            .inc();
        self.metrics.grpc_handling.get_or_create(&labels).observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_its_address_unmapped_and_its_port() {
        let mut head = [0u8; 16];
        head[10..12].copy_from_slice(&[0xff, 0xff]);
        head[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(peer_of(&head, 8080), Some("127.0.0.1:8080".parse().unwrap()));
        let v6: Ipv6Addr = "fd00::7".parse().unwrap();
        assert_eq!(peer_of(&v6.octets(), 443), Some("[fd00::7]:443".parse().unwrap()));
        assert_eq!(peer_of(&head[..15], 1), None, "a cut record");
    }

    #[test]
    fn peers_are_capped_and_names_do_not_count() {
        let named: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut peers = Peers::new(&[(named, "mirror".into())], 2);
        assert_eq!(peers.label(named), ("mirror", false));
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(peers.label(addr(1)), ("127.0.0.1:1", false));
        assert_eq!(peers.label(addr(2)), ("127.0.0.1:2", false));
        assert_eq!(peers.label(addr(3)), ("other", true));
        assert_eq!(peers.label(addr(1)), ("127.0.0.1:1", false), "known ones keep theirs");
        // The routes file names one more (a reload); the command line's name stays.
        peers.set_file_names(&[(addr(3), "mirror-b".into()), (named, "ignored".into())]);
        assert_eq!(peers.label(addr(3)), ("mirror-b", false));
        assert_eq!(peers.label(named), ("mirror", false));
    }

    #[test]
    fn connect_errors_have_reasons() {
        assert_eq!(failure_reason(-111), "refused");
        assert_eq!(failure_reason(-110), "timeout");
        assert_eq!(failure_reason(-113), "unreachable");
        assert_eq!(failure_reason(CONNECT_ABANDONED), "abandoned");
        assert_eq!(failure_reason(-1), "other");
        assert_eq!(failure_reason(i64::MIN), "other");
    }

    #[test]
    fn peer_names_are_checked() {
        assert_eq!(
            parse_peer_name("127.0.0.1:9000=inventory"),
            Ok(("127.0.0.1:9000".parse().unwrap(), "inventory".into()))
        );
        assert!(parse_peer_name("127.0.0.1=x").is_err(), "no port");
        assert!(parse_peer_name("127.0.0.1:1=a b").is_err(), "a space");
        assert!(parse_peer_name("127.0.0.1:1").is_err());
    }
}
