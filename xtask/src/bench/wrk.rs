//! wrk, run once: its requests per second, transfer rate and latency percentiles.

use std::process::Command;

use anyhow::{Context, ensure};

use super::Run;

pub(super) fn wrk(url: &str, connections: u32, seconds: u64) -> anyhow::Result<Run> {
    wrk_with(url, connections, seconds, &[])
}

/// [`wrk`] sending `headers` ("Name: value") with every request.
pub(super) fn wrk_with(url: &str, connections: u32, seconds: u64, headers: &[&str]) -> anyhow::Result<Run> {
    let out = Command::new("wrk")
        .args(headers.iter().flat_map(|h| ["--header", h]))
        .args(["--threads", "1", "--connections", &connections.to_string()])
        .args(["--duration", &format!("{seconds}s"), "--latency", "--timeout", "10s", url])
        .output()
        .context("running wrk")?;
    ensure!(out.status.success(), "wrk: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let field =
        |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    let rps: f64 = field("Requests/sec:").context("wrk printed no Requests/sec")?.parse()?;
    let bytes_per_sec = field("Transfer/sec:").map(|t| parse_size(&t)).unwrap_or(0.0);
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Ok(Run {
        rps,
        bytes_per_sec,
        p50_us: field("50%").map(|t| parse_duration_us(&t)).unwrap_or(0.0),
        p99_us: field("99%").map(|t| parse_duration_us(&t)).unwrap_or(0.0),
        requests,
        ..Run::default()
    })
}

fn parse_duration_us(text: &str) -> f64 {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().unwrap_or(0.0);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => n,
    }
}

fn parse_size(text: &str) -> f64 {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().unwrap_or(0.0);
    match unit {
        "KB" => n * 1024.0,
        "MB" => n * 1024.0 * 1024.0,
        "GB" => n * 1024.0 * 1024.0 * 1024.0,
        _ => n,
    }
}
