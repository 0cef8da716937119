//! `observer top`'s upstream section: one line per peer the targets call (the client role):
//! requests answered per second, their p99, the share answered 5xx, the p99 of connects and
//! failed connects per second, over the interval between two snapshots.

use std::collections::BTreeMap;

use super::{
    exposition::Sample,
    native::{Native, Quantile},
    table::{Latency, increase},
};

/// A peer's counters and histograms at one moment.
#[derive(Debug, Default, Clone)]
pub struct PeerTotals {
    requests: f64,
    errors: f64,
    buckets: Vec<(f64, f64)>,
    native: Option<Native>,
    connect_buckets: Vec<(f64, f64)>,
    connect_native: Option<Native>,
    failures: f64,
}

/// Adds `sample` (one with a `peer` label) to its peer's totals.
pub fn add(peers: &mut BTreeMap<String, PeerTotals>, peer: &str, sample: &Sample) {
    let totals = peers.entry(peer.to_owned()).or_default();
    let le = || sample.label("le").and_then(|le| le.parse::<f64>().ok());
    match sample.name.as_str() {
        "http_client_requests_total" => {
            totals.requests += sample.value;
            if sample.label("status").is_some_and(|s| s.starts_with('5')) {
                totals.errors += sample.value;
            }
        }
        "http_client_request_duration_seconds_bucket" => {
            totals.buckets.extend(le().map(|le| (le, sample.value)))
        }
        "http_client_request_duration_seconds" => totals.native = sample.native.clone(),
        "tcp_connect_duration_seconds_bucket" => {
            totals.connect_buckets.extend(le().map(|le| (le, sample.value)));
        }
        "tcp_connect_duration_seconds" => totals.connect_native = sample.native.clone(),
        "tcp_connect_failures_total" => totals.failures += sample.value,
        _ => {}
    }
}

/// Buckets in ascending order, once every sample is in.
pub fn finish(peers: &mut BTreeMap<String, PeerTotals>) {
    for totals in peers.values_mut() {
        totals.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        totals.connect_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// One peer over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRow {
    pub peer: String,
    pub rate: f64,
    pub p99: Option<Quantile>,
    pub error_ratio: Option<f64>,
    pub connect_p99: Option<Quantile>,
    pub failures_rate: f64,
}

/// Rows for the `seconds` from `before` to `now`, by peer.
pub fn rows(
    before: &BTreeMap<String, PeerTotals>,
    now: &BTreeMap<String, PeerTotals>,
    seconds: f64,
) -> Vec<UpstreamRow> {
    now.iter()
        .map(|(peer, totals)| {
            let old = before.get(peer).cloned().unwrap_or_default();
            let requests = increase(old.requests, totals.requests);
            let latency = Latency::over(&old.buckets, &totals.buckets, old.native.as_ref(), &totals.native);
            let connect = Latency::over(
                &old.connect_buckets,
                &totals.connect_buckets,
                old.connect_native.as_ref(),
                &totals.connect_native,
            );
            UpstreamRow {
                peer: peer.clone(),
                rate: requests / seconds,
                p99: latency.quantile(0.99),
                error_ratio: (requests > 0.0).then(|| increase(old.errors, totals.errors) / requests),
                connect_p99: connect.quantile(0.99),
                failures_rate: increase(old.failures, totals.failures) / seconds,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::exposition::parse;

    #[test]
    fn a_peer_s_interval_gives_its_rates_and_quantiles() {
        let at = |text: &str| {
            let mut peers = BTreeMap::new();
            for sample in parse(text) {
                let peer = sample.label("peer").unwrap().to_owned();
                add(&mut peers, &peer, &sample);
            }
            finish(&mut peers);
            peers
        };
        let before = at("http_client_requests_total{peer=\"mirror\",method=\"GET\",status=\"200\"} 10\n");
        let now = at(concat!(
            "http_client_requests_total{peer=\"mirror\",method=\"GET\",status=\"200\"} 28\n",
            "http_client_requests_total{peer=\"mirror\",method=\"GET\",status=\"502\"} 2\n",
            "http_client_request_duration_seconds_bucket{peer=\"mirror\",le=\"0.01\"} 20\n",
            "http_client_request_duration_seconds_bucket{peer=\"mirror\",le=\"+Inf\"} 20\n",
            "tcp_connect_failures_total{peer=\"mirror\",reason=\"refused\"} 4\n",
        ));
        let rows = rows(&before, &now, 2.0);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!((row.peer.as_str(), row.rate, row.error_ratio), ("mirror", 10.0, Some(0.1)));
        assert_eq!(row.failures_rate, 2.0);
        assert_eq!(row.p99, Some(Quantile::Below(0.01)));
        assert_eq!(row.connect_p99, None, "no connect in the interval");
    }
}
