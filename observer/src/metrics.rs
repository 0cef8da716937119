//! Metric families: the seed's request metrics plus the observer's own health counters.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use rustc_hash::FxHashMap;

/// Request duration buckets, in seconds: from a 100 µs boot script to a 10-minute image
/// download, roughly ×2.5 per step so both ends keep useful resolution.
pub const DURATION_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 180.0, 600.0,
];

/// Response size buckets, in bytes: ×4 steps from a 64-byte status reply to a 16 GiB image.
pub const SIZE_BUCKETS: [f64; 15] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
    17179869184.0,
];

/// Connection wait buckets, in seconds: ×4 steps from 10 µs (a server that reads at once, on
/// loopback) to 11 minutes. The long end is where a boot storm goes: a connection can sit in
/// a full accept queue for seconds, and the firmware's SYN retries (1, 3, 7, 15, 31 s after
/// a dropped attempt) only start the clock once a handshake completes.
pub const WAIT_BUCKETS: [f64; 14] = [
    0.00001, 0.00004, 0.00016, 0.00064, 0.00256, 0.01024, 0.04096, 0.16384, 0.65536, 2.62144, 10.48576,
    41.94304, 167.77216, 671.08864,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

type HistogramFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

/// Every family the daemon exports, registered once in `registry`.
pub struct Metrics {
    pub registry: Registry,
    pub in_flight: Family<EndpointLabels, Gauge>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily,
    pub first_byte: HistogramFamily,
    pub response_size: HistogramFamily,
    pub connection_wait: HistogramFamily,
    pub listen_queue_length: Family<PortLabels, Gauge>,
    pub listen_queue_limit: Family<PortLabels, Gauge>,
    pub listen_drops: Family<PortLabels, Counter>,
    pub incomplete: Family<EndpointLabels, Counter>,
    pub parse_errors: Family<ReasonLabels, Counter>,
    pub events: Counter,
    pub events_lost: Counter,
    pub kernel_map_full: Family<MapLabels, Counter>,
    pub endpoints_overflowed: Counter,
    pub connections: Gauge,
    pub connections_dropped: Counter,
    pub encrypted_connections: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let in_flight = Family::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests read but not yet fully answered",
            in_flight.clone(),
        );
        let requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by endpoint, method and status",
            requests.clone(),
        );
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "http_request_duration_seconds",
            "From the first byte of the request read to the last byte of its response written",
            duration.clone(),
        );
        let first_byte: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "http_response_first_byte_seconds",
            "From the first byte of the request read to the first byte of its response written",
            first_byte.clone(),
        );
        let response_size: HistogramFamily = Family::new_with_constructor(size_histogram);
        registry.register(
            "http_response_size_bytes",
            "Bytes of the response written, head and body",
            response_size.clone(),
        );
        let connection_wait: HistogramFamily = Family::new_with_constructor(wait_histogram);
        registry.register(
            "http_connection_wait_seconds",
            "From the completion of the connection's handshake to the server's first read of it, by the endpoint of its first request",
            connection_wait.clone(),
        );
        let listen_queue_length = Family::default();
        registry.register(
            "tcp_listen_queue_length",
            "Connections whose handshake completed that wait for the server's accept, by listening port",
            listen_queue_length.clone(),
        );
        let listen_queue_limit = Family::default();
        registry.register(
            "tcp_listen_queue_limit",
            "The accept queue's limit (the listen backlog in force), by listening port",
            listen_queue_limit.clone(),
        );
        let listen_drops = Family::default();
        registry.register(
            "tcp_listen_drops",
            "Connection attempts the kernel dropped at the listener (accept or SYN queue full, no memory), by listening port",
            listen_drops.clone(),
        );
        let incomplete = Family::default();
        registry.register(
            "observer_requests_incomplete",
            "Requests whose response was never completed (connection closed, events lost)",
            incomplete.clone(),
        );
        let parse_errors = Family::default();
        registry.register(
            "observer_parse_errors",
            "Bytes that could not be followed as HTTP/1.x, by reason",
            parse_errors.clone(),
        );
        let events = Counter::default();
        registry.register("observer_events", "Kernel events received", events.clone());
        let events_lost = Counter::default();
        registry.register(
            "observer_events_lost",
            "Kernel events dropped because the ring buffer was full",
            events_lost.clone(),
        );
        let kernel_map_full = Family::default();
        registry.register(
            "observer_kernel_map_full",
            "Kernel table inserts refused because the table was full, by map: sockets (a connection not followed), pending_calls (a syscall not seen), tls (an OpenSSL call or session not followed)",
            kernel_map_full.clone(),
        );
        let endpoints_overflowed = Counter::default();
        registry.register(
            "observer_endpoints_overflowed",
            "Requests labelled endpoint=\"other\" because the endpoint label cap was reached",
            endpoints_overflowed.clone(),
        );
        let connections = Gauge::default();
        registry.register("observer_connections", "Connections in the observer's table", connections.clone());
        let connections_dropped = Counter::default();
        registry.register(
            "observer_connections_dropped",
            "Connections not followed because the connection table was full",
            connections_dropped.clone(),
        );
        let encrypted_connections = Counter::default();
        registry.register(
            "observer_encrypted_connections",
            "Connections whose bytes at the socket were TLS records (not HTTP parse errors); their requests are counted from the server's OpenSSL calls where those are hooked",
            encrypted_connections.clone(),
        );
        Metrics {
            registry,
            encrypted_connections,
            connections,
            connections_dropped,
            in_flight,
            requests,
            duration,
            first_byte,
            response_size,
            connection_wait,
            listen_queue_length,
            listen_queue_limit,
            listen_drops,
            incomplete,
            parse_errors,
            events,
            events_lost,
            kernel_map_full,
            endpoints_overflowed,
        }
    }

    /// The registry in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The per-endpoint metrics of one endpoint.
#[derive(Clone)]
pub struct EndpointMetrics {
    pub in_flight: Gauge,
    pub duration: Histogram,
    pub first_byte: Histogram,
    pub response_size: Histogram,
    pub connection_wait: Histogram,
    pub incomplete: Counter,
}

/// Metric handles by label set, fetched from their families once and kept: a family lookup
/// hashes the labels and takes a lock, six of them per request. Handles share their value
/// with the family, so what is recorded through them is what `/metrics` shows. Bounded like
/// the families themselves (endpoints × methods × statuses).
pub struct Handles<'m> {
    metrics: &'m Metrics,
    endpoints: FxHashMap<&'static str, EndpointMetrics>,
    requests: FxHashMap<RequestLabels, Counter>,
}

impl<'m> Handles<'m> {
    pub fn new(metrics: &'m Metrics) -> Self {
        Handles { metrics, endpoints: FxHashMap::default(), requests: FxHashMap::default() }
    }

    pub fn metrics(&self) -> &'m Metrics {
        self.metrics
    }

    pub fn endpoint(&mut self, endpoint: &'static str) -> &EndpointMetrics {
        let metrics = self.metrics;
        self.endpoints.entry(endpoint).or_insert_with(|| {
            let labels = EndpointLabels { endpoint };
            EndpointMetrics {
                in_flight: metrics.in_flight.get_or_create(&labels).clone(),
                duration: metrics.duration.get_or_create(&labels).clone(),
                first_byte: metrics.first_byte.get_or_create(&labels).clone(),
                response_size: metrics.response_size.get_or_create(&labels).clone(),
                connection_wait: metrics.connection_wait.get_or_create(&labels).clone(),
                incomplete: metrics.incomplete.get_or_create(&labels).clone(),
            }
        })
    }

    pub fn requests(&mut self, labels: RequestLabels) -> &Counter {
        let metrics = self.metrics;
        self.requests
            .entry(labels)
            .or_insert_with_key(|labels| metrics.requests.get_or_create(labels).clone())
    }
}
