//! The scrape endpoint: `GET /metrics` in the OpenMetrics text format.

use std::sync::Arc;

use axum::{Router, extract::State, http::header::CONTENT_TYPE, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { "observer: metrics at /metrics\n" }))
        .with_state(metrics);
    axum::serve(listener, app).await
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, OPENMETRICS)], metrics.encode())
}
