//! The benchmark's results: the Markdown report and the JSON file.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::{
    Arm, FLOOR, FULL, Options, Run, SYS_EXIT_FULL, Summary,
    kernel::KernelCost,
    neighbours::{MiddlewareArm, Neighbour},
};

/// Everything one run of `cargo xtask bench` measured.
#[derive(Clone, Copy)]
pub(super) struct Results<'a> {
    pub summaries: &'a [Summary],
    /// ns per syscall of an unobserved process (dd), by arm.
    pub syscalls: &'a [(Arm, f64)],
    pub kernel: &'a KernelCost,
    /// nginx https: kernel program ns per request, by arm.
    pub https_kernel: &'a [(Arm, f64)],
    /// Daemon RSS and peak RSS (KiB) and table size with 10,000 idle connections.
    pub memory: (f64, f64, f64),
    pub neighbour: &'a [Neighbour],
    pub middleware: &'a MiddlewareArm,
}

pub(super) fn render(results: &Results<'_>, opts: &Options) -> String {
    let Results { summaries, syscalls, kernel, memory, .. } = *results;
    let mut s = render_table(summaries, opts);
    let ns = |a: Arm| syscalls.iter().find(|(x, _)| *x == a).map_or(0.0, |(_, n)| *n);
    let _ = writeln!(
        s,
        "\nUnobserved process (dd bs=1), ns per syscall: none {:.1}, floor {:.1}, full {:.1} (+{:.1} over none), \
         full on the btf sys_exit hook {:.1} (+{:.1}).",
        ns(Arm::Unobserved),
        ns(FLOOR),
        ns(FULL),
        ns(FULL) - ns(Arm::Unobserved),
        ns(SYS_EXIT_FULL),
        ns(SYS_EXIT_FULL) - ns(Arm::Unobserved)
    );
    let _ = writeln!(
        s,
        "\nKernel programs, by the kernel's own accounting (kernel.bpf_stats_enabled, medians of {} rounds):\n\n\
         | arm | ns per syscall of an unobserved process (dd) | ns per nginx request at saturation |\n|---|---|---|",
        opts.reps
    );
    for (arm, syscall, request) in &kernel.arms {
        let _ = writeln!(s, "| {} | {syscall:.1} | {request:.0} |", arm.name());
    }
    let _ = writeln!(
        s,
        "\nDaemon with 10,000 idle keep-alive connections: RSS {:.1} MB (peak {:.1} MB), {} connections in its table.",
        memory.0 / 1024.0,
        memory.1 / 1024.0,
        memory.2
    );
    let peak = summaries.iter().flat_map(|x| x.arm(FULL)).map(|r| r.observer_hwm_kib).fold(0.0, f64::max);
    let _ = writeln!(s, "Daemon peak RSS across the load runs: {:.1} MB.", peak / 1024.0);
    s
}

/// The throughput table: every arm of every workload, ratios within rounds.
pub(super) fn render_table(summaries: &[Summary], opts: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Medians of {} interleaved runs of {} s each; ratios are medians of the ratios within each round.\n",
        opts.reps, opts.seconds
    );
    let _ = writeln!(
        s,
        "| workload | arm | req/s | MB/s | p50 µs | p99 µs | full/unobserved | full/floor | p99 full/floor | daemon µs CPU/req | events lost |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for summary in summaries {
        for (arm, r) in &summary.arms {
            let ratio = |b: Arm, f: fn(&Run) -> f64| {
                summary.ratio(*arm, b, f).map_or("-".into(), |x| format!("{x:.3}"))
            };
            let (vs_base, vs_floor, p99_floor, cpu) = if arm.is_full() {
                (
                    ratio(Arm::Unobserved, |r| r.rps),
                    ratio(arm.floor(), |r| r.rps),
                    ratio(arm.floor(), |r| r.p99_us),
                    format!("{:.2}", r.observer_cpu_s * 1e6 / r.requests.max(1.0)),
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            let lost = if arm.is_full() { format!("{}", r.events_lost) } else { "-".into() };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {vs_base} | {vs_floor} | {p99_floor} | {cpu} | {lost} |",
                summary.name,
                arm.name(),
                r.rps,
                r.bytes_per_sec / 1048576.0,
                r.p50_us,
                r.p99_us
            );
        }
    }
    s
}

fn run_json(r: &Run) -> Value {
    json!({
        "rps": r.rps,
        "bytes_per_sec": r.bytes_per_sec,
        "p50_us": r.p50_us,
        "p99_us": r.p99_us,
        "requests": r.requests,
        "observer_cpu_s": r.observer_cpu_s,
        "observer_peak_rss_kib": r.observer_hwm_kib,
        "events_lost": r.events_lost,
        "counted": r.counted,
    })
}

/// By arm name.
fn by_arm<T>(items: impl IntoIterator<Item = T>, f: impl Fn(T) -> (Arm, Value)) -> Value {
    Value::Object(items.into_iter().map(f).map(|(arm, v)| (arm.name().to_owned(), v)).collect::<Map<_, _>>())
}

pub(super) fn json(results: &Results<'_>) -> serde_json::Result<String> {
    let m = results.middleware;
    let workloads: Vec<Value> = results
        .summaries
        .iter()
        .map(|summary| json!({"name": summary.name, "arms": by_arm(&summary.arms, |(arm, r)| (*arm, run_json(r)))}))
        .collect();
    let (rss, peak, table) = results.memory;
    serde_json::to_string_pretty(&json!({
        "workloads": workloads,
        "unobserved_syscall_ns": by_arm(results.syscalls, |(arm, ns)| (*arm, json!(ns))),
        "kernel_program_ns": by_arm(&results.kernel.arms, |(arm, syscall, request)| {
            (*arm, json!({"per_unobserved_syscall": syscall, "per_nginx_request": request}))
        }),
        "https_kernel_program_ns_per_request": by_arm(results.https_kernel, |(arm, ns)| (*arm, json!(ns))),
        "idle_10k_connections": {"rss_kib": rss, "peak_rss_kib": peak, "table": table},
        "neighbour_redis": by_arm(results.neighbour, |n| {
            (n.arm, json!({"rps": n.rps, "ratio": n.ratio, "program_ns_per_request": n.program_ns_per_request}))
        }),
        "middleware": {
            "bare_rps": m.bare_rps,
            "middleware_rps": m.middleware_rps,
            "observed_rps": m.observed_rps,
            "middleware_ratio": m.middleware_ratio,
            "observed_ratio": m.observed_ratio,
        },
    }))
}
