//! The HTTPS workloads: nginx `return 200` over TLS (libssl.so.3), unobserved, with the floor,
//! observed without the OpenSSL uprobes (`--no-tls`: the ciphertext is only set aside), from
//! session keys (the default) and with per-call uprobes; the same with a handshake per request;
//! what the kernel programs cost per request; and what a second nginx https nobody observes,
//! on the same libssl, pays while the observer watches the first.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::ensure;

use super::{
    Arm, BpfStats, FLOOR, FULL, ProgramTime, Summary, interleaved, measure, measure_with, median,
    start_nginx, summarize, with_arm, wrk,
};

/// A self-signed certificate and key (`cert.pem`, `key.pem`) in `dir`.
pub(crate) fn self_signed_cert(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()?;
    ensure!(status.success(), "openssl could not make a certificate");
    Ok(())
}

/// Only the HTTPS workloads (`cargo xtask bench --https-only`), into `https.md`.
pub fn bench_https(opts: &super::Options) -> anyhow::Result<()> {
    let nginx = super::prepare(opts)?;
    let https = https_workload(opts, nginx.guard.0.id(), nginx.tls_port)?;
    let mut text = super::report::render_table(&https.summaries, opts);
    text.push_str(&render(&https.kernel, &https.neighbour_ns));
    text.push_str(&render_counts(&https.summaries[..2]));
    println!("{text}");
    std::fs::write(opts.out.join("https.md"), &text)?;
    Ok(())
}

pub(super) struct Https {
    /// Keep-alive, then `Connection: close`, then the unobserved neighbour.
    pub summaries: [Summary; 3],
    /// (arm, kernel program ns per request), medians over rounds.
    pub kernel: Vec<(Arm, f64)>,
    /// (arm, kernel program ns per request of the unobserved neighbour), medians.
    pub neighbour_ns: Vec<(Arm, f64)>,
}

/// wrk negotiates TLS 1.3 (the bench's nginx offers it), which the default (`--tls keys`) decrypts.
const ARMS: [Arm; 5] = [Arm::Unobserved, FLOOR, Arm::FullNoTls, FULL, Arm::FullTlsCalls];

pub(super) fn https_workload(opts: &super::Options, nginx_pid: u32, tls_port: u16) -> anyhow::Result<Https> {
    let url = format!("https://127.0.0.1:{tls_port}/hello");
    let summary =
        summarize("nginx https return 200 (saturation)", measure(opts, nginx_pid, &url, &ARMS, 32)?);
    eprintln!("nginx https, wrk -t1 -c16 -H 'Connection: close' (a handshake per request):");
    let handshakes = summarize(
        "nginx https, a handshake per request",
        measure_with(opts, nginx_pid, &url, &HANDSHAKE_ARMS, 16, &["Connection: close"])?,
    );
    eprintln!("a second nginx https nobody observes (same libssl) while the first is watched, wrk -t1 -c32:");
    let (neighbour, neighbour_ns) = neighbour_https(opts, nginx_pid)?;
    let _stats = BpfStats::enable()?;
    let observed = [Arm::FullNoTls, FULL, Arm::FullTlsCalls];
    let per_request = interleaved(opts.reps, &observed, |_, arm| {
        with_arm(opts, arm, nginx_pid, |attached| -> anyhow::Result<f64> {
            let pid = attached.expect("observed arms hold programs").pid;
            let before = ProgramTime::of(pid);
            let load = wrk(&url, 32, opts.seconds.min(3))?;
            let during = ProgramTime::of(pid).since(before);
            ensure!(during.runs > 0.0 && load.requests > 0.0, "no program runs were counted");
            Ok(during.ns / load.requests)
        })?
    })?;
    let kernel = observed.iter().zip(per_request).map(|(arm, ns)| (*arm, median(ns))).collect();
    Ok(Https { summaries: [summary, handshakes, neighbour], kernel, neighbour_ns })
}

/// Handshakes are where the observer works even with session keys (the handshake's uprobes,
/// the keys read, the first record checked): RSA-2048 signatures dominate nginx's time here.
const HANDSHAKE_ARMS: [Arm; 3] = [Arm::Unobserved, FULL, Arm::FullTlsCalls];

/// Uprobes are planted per file but filtered by process: a neighbour on the same libssl should
/// pay only the socket tracepoints' tgid test. The arms watch `target` (idle); wrk loads the
/// neighbour. The observer must count none of the neighbour's requests. The throughput of a
/// few rounds cannot tell 2 % from the machine's noise (±10 % between rounds here), so the
/// kernel's accounting of the programs' time per neighbour request is taken too.
fn neighbour_https(opts: &super::Options, target: u32) -> anyhow::Result<(Summary, Vec<(Arm, f64)>)> {
    let dir = opts.out.join("neighbour-nginx");
    let _ = std::fs::remove_dir_all(&dir);
    let neighbour = start_nginx(&dir)?;
    let url = format!("https://127.0.0.1:{}/hello", neighbour.tls_port);
    wrk(&url, 32, 1)?; // warm-up
    let arms = [Arm::Unobserved, FLOOR, FULL, Arm::FullTlsCalls];
    let runs = measure(opts, target, &url, &arms, 32)?;
    for (arm, rounds) in &runs {
        let counted: f64 = rounds.iter().map(|r| r.counted).sum();
        ensure!(counted == 0.0, "{}: the observer counted {counted} of the neighbour's requests", arm.name());
    }
    let summary = summarize("neighbour nginx https (unobserved; the arm watches another nginx)", runs);
    let observed = [FLOOR, FULL, Arm::FullTlsCalls];
    let _stats = BpfStats::enable()?;
    let ns = interleaved(opts.reps.min(3), &observed, |_, arm| {
        with_arm(opts, arm, target, |attached| -> anyhow::Result<f64> {
            let pid = attached.expect("observed arms hold programs").pid;
            let before = ProgramTime::of(pid);
            let load = wrk(&url, 32, opts.seconds.min(3))?;
            Ok(ProgramTime::of(pid).since(before).ns / load.requests.max(1.0))
        })?
    })?;
    Ok((summary, observed.iter().zip(ns).map(|(arm, ns)| (*arm, median(ns))).collect()))
}

/// For each observed arm of `summaries`, the observer's count minus wrk's in each round:
/// never negative when nothing is lost, at most wrk's connections (requests in flight when wrk
/// stopped are answered, and counted, after).
pub(super) fn render_counts(summaries: &[Summary]) -> String {
    let mut s = String::from(
        "\nRequests the observer counted minus wrk's count, each round (requests in flight when wrk stops are answered and counted after it):\n\n\
         | workload | arm | per round |\n|---|---|---|\n",
    );
    for summary in summaries {
        for (arm, rounds) in summary.rounds.iter().filter(|(arm, _)| arm.is_full()) {
            let diffs: Vec<String> = rounds.iter().map(|r| format!("{:+}", r.counted - r.requests)).collect();
            let _ = writeln!(s, "| {} | {} | {} |", summary.name, arm.name(), diffs.join(", "));
        }
    }
    s
}

pub(super) fn render(kernel: &[(Arm, f64)], neighbour_ns: &[(Arm, f64)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nnginx https, kernel program time per request (kernel.bpf_stats_enabled; uprobe traps themselves are not in it, the throughput ratios above are):\n"
    );
    let _ = writeln!(s, "| arm | ns per https request |\n|---|---|");
    for (arm, ns) in kernel {
        let _ = writeln!(s, "| {} | {ns:.0} |", arm.name());
    }
    let _ = writeln!(
        s,
        "\nThe unobserved neighbour nginx https: program time per request (its socket calls and wrk's run the programs, which return at the tgid test):\n\n| arm | ns per neighbour request |\n|---|---|"
    );
    for (arm, ns) in neighbour_ns {
        let _ = writeln!(s, "| {} | {ns:.0} |", arm.name());
    }
    s
}
