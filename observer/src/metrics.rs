//! Metric families: the seed's request metrics plus the observer's own health counters.

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_protobuf::prometheus_data_model::MetricFamily},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, NativeHistogramConfig},
    },
    registry::Registry,
};
use rustc_hash::FxHashMap;

use crate::{
    exchange::TcpSpan,
    grpc::{CodeLabels, GrpcMetrics, MethodLabels},
    peer::ClientMetrics,
    transfer::{TransferHandles, TransferMetrics},
};

/// Classic request duration buckets, in seconds: from a few µs (nginx answers `return 200` on
/// loopback in ~10 µs) to a 10-minute image download, ×2 to ×2.5 per step, 24 buckets (4 more
/// than the layout that started at 100 µs: 26 series per endpoint and histogram with `+Inf`,
/// `_sum` and `_count`). The native buckets (`NATIVE`) are finer everywhere.
pub const DURATION_BUCKETS: [f64; 24] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0,
];

/// Native (exponential) histogram buckets of latencies: schema 3, a bucket every ×2^(1/8)
/// (~9 %), so a quantile is known within ~4.5 % at any scale without a layout chosen in
/// advance. Zero threshold 2^-20 s (~1 µs): below it nothing is told apart (the kernel's two
/// timestamps of a request are further apart than that). At most 160 buckets per series
/// (µs to s at full resolution; past it the library halves the resolution, bounding memory).
pub const NATIVE_SCHEMA: i8 = 3;
pub const NATIVE_ZERO_THRESHOLD: f64 = 1.0 / (1u64 << 20) as f64;
const NATIVE_MAX_BUCKETS: usize = 160;

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

/// A kernel program, by its name in the eBPF object (a bounded set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

type HistogramFamily = Family<EndpointLabels, Histogram, Buckets>;

/// How a histogram family makes its series: classic `buckets`, and native buckets too if
/// `native` (latencies, unless `--no-native-histograms`).
#[derive(Clone, Copy, Debug)]
pub struct Buckets {
    pub classic: &'static [f64],
    pub native: bool,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        let classic = self.classic.iter().copied();
        if !self.native {
            return Histogram::new(classic);
        }
        let native = NativeHistogramConfig::with_schema(NATIVE_SCHEMA)
            .zero_threshold(NATIVE_ZERO_THRESHOLD)
            .max_buckets(NATIVE_MAX_BUCKETS);
        Histogram::new_classic_and_native(classic, native)
    }
}

/// Every family the daemon exports, in groups, each registered once in `registry`.
pub struct Metrics {
    pub registry: Registry,
    pub http: HttpMetrics,
    pub grpc: GrpcMetrics,
    pub client: ClientMetrics,
    pub transfer: TransferMetrics,
    pub listen: ListenMetrics,
    pub health: HealthMetrics,
}

/// The seed's request metrics and the per-request detail beside them.
pub struct HttpMetrics {
    pub in_flight: Family<EndpointLabels, Gauge>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily,
    pub first_byte: HistogramFamily,
    pub response_size: HistogramFamily,
    pub connection_wait: HistogramFamily,
}

/// The targets' accept queues, sampled from the kernel at each scrape.
pub struct ListenMetrics {
    pub queue_length: Family<PortLabels, Gauge>,
    pub queue_limit: Family<PortLabels, Gauge>,
    pub drops: Family<PortLabels, Counter>,
}

/// The observer's own health: what it could not follow, and why (`observer_*`).
pub struct HealthMetrics {
    pub incomplete: Family<EndpointLabels, Counter>,
    pub parse_errors: Family<ReasonLabels, Counter>,
    pub events: Counter,
    pub events_lost: Counter,
    pub kernel_map_full: Family<MapLabels, Counter>,
    pub endpoints_overflowed: Counter,
    pub connections: Gauge,
    pub connections_dropped: Counter,
    pub encrypted_connections: Counter,
    pub opens_unseen: Counter,
    pub frames_unwalked: Counter,
    pub waits_missing: Counter,
    pub program_misses: Family<ProgramLabels, Counter>,
    pub tls_keyed_verified: Counter,
    pub tls_keyed_lost: Family<ReasonLabels, Counter>,
    pub tls_keyed_fall_backs: Counter,
}

/// Registers `metric` under `name` and hands it back: the registry keeps a clone sharing its
/// values, the caller records into the original.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl HttpMetrics {
    /// `native`: latencies get native buckets too.
    pub fn register(registry: &mut Registry, native: bool) -> Self {
        let histogram = |classic: &'static [f64], native: bool| -> HistogramFamily {
            Family::new_with_constructor(Buckets { classic, native })
        };
        HttpMetrics {
            in_flight: registered(
                registry,
                "http_requests_in_flight",
                "HTTP requests read but not yet fully answered",
                Family::default(),
            ),
            requests: registered(
                registry,
                "http_requests",
                "HTTP requests answered, by endpoint, method and status",
                Family::default(),
            ),
            duration: registered(
                registry,
                "http_request_duration_seconds",
                "From the first byte of the request read to the last byte of its response written",
                histogram(&DURATION_BUCKETS, native),
            ),
            first_byte: registered(
                registry,
                "http_response_first_byte_seconds",
                "From the first byte of the request read to the first byte of its response written",
                histogram(&DURATION_BUCKETS, native),
            ),
            response_size: registered(
                registry,
                "http_response_size_bytes",
                "Bytes of the response written, head and body",
                histogram(&SIZE_BUCKETS, false),
            ),
            connection_wait: registered(
                registry,
                "http_connection_wait_seconds",
                "From the completion of the connection's handshake to the server's first read of it, by the endpoint of its first request",
                histogram(&WAIT_BUCKETS, native),
            ),
        }
    }
}

impl ListenMetrics {
    /// Under `registry`'s `tcp_listen_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("tcp_listen");
        ListenMetrics {
            queue_length: registered(
                registry,
                "queue_length",
                "Connections whose handshake completed that wait for the server's accept, by listening port",
                Family::default(),
            ),
            queue_limit: registered(
                registry,
                "queue_limit",
                "The accept queue's limit (the listen backlog in force), by listening port",
                Family::default(),
            ),
            drops: registered(
                registry,
                "drops",
                "Connection attempts the kernel dropped at the listener (accept or SYN queue full, no memory), by listening port",
                Family::default(),
            ),
        }
    }
}

impl HealthMetrics {
    /// Under `registry`'s `observer_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("observer");
        HealthMetrics {
            incomplete: registered(
                registry,
                "requests_incomplete",
                "Requests whose response was never completed (connection closed, events lost)",
                Family::default(),
            ),
            parse_errors: registered(
                registry,
                "parse_errors",
                "Bytes that could not be followed as HTTP/1.x, by reason",
                Family::default(),
            ),
            events: registered(registry, "events", "Kernel events received", Counter::default()),
            events_lost: registered(
                registry,
                "events_lost",
                "Kernel events dropped because the ring buffer was full",
                Counter::default(),
            ),
            kernel_map_full: registered(
                registry,
                "kernel_map_full",
                "Kernel table inserts refused because the table was full, by map: sockets (a connection not followed), pending_calls (a syscall not seen), tls (an OpenSSL call or session not followed)",
                Family::default(),
            ),
            endpoints_overflowed: registered(
                registry,
                "endpoints_overflowed",
                "Requests labelled endpoint=\"other\" because the endpoint label cap was reached",
                Counter::default(),
            ),
            connections: registered(
                registry,
                "connections",
                "Connections in the observer's table",
                Gauge::default(),
            ),
            connections_dropped: registered(
                registry,
                "connections_dropped",
                "Connections not followed because the connection table was full",
                Counter::default(),
            ),
            encrypted_connections: registered(
                registry,
                "encrypted_connections",
                "Connections whose bytes at the socket were TLS records (not HTTP parse errors); their requests are counted from the server's OpenSSL calls where those are hooked",
                Counter::default(),
            ),
            opens_unseen: registered(
                registry,
                "connection_opens_unseen",
                "New connections whose handshake the kernel program did not see complete (before attach, or a skipped run), found new at their first read; their connection wait is taken from the socket's own creation time, at the kernel tick's resolution",
                Counter::default(),
            ),
            frames_unwalked: registered(
                registry,
                "http2_calls_unwalked",
                "Calls on HTTP/2 connections whose frames the kernel could not walk (bytes without a user buffer that were not a DATA payload, more than 1,024 iovecs or 16,384 steps); that direction of the connection is given up (observer_parse_errors_total{reason=\"http2_frames\"})",
                Counter::default(),
            ),
            waits_missing: registered(
                registry,
                "connection_waits_missing",
                "Connections whose first request was read with no connection-wait sample: joined mid-stream (they had carried data before attach)",
                Counter::default(),
            ),
            program_misses: registered(
                registry,
                "kernel_program_misses",
                "Runs of a kernel program the kernel skipped (its per-CPU recursion guard: the program was already running on that CPU), by program",
                Family::default(),
            ),
            tls_keyed_verified: registered(
                registry,
                "tls_keyed_verified",
                "Connections of --tls keys whose first record opened with its tag checked under the keys their handshake handed over",
                Counter::default(),
            ),
            tls_keyed_lost: registered(
                registry,
                "tls_keyed_lost",
                "Connections of --tls keys given up, by reason: no_keys (ciphertext of a session whose keys were not handed over, counted per record), not_found (no secret opened its first record), framing (a record header not copied), wrong_keys (a record whose tag did not match), http2 (HTTP/2 found by its first bytes where the ALPN's place is unknown: its records were not copied whole)",
                Family::default(),
            ),
            tls_keyed_fall_backs: registered(
                registry,
                "tls_keyed_fall_backs",
                "Processes whose TLS sessions --tls keys handed back to per-call uprobes (after a connection lost as not_found or http2, or from the start when its libssl's calibration failed), each logged with its reason",
                Counter::default(),
            ),
        }
    }
}

impl Metrics {
    /// Latency histograms with classic and native buckets.
    pub fn new() -> Self {
        Self::with_native(true)
    }

    /// `native`: latency histograms get native buckets besides the classic ones (the
    /// Prometheus protobuf format carries them; the text formats only the classic ones).
    pub fn with_native(native: bool) -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry, native);
        let grpc = GrpcMetrics::register(&mut registry, native);
        let client = ClientMetrics::register(&mut registry, native);
        let transfer = TransferMetrics::register(&mut registry, native);
        let listen = ListenMetrics::register(&mut registry);
        let health = HealthMetrics::register(&mut registry);
        Metrics { registry, http, grpc, client, transfer, listen, health }
    }

    /// The registry in Prometheus' protobuf format (length-delimited `MetricFamily`
    /// messages): classic and native buckets alike.
    pub fn encode_protobuf(&self) -> Vec<u8> {
        prometheus_client::encoding::prometheus_protobuf::encode_to_vec(&self.registry)
            .expect("encoding to a Vec cannot fail")
    }

    /// The registry as Prometheus `MetricFamily` messages, for `observer top` in-process.
    pub fn families(&self) -> Vec<MetricFamily> {
        prometheus_client::encoding::prometheus_protobuf::encode(&self.registry)
            .expect("encoding to a Vec cannot fail")
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
struct EndpointMetrics {
    in_flight: Gauge,
    duration: Histogram,
    first_byte: Histogram,
    response_size: Histogram,
    connection_wait: Histogram,
    incomplete: Counter,
    /// Made at the endpoint's first response with TCP's accounting (none on the OpenSSL and
    /// syscall paths, which do not report it).
    transfer: Option<TransferHandles>,
}

/// A request answered in full, as recorded.
pub struct Answered {
    pub endpoint: &'static str,
    pub method: &'static str,
    pub status: u16,
    /// First byte of the request read → last byte of the response written.
    pub seconds: f64,
    /// First byte of the request read → first byte of the response written.
    pub first_byte_seconds: Option<f64>,
    pub response_bytes: u64,
    /// First → last byte of the response written, and TCP's accounting at those writes.
    pub transfer: Option<(u64, TcpSpan)>,
}

/// Where requests are recorded: metric handles by label set, fetched from their families
/// once and kept, because a family lookup hashes the labels and takes a lock, six of them per
/// request. Handles share their value with the family, so what is recorded through them is
/// what `/metrics` shows. Bounded like the families themselves (endpoints × methods ×
/// statuses).
pub struct Handles<'m> {
    metrics: &'m Metrics,
    endpoints: FxHashMap<&'static str, EndpointMetrics>,
    requests: FxHashMap<RequestLabels, Counter>,
    /// Nanoseconds in a kernel tick, the unit of TCP's accounting.
    tick_ns: u64,
}

impl<'m> Handles<'m> {
    pub fn new(metrics: &'m Metrics) -> Self {
        // 4 ms (CONFIG_HZ=250) where the clock cannot say.
        let tick_ns = crate::probes::layout::tick_ns().unwrap_or(4_000_000);
        Handles { metrics, endpoints: FxHashMap::default(), requests: FxHashMap::default(), tick_ns }
    }

    /// A request's head was read: it is in flight.
    pub fn started(&mut self, endpoint: &'static str) {
        self.endpoint(endpoint).in_flight.inc();
    }

    pub fn answered(&mut self, answered: Answered) {
        let Answered { endpoint, method, status, seconds, first_byte_seconds, response_bytes, transfer } =
            answered;
        let metrics = self.metrics;
        self.requests
            .entry(RequestLabels { endpoint, method, status })
            .or_insert_with_key(|labels| metrics.http.requests.get_or_create(labels).clone())
            .inc();
        let metrics = self.endpoint(endpoint);
        metrics.in_flight.dec();
        metrics.duration.observe(seconds);
        if let Some(first) = first_byte_seconds {
            metrics.first_byte.observe(first);
        }
        metrics.response_size.observe(response_bytes as f64);
        if let Some((transfer_ns, span)) = transfer {
            let tick_ns = self.tick_ns;
            self.transfer(endpoint).transferred(transfer_ns, &span, tick_ns);
        }
    }

    /// Segments retransmitted after a response's last write, before the connection's next one.
    pub fn retransmitted(&mut self, endpoint: &'static str, segments: u64) {
        if segments > 0 {
            self.transfer(endpoint).retransmitted(segments);
        }
    }

    fn transfer(&mut self, endpoint: &'static str) -> &TransferHandles {
        let transfer = &self.metrics.transfer;
        self.endpoint_mut(endpoint).transfer.get_or_insert_with(|| TransferHandles::new(transfer, endpoint))
    }

    /// A gRPC call started.
    pub fn grpc_started(&self, labels: MethodLabels) {
        self.metrics.grpc.started.get_or_create(&labels).inc();
    }

    /// A gRPC call ended with `code` after `seconds`.
    pub fn grpc_handled(&self, labels: MethodLabels, code: &'static str, seconds: f64) {
        let MethodLabels { grpc_service, grpc_method } = labels;
        self.metrics
            .grpc
            .handled
            .get_or_create(&CodeLabels { grpc_service, grpc_method, grpc_code: code })
            .inc();
        self.metrics.grpc.handling.get_or_create(&labels).observe(seconds);
    }

    /// A request whose response was never completed.
    pub fn abandoned(&mut self, endpoint: &'static str) {
        let metrics = self.endpoint(endpoint);
        metrics.in_flight.dec();
        metrics.incomplete.inc();
    }

    /// A connection waited `seconds` for its first read; `endpoint` is its first request's.
    pub fn waited(&mut self, endpoint: &'static str, seconds: f64) {
        self.endpoint(endpoint).connection_wait.observe(seconds);
    }

    pub fn parse_error(&self, reason: &'static str) {
        self.metrics.health.parse_errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A connection's first request was read without a wait sample.
    pub fn wait_missing(&self) {
        self.metrics.health.waits_missing.inc();
    }

    pub fn encrypted_connections(&self, count: u64) {
        self.metrics.health.encrypted_connections.inc_by(count);
    }

    /// A connection not followed: the table was full.
    pub fn connection_dropped(&self) {
        self.metrics.health.connections_dropped.inc();
    }

    /// A request labelled `other`: the endpoint cap was reached.
    pub fn endpoint_overflowed(&self) {
        self.metrics.health.endpoints_overflowed.inc();
    }

    fn endpoint(&mut self, endpoint: &'static str) -> &EndpointMetrics {
        self.endpoint_mut(endpoint)
    }

    fn endpoint_mut(&mut self, endpoint: &'static str) -> &mut EndpointMetrics {
        let (http, health) = (&self.metrics.http, &self.metrics.health);
        self.endpoints.entry(endpoint).or_insert_with(|| {
            let labels = EndpointLabels { endpoint };
            EndpointMetrics {
                in_flight: http.in_flight.get_or_create(&labels).clone(),
                duration: http.duration.get_or_create(&labels).clone(),
                first_byte: http.first_byte.get_or_create(&labels).clone(),
                response_size: http.response_size.get_or_create(&labels).clone(),
                connection_wait: http.connection_wait.get_or_create(&labels).clone(),
                incomplete: health.incomplete.get_or_create(&labels).clone(),
                transfer: None,
            }
        })
    }
}
