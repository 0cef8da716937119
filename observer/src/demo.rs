//! `observer demo`: a first run with nothing to set up. Starts the demo server as a child
//! process, drives some traffic at it, and observes it like any other target.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tracing::{info, warn};

use crate::run::{RunConfig, run};

/// Runs the observer as `config` says, on a demo server it starts (`config.pids` is ignored).
pub async fn demo(config: RunConfig) -> anyhow::Result<()> {
    let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let exe = std::env::current_exe().context("locating the observer binary")?;
    let child = tokio::process::Command::new(exe)
        .args(["demo-server", "--listen", &server_addr.to_string()])
        .kill_on_drop(true)
        .spawn()
        .context("starting the demo server")?;
    let pid = child.id().context("demo server exited at once")?;
    wait_until_accepting(server_addr).await?;
    info!(
        "demo server (pid {pid}) on http://{server_addr}; try: curl http://{server_addr}/boot/52:54:00:12:34:56"
    );
    tokio::spawn(drive_traffic(server_addr));
    let result = run(RunConfig { pids: vec![pid], ..config }).await;
    drop(child); // kill_on_drop
    result
}

async fn wait_until_accepting(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the demo server did not start listening on {addr}")
}

/// A few keep-alive requests every half second, across the demo's endpoints.
async fn drive_traffic(addr: SocketAddr) {
    const PATHS: [&str; 7] = [
        "/boot/52:54:00:12:34:56",
        "/nodes/52:54:00:12:34:56",
        "/boot/52:54:00:ab:cd:ef",
        "/images/vmlinuz",
        "/api/status",
        "/missing",
        "/fail/503",
    ];
    loop {
        if let Err(e) = one_round(addr, &PATHS).await {
            warn!("demo traffic: {e:#}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn one_round(addr: SocketAddr, paths: &[&str]) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    for path in paths {
        http_get(&mut stream, path).await?;
    }
    Ok(())
}

/// One HTTP/1.1 GET on a keep-alive connection; returns the status code.
async fn http_get(stream: &mut TcpStream, path: &str) -> anyhow::Result<u16> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: demo\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(&buf)? {
            let code = resp.code.unwrap_or(0);
            let length = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head + length {
                let mut chunk = [0u8; 16 * 1024];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(code);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
