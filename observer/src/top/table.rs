//! Two snapshots of the daemon's metrics → one row per endpoint, and one per gRPC method
//! (`gRPC service/method`: calls ended, non-OK codes as errors, whole-call latency): rates over
//! the interval between them, latency quantiles from the histogram's bucket increments: the
//! native buckets where the daemon exposes them (within ~9 % at any scale), else the classic
//! ones, and only "below" or "above" a bound when that is all the buckets say.

use std::{collections::BTreeMap, time::Instant};

use super::{
    exposition::Sample,
    native::{Native, Quantile},
    upstream::{self, PeerTotals, UpstreamRow},
};
use crate::transfer::LIMITS;

/// Short names of `LIMITS`, for the column that says what held transfers.
pub const LIMIT_NAMES: [&str; 4] = ["app", "rwnd", "sbuf", "flight"];

/// Counter and gauge values of one endpoint at one moment.
#[derive(Debug, Default, Clone)]
struct Totals {
    requests: f64,
    errors: f64,
    in_flight: f64,
    bytes: f64,
    /// Cumulative duration buckets: (upper bound, count), ascending.
    buckets: Vec<(f64, f64)>,
    /// Cumulative connection-wait buckets, the same way.
    wait_buckets: Vec<(f64, f64)>,
    /// The same histograms' native buckets, if exposed.
    native: Option<Native>,
    wait_native: Option<Native>,
    /// Transfer seconds by `limited_by`, in `transfer::LIMITS` order.
    transfer: [f64; 4],
}

/// One listening port at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct ListenTotals {
    queued: f64,
    limit: f64,
    drops: f64,
}

/// The daemon's metrics at one moment, by endpoint.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    endpoints: BTreeMap<String, Totals>,
    listeners: BTreeMap<String, ListenTotals>,
    peers: BTreeMap<String, PeerTotals>,
}

impl Snapshot {
    pub fn new(samples: &[Sample], at: Instant) -> Self {
        let mut endpoints: BTreeMap<String, Totals> = BTreeMap::new();
        let mut listeners: BTreeMap<String, ListenTotals> = BTreeMap::new();
        let mut peers: BTreeMap<String, PeerTotals> = BTreeMap::new();
        for sample in samples {
            if let Some(peer) = sample.label("peer") {
                upstream::add(&mut peers, peer, sample);
                continue;
            }
            if let Some(port) = sample.label("port") {
                let totals = listeners.entry(port.to_owned()).or_default();
                match sample.name.as_str() {
                    "tcp_listen_queue_length" => totals.queued = sample.value,
                    "tcp_listen_queue_limit" => totals.limit = sample.value,
                    "tcp_listen_drops_total" => totals.drops = sample.value,
                    _ => {}
                }
                continue;
            }
            if let (Some(service), Some(method)) = (sample.label("grpc_service"), sample.label("grpc_method"))
                && sample.name.starts_with("grpc_server_")
            {
                grpc(endpoints.entry(format!("gRPC {service}/{method}")).or_default(), sample);
                continue;
            }
            let Some(endpoint) = sample.label("endpoint") else { continue };
            let totals = endpoints.entry(endpoint.to_owned()).or_default();
            match sample.name.as_str() {
                "http_requests_total" => {
                    totals.requests += sample.value;
                    if sample.label("status").is_some_and(|s| s.starts_with('5')) {
                        totals.errors += sample.value;
                    }
                }
                "http_requests_in_flight" => totals.in_flight += sample.value,
                "http_response_size_bytes_sum" => totals.bytes += sample.value,
                "http_request_duration_seconds_bucket" => {
                    if let Some(le) = sample.label("le").and_then(|le| le.parse().ok()) {
                        totals.buckets.push((le, sample.value));
                    }
                }
                "http_connection_wait_seconds_bucket" => {
                    if let Some(le) = sample.label("le").and_then(|le| le.parse().ok()) {
                        totals.wait_buckets.push((le, sample.value));
                    }
                }
                "http_response_transfer_seconds_total" => {
                    let part = sample.label("limited_by").and_then(|l| LIMITS.iter().position(|&n| n == l));
                    if let Some(part) = part {
                        totals.transfer[part] += sample.value;
                    }
                }
                "http_request_duration_seconds" => totals.native = sample.native.clone(),
                "http_connection_wait_seconds" => totals.wait_native = sample.native.clone(),
                _ => {}
            }
        }
        for totals in endpoints.values_mut() {
            totals.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            totals.wait_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        upstream::finish(&mut peers);
        Snapshot { at, endpoints, listeners, peers }
    }
}

/// A gRPC method's sample. Its calls are also HTTP/2 requests (the endpoint of their path,
/// where their in-flight count is); this row is by outcome code.
fn grpc(totals: &mut Totals, sample: &Sample) {
    match sample.name.as_str() {
        "grpc_server_handled_total" => {
            totals.requests += sample.value;
            if sample.label("grpc_code") != Some("OK") {
                totals.errors += sample.value;
            }
        }
        "grpc_server_handling_seconds_bucket" => {
            if let Some(le) = sample.label("le").and_then(|le| le.parse().ok()) {
                totals.buckets.push((le, sample.value));
            }
        }
        "grpc_server_handling_seconds" => totals.native = sample.native.clone(),
        _ => {}
    }
}

/// One endpoint over one interval. `None`: no request completed in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub endpoint: String,
    pub rate: f64,
    pub in_flight: f64,
    pub p50: Option<Quantile>,
    pub p99: Option<Quantile>,
    pub error_ratio: Option<f64>,
    pub bytes_rate: f64,
    /// p99 of how long new connections waited for their first read.
    pub wait_p99: Option<Quantile>,
    /// What held the interval's response transfers most (an index into `LIMITS`), and its
    /// share of their time.
    pub limited: Option<(usize, f64)>,
}

/// One listening port over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerRow {
    pub port: String,
    pub queued: f64,
    pub limit: f64,
    pub drops_rate: f64,
}

/// Listener rows for the interval from `before` to `now`, by port.
pub fn listener_rows(before: &Snapshot, now: &Snapshot) -> Vec<ListenerRow> {
    let seconds = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    now.listeners
        .iter()
        .map(|(port, totals)| {
            let old = before.listeners.get(port).copied().unwrap_or_default();
            ListenerRow {
                port: port.clone(),
                queued: totals.queued,
                limit: totals.limit,
                drops_rate: increase(old.drops, totals.drops) / seconds,
            }
        })
        .collect()
}

/// Upstream rows for the interval from `before` to `now`, by peer.
pub fn upstream_rows(before: &Snapshot, now: &Snapshot) -> Vec<UpstreamRow> {
    let seconds = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    upstream::rows(&before.peers, &now.peers, seconds)
}

/// Per-bucket increases of cumulative buckets between two snapshots.
fn bucket_increase(old: &[(f64, f64)], now: &[(f64, f64)]) -> Vec<(f64, f64)> {
    now.iter()
        .map(|&(le, count)| {
            let was = old.iter().find(|(l, _)| *l == le).map_or(0.0, |b| b.1);
            (le, increase(was, count))
        })
        .collect()
}

/// Rows for the interval from `before` to `now`.
pub fn rows(before: &Snapshot, now: &Snapshot) -> Vec<Row> {
    let seconds = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    now.endpoints
        .iter()
        .map(|(endpoint, totals)| {
            let old = before.endpoints.get(endpoint).cloned().unwrap_or_default();
            let requests = increase(old.requests, totals.requests);
            let latency = Latency::over(&old.buckets, &totals.buckets, old.native.as_ref(), &totals.native);
            let wait = Latency::over(
                &old.wait_buckets,
                &totals.wait_buckets,
                old.wait_native.as_ref(),
                &totals.wait_native,
            );
            Row {
                endpoint: endpoint.clone(),
                rate: requests / seconds,
                in_flight: totals.in_flight,
                p50: latency.quantile(0.5),
                p99: latency.quantile(0.99),
                error_ratio: (requests > 0.0).then(|| increase(old.errors, totals.errors) / requests),
                bytes_rate: increase(old.bytes, totals.bytes) / seconds,
                wait_p99: wait.quantile(0.99),
                limited: dominant(&old.transfer, &totals.transfer),
            }
        })
        .collect()
}

/// The part of the transfer time that grew most over the interval, and its share of the whole.
fn dominant(old: &[f64; 4], now: &[f64; 4]) -> Option<(usize, f64)> {
    let parts: Vec<f64> = old.iter().zip(now).map(|(&o, &n)| increase(o, n)).collect();
    let total: f64 = parts.iter().sum();
    let (at, most) = parts.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    (total > 0.0).then_some((at, most / total))
}

/// A counter's increase; after a reset (a restarted daemon) the new value is all increase.
pub(super) fn increase(before: f64, now: f64) -> f64 {
    if now >= before { now - before } else { now }
}

/// A latency histogram's increase over an interval: native buckets where both ends have
/// comparable ones, else classic buckets.
pub(super) enum Latency {
    Native(Native),
    Classic(Vec<(f64, f64)>),
}

impl Latency {
    pub(super) fn over(
        old: &[(f64, f64)],
        now: &[(f64, f64)],
        old_native: Option<&Native>,
        native: &Option<Native>,
    ) -> Self {
        match native.as_ref().and_then(|n| n.since(old_native)) {
            Some(native) => Latency::Native(native),
            None => Latency::Classic(bucket_increase(old, now)),
        }
    }

    pub(super) fn quantile(&self, q: f64) -> Option<Quantile> {
        match self {
            Latency::Native(native) => native.quantile(q),
            Latency::Classic(buckets) => quantile(q, buckets),
        }
    }
}

/// The q-quantile of cumulative classic buckets, interpolated linearly inside the bucket it
/// falls in, as Prometheus's `histogram_quantile` does, except at the ends: in the first
/// bucket it is only known to be below its bound, in `+Inf` above the last finite one.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<Quantile> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower: Option<(f64, f64)> = None;
    for &(le, count) in buckets {
        if count >= rank {
            let Some((bound, below)) = lower else {
                return Some(if le.is_infinite() { Quantile::Above(0.0) } else { Quantile::Below(le) });
            };
            if le.is_infinite() {
                return Some(Quantile::Above(bound));
            }
            let inside = count - below;
            let fraction = if inside > 0.0 { (rank - below) / inside } else { 1.0 };
            return Some(Quantile::At(bound + (le - bound) * fraction));
        }
        lower = Some((le, count));
    }
    lower.map(|(bound, _)| Quantile::Above(bound))
}

/// What the rows are ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Endpoint,
    Rate,
    InFlight,
    P50,
    P99,
    Errors,
    Bytes,
    Wait,
    /// By the share of what held transfers most.
    Limited,
}

impl SortBy {
    pub const ALL: [SortBy; 9] = [
        SortBy::Endpoint,
        SortBy::Rate,
        SortBy::InFlight,
        SortBy::P50,
        SortBy::P99,
        SortBy::Errors,
        SortBy::Bytes,
        SortBy::Wait,
        SortBy::Limited,
    ];

    /// The next column to the right, wrapping.
    pub fn next(self) -> SortBy {
        let at = SortBy::ALL.iter().position(|&s| s == self).unwrap_or(0);
        SortBy::ALL[(at + 1) % SortBy::ALL.len()]
    }

    /// Biggest first, except names (A to Z); `reverse` flips it.
    pub fn sort(self, rows: &mut [Row], reverse: bool) {
        let key = |row: &Row| -> f64 {
            match self {
                SortBy::Endpoint => 0.0,
                SortBy::Rate => row.rate,
                SortBy::InFlight => row.in_flight,
                SortBy::P50 => row.p50.map_or(-1.0, Quantile::seconds),
                SortBy::P99 => row.p99.map_or(-1.0, Quantile::seconds),
                SortBy::Errors => row.error_ratio.unwrap_or(-1.0),
                SortBy::Bytes => row.bytes_rate,
                SortBy::Wait => row.wait_p99.map_or(-1.0, Quantile::seconds),
                SortBy::Limited => row.limited.map_or(-1.0, |(_, share)| share),
            }
        };
        rows.sort_by(|a, b| {
            let order = match self {
                SortBy::Endpoint => a.endpoint.cmp(&b.endpoint),
                _ => key(b).total_cmp(&key(a)).then_with(|| a.endpoint.cmp(&b.endpoint)),
            };
            if reverse { order.reverse() } else { order }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::top::exposition::parse;

    fn snapshot(text: &str, at: Instant) -> Snapshot {
        Snapshot::new(&parse(text), at)
    }

    const BEFORE: &str = r#"
http_requests_total{endpoint="/a",method="GET",status="200"} 10
http_requests_total{endpoint="/a",method="GET",status="503"} 0
http_requests_in_flight{endpoint="/a"} 0
http_response_size_bytes_sum{endpoint="/a"} 1000
http_request_duration_seconds_bucket{le="0.1",endpoint="/a"} 10
http_request_duration_seconds_bucket{le="0.2",endpoint="/a"} 10
http_request_duration_seconds_bucket{le="+Inf",endpoint="/a"} 10
http_response_transfer_seconds_total{endpoint="/a",limited_by="application"} 1.0
http_response_transfer_seconds_total{endpoint="/a",limited_by="receiver_window"} 1.0
"#;
    const NOW: &str = r#"
http_requests_total{endpoint="/a",method="GET",status="200"} 40
http_requests_total{endpoint="/a",method="GET",status="503"} 10
http_requests_in_flight{endpoint="/a"} 3
http_response_size_bytes_sum{endpoint="/a"} 5000
http_request_duration_seconds_bucket{le="0.1",endpoint="/a"} 20
http_request_duration_seconds_bucket{le="0.2",endpoint="/a"} 50
http_request_duration_seconds_bucket{le="+Inf",endpoint="/a"} 50
http_response_transfer_seconds_total{endpoint="/a",limited_by="application"} 1.5
http_response_transfer_seconds_total{endpoint="/a",limited_by="receiver_window"} 3.0
http_response_transfer_seconds_total{endpoint="/a",limited_by="in_flight"} 0.5
http_requests_total{endpoint="/idle",method="GET",status="200"} 7
"#;

    #[test]
    fn rates_ratios_and_quantiles_over_the_interval() {
        let t0 = Instant::now();
        let rows = rows(&snapshot(BEFORE, t0), &snapshot(NOW, t0 + Duration::from_secs(2)));
        let a = rows.iter().find(|r| r.endpoint == "/a").unwrap();
        assert_eq!(a.rate, 20.0); // 40 more requests in 2 s
        assert_eq!(a.in_flight, 3.0);
        assert_eq!(a.error_ratio, Some(0.25));
        assert_eq!(a.limited, Some((1, 2.0 / 3.0)), "the window held 2 of the interval's 3 transfer seconds");
        assert_eq!(a.bytes_rate, 2000.0);
        // 40 new: 10 at ≤ 0.1, 30 in (0.1, 0.2]; the median (rank 20) is 1/3 into that bucket.
        let Some(Quantile::At(p50)) = a.p50 else { panic!("{a:?}") };
        assert!((p50 - (0.1 + 0.1 * 10.0 / 30.0)).abs() < 1e-9, "{a:?}");
        let idle = rows.iter().find(|r| r.endpoint == "/idle").unwrap();
        assert_eq!(idle.p99, None);
    }

    #[test]
    fn grpc_methods_get_rows_of_their_own_with_non_ok_codes_as_errors() {
        let before = r#"
grpc_server_handled_total{grpc_service="pkg.Boot",grpc_method="Get",grpc_code="OK"} 10
grpc_server_handling_seconds_bucket{le="0.1",grpc_service="pkg.Boot",grpc_method="Get"} 10
grpc_server_handling_seconds_bucket{le="+Inf",grpc_service="pkg.Boot",grpc_method="Get"} 10
"#;
        let now = r#"
grpc_server_handled_total{grpc_service="pkg.Boot",grpc_method="Get",grpc_code="OK"} 16
grpc_server_handled_total{grpc_service="pkg.Boot",grpc_method="Get",grpc_code="NotFound"} 2
grpc_server_handling_seconds_bucket{le="0.1",grpc_service="pkg.Boot",grpc_method="Get"} 18
grpc_server_handling_seconds_bucket{le="+Inf",grpc_service="pkg.Boot",grpc_method="Get"} 18
"#;
        let t0 = Instant::now();
        let rows = rows(&snapshot(before, t0), &snapshot(now, t0 + Duration::from_secs(2)));
        let get = rows.iter().find(|r| r.endpoint == "gRPC pkg.Boot/Get").unwrap();
        assert_eq!((get.rate, get.error_ratio), (4.0, Some(0.25)));
        assert_eq!(get.p99, Some(Quantile::Below(0.1)), "all in the first bucket");
    }

    #[test]
    fn quantiles_at_the_ends_are_bounds_and_empty_is_none() {
        assert_eq!(quantile(0.99, &[(0.1, 1.0), (f64::INFINITY, 100.0)]), Some(Quantile::Above(0.1)));
        assert_eq!(
            quantile(0.5, &[(5e-6, 10.0), (1e-5, 10.0), (f64::INFINITY, 10.0)]),
            Some(Quantile::Below(5e-6))
        );
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn a_counter_reset_counts_the_new_value() {
        assert_eq!(increase(100.0, 5.0), 5.0);
        assert_eq!(increase(5.0, 8.0), 3.0);
    }

    #[test]
    fn listeners_show_their_queue_and_drops_per_second_and_endpoints_their_wait() {
        let at = Instant::now();
        let before = snapshot(
            "tcp_listen_drops_total{port=\"8080\"} 10\n\
             http_connection_wait_seconds_bucket{le=\"0.01\",endpoint=\"/a\"} 0\n\
             http_connection_wait_seconds_bucket{le=\"1\",endpoint=\"/a\"} 0\n\
             http_connection_wait_seconds_bucket{le=\"+Inf\",endpoint=\"/a\"} 0\n",
            at,
        );
        let now = snapshot(
            "tcp_listen_queue_length{port=\"8080\"} 3\n\
             tcp_listen_queue_limit{port=\"8080\"} 4\n\
             tcp_listen_drops_total{port=\"8080\"} 30\n\
             http_connection_wait_seconds_bucket{le=\"0.01\",endpoint=\"/a\"} 0\n\
             http_connection_wait_seconds_bucket{le=\"1\",endpoint=\"/a\"} 10\n\
             http_connection_wait_seconds_bucket{le=\"+Inf\",endpoint=\"/a\"} 10\n",
            at + Duration::from_secs(2),
        );
        let listeners = listener_rows(&before, &now);
        assert_eq!(
            listeners,
            [ListenerRow { port: "8080".into(), queued: 3.0, limit: 4.0, drops_rate: 10.0 }]
        );
        let rows = rows(&before, &now);
        let wait = rows.iter().find(|r| r.endpoint == "/a").unwrap().wait_p99.unwrap();
        assert!((0.01..=1.0).contains(&wait.seconds()), "{wait:?}");
    }

    #[test]
    fn sorts_biggest_first_names_a_to_z_and_cycles() {
        let row = |endpoint: &str, rate: f64| Row {
            endpoint: endpoint.into(),
            rate,
            in_flight: 0.0,
            p50: None,
            p99: None,
            error_ratio: None,
            bytes_rate: 0.0,
            wait_p99: None,
            limited: None,
        };
        let mut rows = vec![row("/b", 1.0), row("/a", 5.0), row("/c", 3.0)];
        SortBy::Rate.sort(&mut rows, false);
        assert_eq!(rows.iter().map(|r| r.rate).collect::<Vec<_>>(), [5.0, 3.0, 1.0]);
        SortBy::Endpoint.sort(&mut rows, true);
        assert_eq!(rows[0].endpoint, "/c");
        assert_eq!(SortBy::Bytes.next(), SortBy::Wait);
        assert_eq!(SortBy::Wait.next(), SortBy::Limited);
        assert_eq!(SortBy::Limited.next(), SortBy::Endpoint);
    }
}
