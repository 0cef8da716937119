//! The scrape endpoint: `GET /metrics`, in OpenMetrics text when the scraper asks for it (as
//! Prometheus does), else in the classic Prometheus text format (curl, promtool, older tools).

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{
        HeaderMap,
        header::{ACCEPT, CONTENT_TYPE},
    },
    response::IntoResponse,
    routing::get,
};

use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

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

async fn scrape(State(Scraped { metrics, before }): State<Scraped>, headers: HeaderMap) -> impl IntoResponse {
    before(&metrics);
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = metrics.encode();
    if openmetrics {
        ([(CONTENT_TYPE, OPENMETRICS)], text)
    } else {
        ([(CONTENT_TYPE, PROMETHEUS_TEXT)], prometheus_text(&text))
    }
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
