//! The demo target (`observer demo-server`): a small axum server shaped like a provisioning
//! server, which asks its own inventory API over loopback for `/nodes/{mac}` (a client
//! request, a new connection each). It also keeps seed-style in-process request stats (the
//! middleware the observer replaces), served at `/internal/stats`, so tests can compare the
//! observer to ground truth.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Router,
    body::Body,
    extract::{Path, Request, State},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use tokio::net::TcpListener;

/// Per (endpoint, method, status): count and summed handler duration, as in-process
/// middleware measures them (handler entry to response produced).
#[derive(Default)]
struct Stats {
    requests: HashMap<(String, String, u16), (u64, Duration)>,
}

type Shared = Arc<Mutex<Stats>>;

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let stats: Shared = Arc::default();
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    // Its own inventory API, asked over loopback like an upstream: the demo's client role.
    let mut inventory = listener.local_addr()?;
    if inventory.ip().is_unspecified() {
        inventory.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let app = Router::new()
        .route("/boot/{mac}", get(|Path(mac): Path<String>| async move { boot_script(&mac) }))
        .route("/nodes/{mac}", get(move |Path(mac): Path<String>| node(inventory, mac)))
        .route("/inventory/{mac}", get(|| async { r#"{"rack":"a1","role":"worker"}"# }))
        .route("/images/{name}", get(|| async { vec![0u8; 64 * 1024] }))
        .route("/api/status", get(|| async { r#"{"status":"ok"}"# }))
        .route("/slow/{ms}", get(slow))
        .route("/convert/{ms}", get(slow))
        .route("/work/{us}", get(work))
        .route("/fail/{code}", get(fail))
        .route("/upload/{name}", post(upload).put(upload))
        .route("/internal/stats", get(report))
        .layer(middleware::from_fn_with_state(stats.clone(), record))
        .with_state(stats);
    axum::serve(listener, app).await?;
    Ok(())
}

fn boot_script(mac: &str) -> String {
    let mac: String = mac.chars().filter(|c| c.is_ascii_hexdigit() || *c == ':').collect();
    format!("#!ipxe\nkernel /images/vmlinuz console=ttyS0 BOOTIF={mac}\ninitrd /images/initrd.img\nboot\n")
}

/// A node's record, from the inventory upstream (a new connection per call, as a client
/// without a pool makes): its answer, or 502 if it failed.
async fn node(inventory: SocketAddr, mac: String) -> Result<String, axum::http::StatusCode> {
    let mac: String = mac.chars().filter(|c| c.is_ascii_hexdigit() || *c == ':').collect();
    let url = format!("http://{inventory}/inventory/{mac}");
    let asked =
        tokio::task::spawn_blocking(move || ureq::get(&url).call()?.body_mut().read_to_string()).await;
    match asked {
        Ok(Ok(record)) => Ok(record),
        _ => Err(axum::http::StatusCode::BAD_GATEWAY),
    }
}

async fn slow(Path(ms): Path<u64>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms.min(5_000))).await;
    "done\n"
}

/// Answers with the given error status (400–599; 500 otherwise): failing endpoints for the
/// error-ratio graphs.
async fn fail(Path(code): Path<u16>) -> axum::http::StatusCode {
    match axum::http::StatusCode::from_u16(code) {
        Ok(status) if (400..600).contains(&code) => status,
        _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Spins the CPU for about `us` microseconds: a handler that does real work.
async fn work(Path(us): Path<u64>) -> &'static str {
    let until = Instant::now() + Duration::from_micros(us.min(100_000));
    let mut x: u64 = 1;
    while Instant::now() < until {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    "worked\n"
}

/// Reads the whole body (any size, Content-Length or chunked) and says how long it was.
async fn upload(body: Body) -> Result<String, axum::http::StatusCode> {
    let bytes =
        axum::body::to_bytes(body, 256 << 20).await.map_err(|_| axum::http::StatusCode::BAD_REQUEST)?;
    Ok(format!("{}\n", bytes.len()))
}

async fn record(State(stats): State<Shared>, request: Request, next: Next) -> Response {
    let endpoint = first_segment(request.uri().path());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    if endpoint != "internal" {
        let mut stats = stats.lock().expect("stats lock");
        let entry = stats.requests.entry((endpoint, method, response.status().as_u16())).or_default();
        entry.0 += 1;
        entry.1 += elapsed;
    }
    response
}

fn first_segment(path: &str) -> String {
    match path.trim_start_matches('/').split('/').next() {
        Some("") | None => "root".to_owned(),
        Some(segment) => segment.to_owned(),
    }
}

/// `endpoint method status count duration_seconds_sum`, one line each.
async fn report(State(stats): State<Shared>) -> String {
    let stats = stats.lock().expect("stats lock");
    let mut lines: Vec<String> = stats
        .requests
        .iter()
        .map(|((e, m, s), (n, d))| format!("{e} {m} {s} {n} {:.9}", d.as_secs_f64()))
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}
