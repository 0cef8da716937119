//! What the kernel programs cost, by the kernel's own accounting (`kernel.bpf_stats_enabled`
//! and each program's run time in `/proc/PID/fdinfo`), and what a process nobody observes
//! pays in syscalls (`dd`).

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, ensure};

use super::{Arm, FLOOR, FULL, Options, SYS_EXIT_FLOOR, SYS_EXIT_FULL, interleaved, median, with_arm, wrk};

/// Runs `dd` moving `records` 1-byte records (a read and a write each): a process nobody
/// observes making syscalls as fast as it can. Returns ns per syscall.
fn dd(records: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1", &format!("count={records}")])
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "dd failed");
    Ok(started.elapsed().as_nanos() as f64 / (2 * records) as f64)
}

/// ns per syscall of a process nobody observes, while `arm` watches another process.
pub(super) fn unobserved_syscall_cost(opts: &Options, target: u32) -> anyhow::Result<Vec<(Arm, f64)>> {
    let samples =
        interleaved(opts.reps, &NEIGHBOUR_ARMS, |_, arm| with_arm(opts, arm, target, |_| dd(1_000_000))?)?;
    Ok(NEIGHBOUR_ARMS.iter().zip(samples).map(|(a, s)| (*a, median(s))).collect())
}

/// What a process nobody observes pays while the observer watches another: nothing attached,
/// the floor and the observer on the socket hooks, and the observer on the syscall hook.
pub(super) const NEIGHBOUR_ARMS: [Arm; 4] = [Arm::Unobserved, FLOOR, FULL, SYS_EXIT_FULL];

/// Time and runs of the kernel programs a process holds, summed over its BPF program fds
/// (`/proc/PID/fdinfo`; the kernel counts them only while `kernel.bpf_stats_enabled` is 1).
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct ProgramTime {
    pub ns: f64,
    pub runs: f64,
}

impl ProgramTime {
    pub fn of(pid: u32) -> ProgramTime {
        let mut seen = std::collections::HashSet::new();
        let mut total = ProgramTime::default();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            return total;
        };
        for entry in dir.flatten() {
            let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let field =
                |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok());
            // Program fds only (links have prog_id but no run_time_ns), each program once.
            let (Some(id), Some(ns), Some(runs)) =
                (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
            else {
                continue;
            };
            if seen.insert(id as u64) {
                total.ns += ns;
                total.runs += runs;
            }
        }
        total
    }

    pub fn since(self, before: ProgramTime) -> ProgramTime {
        ProgramTime { ns: self.ns - before.ns, runs: self.runs - before.runs }
    }
}

/// `kernel.bpf_stats_enabled` set while this lives. It adds two clock reads to every program
/// run, so only the runs that measure program time have it on.
pub(super) struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> anyhow::Result<BpfStats> {
        let before = std::fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(before.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// What the kernel programs themselves cost, from the kernel's own accounting, for the
/// floor and full arms of both hook families: ns of program time per syscall of an
/// unobserved process (dd; the socket hooks never run for it), and ns of program time per
/// request while nginx is saturated (every process's runs included: the load generator's
/// run the programs too).
#[derive(Clone, Debug, Default)]
pub(crate) struct KernelCost {
    /// (arm, ns per dd syscall, ns per nginx request), medians over rounds.
    pub arms: Vec<(Arm, f64, f64)>,
}

const KERNEL_COST_ARMS: [Arm; 4] = [FLOOR, FULL, SYS_EXIT_FLOOR, SYS_EXIT_FULL];

pub(super) fn kernel_cost(opts: &Options, nginx_pid: u32, url: &str) -> anyhow::Result<KernelCost> {
    let _stats = BpfStats::enable()?;
    const DD_RECORDS: u64 = 200_000;
    let samples = interleaved(opts.reps, &KERNEL_COST_ARMS, |_, arm| {
        with_arm(opts, arm, nginx_pid, |attached| -> anyhow::Result<(f64, f64)> {
            let pid = attached.expect("floor and full arms hold programs").pid;
            let before = ProgramTime::of(pid);
            dd(DD_RECORDS)?;
            let during_dd = ProgramTime::of(pid).since(before);
            let before = ProgramTime::of(pid);
            let load = wrk(url, 32, opts.seconds.min(3))?;
            let during_load = ProgramTime::of(pid).since(before);
            ensure!(during_load.runs > 0.0 && load.requests > 0.0, "no program runs were counted");
            Ok((during_dd.ns / (2 * DD_RECORDS) as f64, during_load.ns / load.requests))
        })?
    })?;
    Ok(KernelCost {
        arms: KERNEL_COST_ARMS
            .iter()
            .zip(samples)
            .map(|(arm, s)| {
                let (syscall, request): (Vec<f64>, Vec<f64>) = s.into_iter().unzip();
                (*arm, median(syscall), median(request))
            })
            .collect(),
    })
}
