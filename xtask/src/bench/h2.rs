//! The HTTP/2 arm: nginx h2c `return 200` under h2load (many streams per connection), and the
//! daemon's memory with 10,000 idle HTTP/2 connections that each made a request.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context, ensure};

use super::{
    Arm, Attached, FLOOR, FULL, Options, Run, Summary, cpu_seconds, http_get, interleaved, metric,
    status_kib, summarize, with_arm,
};

/// h2load's clients and concurrent streams per client.
const CLIENTS: u32 = 32;
const STREAMS: u32 = 10;

/// One h2load run of `seconds` against `url`.
fn h2load(url: &str, seconds: u64) -> anyhow::Result<Run> {
    let out = Command::new("h2load")
        .args(["-t", "1", "-c", &CLIENTS.to_string(), "-m", &STREAMS.to_string()])
        .args(["-D", &seconds.to_string(), url])
        .output()
        .context("running h2load")?;
    ensure!(out.status.success(), "h2load: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 5.00s, 42013.60 req/s, 2.89MB/s" and "requests: 210068 total, … 210068 succeeded"
    let finished =
        text.lines().find(|l| l.starts_with("finished in")).context("h2load printed no summary")?;
    let rps: f64 =
        finished.split(", ").nth(1).and_then(|f| f.strip_suffix(" req/s")).context("req/s")?.parse()?;
    let requests = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|f| f.strip_suffix(" succeeded")))
        .context("succeeded")?
        .parse()?;
    // "time for request:      325us     26.78ms      8.99ms …": min, max, mean; the mean stands
    // in for p50 (h2load prints no percentiles).
    let mean_us = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("time for request:"))
        .and_then(|l| l.split_whitespace().nth(2).map(duration_us))
        .unwrap_or(0.0);
    Ok(Run { rps, requests, p50_us: mean_us, ..Run::default() })
}

fn duration_us(text: &str) -> f64 {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let value: f64 = text[..split].parse().unwrap_or(0.0);
    match &text[split..] {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        _ => 0.0,
    }
}

/// nginx h2c `return 200` at saturation: unobserved, floor, full, interleaved.
pub(super) fn saturation(opts: &Options, pid: u32, port: u16) -> anyhow::Result<Summary> {
    let url = format!("http://127.0.0.1:{port}/hello");
    let arms = [Arm::Unobserved, FLOOR, FULL];
    let runs = interleaved(opts.reps, &arms, |rep, arm| {
        let run = with_arm(opts, arm, pid, |attached| -> anyhow::Result<Run> {
            let observer = attached.and_then(Attached::observer);
            let cpu_before = observer.map(|(p, _)| cpu_seconds(p)).unwrap_or(0.0);
            let mut run = h2load(&url, opts.seconds)?;
            if let Some((p, addr)) = observer {
                run.observer_cpu_s = cpu_seconds(p) - cpu_before;
                run.observer_hwm_kib = status_kib(p, "VmHWM:");
                thread::sleep(Duration::from_millis(300));
                let metrics = http_get(addr, "/metrics").unwrap_or_default();
                run.events_lost = metric(&metrics, "observer_events_lost_total");
                run.counted = metric(&metrics, "http_requests_total{");
                let errors = metric(&metrics, "observer_parse_errors_total");
                ensure!(errors == 0.0, "HTTP/2 parse errors under h2load: {errors}");
            }
            Ok(run)
        })??;
        eprintln!(
            "  {:<20} rep {}: {:>10.0} req/s  mean {:>8.0}µs",
            arm.name(),
            rep + 1,
            run.rps,
            run.p50_us
        );
        Ok(run)
    })?;
    Ok(summarize(
        &format!("nginx h2c return 200 (h2load -c{CLIENTS} -m{STREAMS}; p50 = mean)"),
        arms.iter().copied().zip(runs).collect(),
    ))
}

/// The client preface, an empty SETTINGS, and `GET /hello` on stream 1 (HPACK: `:method GET`,
/// `:scheme http`, `:path /hello` and `:authority b` as literals against the static table).
fn request() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let block = [&[0x82u8, 0x86, 0x04, 6][..], b"/hello", &[0x01, 1, b'b']].concat();
    bytes.extend([0, 0, block.len() as u8, 1, 0x5, 0, 0, 0, 1]);
    bytes.extend(block);
    bytes
}

/// Daemon RSS with `n` idle HTTP/2 connections to the observed nginx, each after one request
/// answered: (RSS KiB, peak KiB, connections in the table).
pub(super) fn idle_connections_rss(
    opts: &Options,
    pid: u32,
    port: u16,
    n: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    with_arm(opts, FULL, pid, |attached| -> anyhow::Result<(f64, f64, f64)> {
        let (observer, addr) = attached.and_then(Attached::observer).expect("full arm");
        let request = request();
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.write_all(&request)?;
            // SETTINGS, its ACK, the response's HEADERS and DATA: read until the body.
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(6).any(|w| w == b"hello\n") {
                let got = s.read(&mut buf)?;
                ensure!(got > 0, "nginx closed an HTTP/2 connection");
                seen.extend_from_slice(&buf[..got]);
            }
            held.push(s);
        }
        thread::sleep(Duration::from_secs(2));
        let metrics = http_get(addr, "/metrics").unwrap_or_default();
        let answered = metric(&metrics, "http_requests_total");
        ensure!(answered >= n as f64, "{answered} of {n} HTTP/2 requests counted");
        let conns = metric(&metrics, "observer_connections");
        let rss = status_kib(observer, "VmRSS:");
        drop(held);
        Ok((rss, status_kib(observer, "VmHWM:"), conns))
    })?
}
