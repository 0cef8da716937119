//! `cargo xtask bench`'s middleware arm: one axum server answering `/boot/{mac}` (a short
//! iPXE script) on one tokio thread, either bare or with the in-process middleware the
//! observer replaces, as `shared/reference/seed-pr-35.txt` describes it: `metrics` +
//! `metrics-exporter-prometheus`, the recorder installed at start, `/metrics` served, and
//! the outermost layer recording per bounded endpoint label an in-flight gauge, a request
//! counter (method, status) and a duration histogram.

use std::{net::SocketAddr, sync::OnceLock, time::Instant};

use anyhow::Context;
use axum::{
    Router,
    extract::{Path, Request},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use clap::Parser;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Record the seed's three metrics in process and serve them at /metrics.
    #[arg(long)]
    middleware: bool,
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One worker thread, as the observed servers in the bench run.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let mut app =
        Router::new().route("/boot/{mac}", get(|Path(mac): Path<String>| async move { boot_script(&mac) }));
    if args.middleware {
        let handle = PrometheusBuilder::new().install_recorder().context("installing the recorder")?;
        let _ = HANDLE.set(handle);
        app = app
            .route(
                "/metrics",
                get(|| async { HANDLE.get().map(PrometheusHandle::render).unwrap_or_default() }),
            )
            .layer(middleware::from_fn(record));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn boot_script(mac: &str) -> String {
    let mac: String = mac.chars().filter(|c| c.is_ascii_hexdigit() || *c == ':').collect();
    format!("#!ipxe\nkernel /images/vmlinuz console=ttyS0 BOOTIF={mac}\ninitrd /images/initrd.img\nboot\n")
}

/// The seed's coarse, bounded endpoint label.
fn classify(path: &str) -> &'static str {
    match path.split('/').nth(1).unwrap_or("") {
        "boot" => "boot",
        "images" => "image",
        "metrics" | "health" => "infra",
        "api" => "api",
        _ => "other",
    }
}

async fn record(request: Request, next: Next) -> Response {
    let endpoint = classify(request.uri().path());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let in_flight = metrics::gauge!("http_requests_in_flight", "endpoint" => endpoint);
    in_flight.increment(1.0);
    let response = next.run(request).await;
    in_flight.decrement(1.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "endpoint" => endpoint, "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    response
}
