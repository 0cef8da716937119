//! What observing costs the rest of the host and what it replaces: a redis nobody observes
//! while the observer watches an nginx, and the seed's in-process middleware against
//! observing from outside, on the same axum server.

use std::{fmt::Write as _, process::Command};

use anyhow::{Context, ensure};

use super::{
    Arm, BpfStats, FULL, Guard, NEIGHBOUR_ARMS, Options, ProgramTime, free_port, interleaved, median,
    start_server, with_arm, wrk,
};

/// Debian's redis-server on a free loopback port, persisting nothing.
fn start_redis() -> anyhow::Result<(Guard, u16)> {
    let port = free_port();
    let mut redis = Command::new("redis-server");
    redis.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    Ok((start_server("redis-server", &mut redis, port)?, port))
}

/// redis-benchmark SET and GET, 32 clients, bounded by count: mean requests/s of the two.
fn redis_benchmark(port: u16, requests: u32) -> anyhow::Result<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "32", "-t", "set,get"])
        .args(["-n", &requests.to_string(), "--csv"])
        .output()
        .context("running redis-benchmark")?;
    ensure!(out.status.success(), "redis-benchmark: {}", String::from_utf8_lossy(&out.stderr));
    let rates: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("\"SET\"") || l.starts_with("\"GET\""))
        .filter_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
        .collect();
    ensure!(rates.len() == 2, "redis-benchmark printed no SET/GET rates");
    Ok(rates.iter().sum::<f64>() / 2.0)
}

/// What a redis nobody observes pays while an arm watches `target` (an idle nginx).
pub struct Neighbour {
    pub arm: Arm,
    /// Median requests/s, and the median over rounds of (rate with the arm) / (rate in the
    /// same round with nothing attached).
    pub rps: f64,
    pub ratio: f64,
    /// The arm's program time per redis request, by the kernel's accounting (a separate
    /// pass: the accounting itself costs every run two clock reads).
    pub program_ns_per_request: f64,
}

pub fn neighbour_redis(opts: &Options, target: u32) -> anyhow::Result<Vec<Neighbour>> {
    let (_redis, port) = start_redis()?;
    redis_benchmark(port, 50_000)?; // warm-up
    let rates = interleaved(opts.reps, &NEIGHBOUR_ARMS, |rep, arm| {
        let rate = with_arm(opts, arm, target, |_| redis_benchmark(port, 200_000))??;
        eprintln!("  {:<20} rep {}: {:>10.0} req/s", arm.name(), rep + 1, rate);
        Ok(rate)
    })?;
    const REQUESTS: u32 = 100_000;
    let mut program_ns = vec![Vec::new(); NEIGHBOUR_ARMS.len()];
    let _stats = BpfStats::enable()?;
    for _ in 0..opts.reps.min(3) {
        for (i, arm) in NEIGHBOUR_ARMS.iter().enumerate().skip(1) {
            let ns = with_arm(opts, *arm, target, |attached| -> anyhow::Result<f64> {
                let pid = attached.expect("every arm but the first holds programs").pid;
                let before = ProgramTime::of(pid);
                redis_benchmark(port, REQUESTS)?;
                // SET and GET: REQUESTS each.
                Ok(ProgramTime::of(pid).since(before).ns / f64::from(2 * REQUESTS))
            })??;
            program_ns[i].push(ns);
        }
    }
    let base = rates[0].clone();
    Ok(NEIGHBOUR_ARMS
        .iter()
        .zip(rates.iter().zip(program_ns))
        .map(|(arm, (r, ns))| Neighbour {
            arm: *arm,
            rps: median(r.clone()),
            ratio: median(r.iter().zip(&base).map(|(x, b)| x / b).collect()),
            program_ns_per_request: median(ns),
        })
        .collect())
}

/// The same axum `/boot/{mac}` server three ways, in each round: bare, with the seed's
/// in-process middleware, and bare but observed. Medians of the within-round ratios to bare.
pub struct MiddlewareArm {
    pub bare_rps: f64,
    pub middleware_rps: f64,
    pub observed_rps: f64,
    pub middleware_ratio: f64,
    pub observed_ratio: f64,
}

fn start_boot_server(opts: &Options, middleware: bool) -> anyhow::Result<(Guard, u16)> {
    let port = free_port();
    let mut cmd = Command::new(&opts.boot_server);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    if middleware {
        cmd.arg("--middleware");
    }
    Ok((start_server("boot-server", &mut cmd, port)?, port))
}

pub fn middleware_arm(opts: &Options) -> anyhow::Result<MiddlewareArm> {
    let (bare, bare_port) = start_boot_server(opts, false)?;
    let (_instrumented, instrumented_port) = start_boot_server(opts, true)?;
    let url = |port: u16| format!("http://127.0.0.1:{port}/boot/52:54:00:12:34:56");
    let rps = interleaved(opts.reps, &[0, 1, 2], |rep, i| {
        let run = match i {
            0 => wrk(&url(bare_port), 32, opts.seconds)?,
            1 => wrk(&url(instrumented_port), 32, opts.seconds)?,
            _ => with_arm(opts, FULL, bare.0.id(), |_| wrk(&url(bare_port), 32, opts.seconds))??,
        };
        eprintln!("  {:<20} rep {}: {:>10.0} req/s", ["bare", "middleware", "observed"][i], rep + 1, run.rps);
        Ok(run.rps)
    })?;
    let ratio = |i: usize| median(rps[i].iter().zip(&rps[0]).map(|(x, b)| x / b).collect());
    Ok(MiddlewareArm {
        bare_rps: median(rps[0].clone()),
        middleware_rps: median(rps[1].clone()),
        observed_rps: median(rps[2].clone()),
        middleware_ratio: ratio(1),
        observed_ratio: ratio(2),
    })
}

pub fn render_neighbours(neighbour: &[Neighbour], m: &MiddlewareArm) -> String {
    let mut s = String::from(
        "\nA redis-server nobody observes, redis-benchmark -c 32 -t set,get (mean of the two), while the arm watches an idle nginx:\n\n\
         | arm | req/s | with arm / nothing attached | program ns per redis request (kernel accounting) |\n|---|---|---|---|\n",
    );
    for n in neighbour {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.3} | {:.1} |",
            n.arm.name(),
            n.rps,
            n.ratio,
            n.program_ns_per_request
        );
    }
    let _ = writeln!(
        s,
        "\naxum /boot/{{mac}} (one tokio thread), wrk -t1 -c32: bare {:.0} req/s; with the seed's middleware \
         (metrics + metrics-exporter-prometheus) {:.0} req/s, {:.3} of bare; bare but observed {:.0} req/s, {:.3} of bare.",
        m.bare_rps, m.middleware_rps, m.middleware_ratio, m.observed_rps, m.observed_ratio
    );
    s
}
