//! The scrape endpoint: `GET /metrics`, negotiated by `Accept`. Prometheus' protobuf format
//! (asked for by Prometheus with native histograms on) carries latency histograms with both
//! classic and native buckets; OpenMetrics text (Prometheus' default) and the classic text
//! format (curl, promtool, older tools) carry the classic buckets, as before.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{
        HeaderMap,
        header::{ACCEPT, CONTENT_TYPE},
    },
    response::{IntoResponse, Response},
    routing::get,
};

use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Delimited `io.prometheus.client.MetricFamily` messages, as Prometheus asks for them.
pub const PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Runs before each scrape is encoded: samples what is read rather than counted (listen
/// queues), so a scrape sees them as they are.
pub type BeforeScrape = Arc<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Clone)]
struct Scraped {
    metrics: Arc<Metrics>,
    before: BeforeScrape,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    before: BeforeScrape,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { "observer: metrics at /metrics\n" }))
        .with_state(Scraped { metrics, before });
    axum::serve(listener, app).await
}

async fn scrape(State(Scraped { metrics, before }): State<Scraped>, headers: HeaderMap) -> Response {
    before(&metrics);
    match format(&headers) {
        Format::Protobuf => ([(CONTENT_TYPE, PROTOBUF)], metrics.encode_protobuf()).into_response(),
        Format::OpenMetrics => ([(CONTENT_TYPE, OPENMETRICS)], metrics.encode()).into_response(),
        Format::Text => {
            ([(CONTENT_TYPE, PROMETHEUS_TEXT)], prometheus_text(&metrics.encode())).into_response()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    OpenMetrics,
    Text,
}

/// The format the scraper prefers: the first of its `Accept` media ranges we can serve, in
/// the order it lists them (Prometheus lists them by preference, with `q` values that agree).
fn format(headers: &HeaderMap) -> Format {
    let ranges = headers.get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    for range in ranges {
        let range = range.trim();
        if range.starts_with("application/vnd.google.protobuf")
            && range.contains("proto=io.prometheus.client.MetricFamily")
            && range.contains("encoding=delimited")
        {
            return Format::Protobuf;
        }
        if range.starts_with("application/openmetrics-text") {
            return Format::OpenMetrics;
        }
        if range.starts_with("text/plain") {
            return Format::Text;
        }
    }
    Format::Text
}

/// OpenMetrics text → Prometheus text 0.0.4. The samples are the same; what differs is that a
/// counter family is named with its `_total` suffix in `# HELP`/`# TYPE`, and that there is no
/// `# UNIT` or `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE "));
        match meta.and_then(|rest| rest.split_once(' ')) {
            // HELP comes before TYPE: look the family's type up in the whole text.
            Some((name, tail)) if openmetrics.contains(&format!("# TYPE {name} counter\n")) => {
                out.push_str(&format!("{}{name}_total {tail}\n", &line[..7]));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(value: &str) -> Format {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, value.parse().unwrap());
        format(&headers)
    }

    #[test]
    fn the_format_is_the_first_the_scraper_lists_that_we_serve() {
        // Prometheus 2.42 with native histograms on, and its default.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(accepting(native), Format::Protobuf);
        let default = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(accepting(default), Format::OpenMetrics);
        assert_eq!(accepting("*/*"), Format::Text);
        assert_eq!(accepting("text/plain"), Format::Text);
        assert_eq!(format(&HeaderMap::new()), Format::Text);
    }

    #[test]
    fn counters_take_their_total_suffix_and_openmetrics_markers_go() {
        let om = "# HELP http_requests Requests.\n# TYPE http_requests counter\n\
                  http_requests_total{a=\"1\"} 3\n# HELP size Bytes.\n# TYPE size histogram\n\
                  # UNIT size bytes\nsize_count 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
             http_requests_total{a=\"1\"} 3\n# HELP size Bytes.\n# TYPE size histogram\nsize_count 1\n"
        );
    }
}
