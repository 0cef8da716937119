//! The HTTPS workload: nginx `return 200` over TLS (libssl.so.3), unobserved, with the floor,
//! observed without the OpenSSL uprobes (`--no-tls`: the ciphertext is only set aside) and
//! observed with them; and what the kernel programs cost per request in both observed arms.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::ensure;

use super::{
    Arm, BpfStats, FLOOR, FULL, ProgramTime, Summary, interleaved, measure, median, summarize, with_arm, wrk,
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

pub(super) struct Https {
    pub summary: Summary,
    /// (arm, kernel program ns per request), medians over rounds.
    pub kernel: Vec<(Arm, f64)>,
}

/// wrk negotiates TLS 1.3 (the bench's nginx offers it), which the default (`--tls keys`) decrypts.
const ARMS: [Arm; 5] = [Arm::Unobserved, FLOOR, Arm::FullNoTls, FULL, Arm::FullTlsCalls];

pub(super) fn https_workload(opts: &super::Options, nginx_pid: u32, tls_port: u16) -> anyhow::Result<Https> {
    let url = format!("https://127.0.0.1:{tls_port}/hello");
    let summary =
        summarize("nginx https return 200 (saturation)", measure(opts, nginx_pid, &url, &ARMS, 32)?);
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
    Ok(Https { summary, kernel })
}

pub(super) fn render(kernel: &[(Arm, f64)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nnginx https, kernel program time per request (kernel.bpf_stats_enabled; uprobe traps themselves are not in it, the throughput ratios above are):\n"
    );
    let _ = writeln!(s, "| arm | ns per https request |\n|---|---|");
    for (arm, ns) in kernel {
        let _ = writeln!(s, "| {} | {ns:.0} |", arm.name());
    }
    s
}
