//! `cargo xtask bench`: what observing costs, measured against the unobserved server and
//! against the bare cost of the hooks (the floor program), in the same run, with the arms
//! interleaved and repeated, reporting medians.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

mod h2;
mod kernel;
mod neighbours;
mod report;
mod tls;
mod wrk;

pub(crate) use tls::{bench_https, self_signed_cert};

use kernel::{BpfStats, NEIGHBOUR_ARMS, ProgramTime, kernel_cost, unobserved_syscall_cost};
use neighbours::{middleware_arm, neighbour_redis, render_neighbours};
use wrk::wrk;

/// What is attached to the server during a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Unobserved,
    /// observer-ebpf/src/floor.rs on the same hooks: tgid filter and a counter.
    Floor(Hooks),
    Full(Hooks),
    /// The default hooks with `--no-tls`: no OpenSSL uprobes.
    FullNoTls,
    /// The default with `--no-native-histograms`: latency histograms with classic buckets only.
    FullClassic,
    /// The default hooks with `--tls calls`: OpenSSL hooked at every read and write call.
    FullTlsCalls,
    /// The default with `--no-client`: the targets' own connections not followed.
    FullNoClient,
}

/// The observer's `--hooks`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hooks {
    Sock,
    Btf,
    Raw,
    Tracepoints,
}

impl Hooks {
    fn arg(self) -> &'static str {
        match self {
            Hooks::Sock => "sock",
            Hooks::Btf => "btf",
            Hooks::Raw => "raw",
            Hooks::Tracepoints => "tracepoints",
        }
    }
}

/// The default hooks (tp_btf on the socket tracepoints) and their floor: the floor program on
/// the same tracepoints.
const FLOOR: Arm = Arm::Floor(Hooks::Sock);
const FULL: Arm = Arm::Full(Hooks::Sock);
/// The previous default (tp_btf at sys_exit) and its floor: the raw floor program on the same
/// hook, attached the same way.
const SYS_EXIT_FLOOR: Arm = Arm::Floor(Hooks::Raw);
const SYS_EXIT_FULL: Arm = Arm::Full(Hooks::Btf);

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::Unobserved => "unobserved",
            Arm::Floor(Hooks::Sock) => "floor",
            Arm::Full(Hooks::Sock) => "full",
            Arm::Floor(Hooks::Raw | Hooks::Btf) => "floor (sys_exit)",
            Arm::Full(Hooks::Btf) => "full (btf sys_exit)",
            Arm::Full(Hooks::Raw) => "full (raw)",
            Arm::Floor(Hooks::Tracepoints) => "floor (tracepoints)",
            Arm::Full(Hooks::Tracepoints) => "full (tracepoints)",
            Arm::FullNoTls => "full --no-tls",
            Arm::FullClassic => "full, classic histograms",
            Arm::FullTlsCalls => "full --tls calls",
            Arm::FullNoClient => "full --no-client",
        }
    }

    fn is_full(self) -> bool {
        matches!(
            self,
            Arm::Full(_) | Arm::FullNoTls | Arm::FullClassic | Arm::FullTlsCalls | Arm::FullNoClient
        )
    }

    /// The floor arm with the same hooks.
    fn floor(self) -> Arm {
        match self {
            Arm::Full(Hooks::Btf) | Arm::Floor(Hooks::Btf) => SYS_EXIT_FLOOR,
            Arm::Full(h) | Arm::Floor(h) => Arm::Floor(h),
            Arm::FullNoTls | Arm::FullClassic | Arm::FullTlsCalls | Arm::FullNoClient => FLOOR,
            Arm::Unobserved => Arm::Unobserved,
        }
    }
}

pub struct Options {
    pub reps: usize,
    pub seconds: u64,
    pub observer: PathBuf,
    /// boot-server/: the axum server of the middleware arm.
    pub boot_server: PathBuf,
    pub out: PathBuf,
}

/// One wrk run.
#[derive(Clone, Copy, Default, Debug)]
struct Run {
    rps: f64,
    bytes_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    requests: f64,
    /// Observer CPU seconds during the run, and its peak RSS (KiB); full arm only.
    observer_cpu_s: f64,
    observer_hwm_kib: f64,
    events_lost: f64,
    /// Requests the observer counted (`http_requests_total`, every label) after the run
    /// drained: at least the client's count, at most that plus the requests in flight when
    /// it stopped.
    counted: f64,
}

/// Kills the child on drop.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first so the observer detaches cleanly, then make sure.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        for _ in 0..40 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(25));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port()
}

pub(crate) fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then(|| text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))?
}

pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The process holding an arm's programs (floor or observer), and the observer's /metrics.
#[derive(Clone, Copy)]
struct Attached {
    pid: u32,
    metrics: Option<SocketAddr>,
}

impl Attached {
    /// The observer's pid and /metrics address: only the full arm has them.
    fn observer(self) -> Option<(u32, SocketAddr)> {
        Some((self.pid, self.metrics?))
    }
}

/// Attaches `arm` to `pid` for the duration of `f`.
fn with_arm<T>(
    opts: &Options,
    arm: Arm,
    pid: u32,
    f: impl FnOnce(Option<Attached>) -> T,
) -> anyhow::Result<T> {
    match arm {
        Arm::Unobserved => Ok(f(None)),
        Arm::Floor(hooks) => {
            let mut child = Command::new(&opts.observer)
                .args(["floor", "--pid", &pid.to_string(), "--hooks", hooks.arg()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            let mut stderr = child.stderr.take().expect("piped");
            let floor_pid = child.id();
            let guard = Guard(child);
            let mut log = Vec::new();
            let mut byte = [0u8; 1];
            while !String::from_utf8_lossy(&log).contains("floor attached") {
                ensure!(stderr.read(&mut byte)? == 1, "floor exited: {}", String::from_utf8_lossy(&log));
                log.push(byte[0]);
            }
            thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            let result = f(Some(Attached { pid: floor_pid, metrics: None }));
            drop(guard);
            Ok(result)
        }
        Arm::Full(_) | Arm::FullNoTls | Arm::FullClassic | Arm::FullTlsCalls | Arm::FullNoClient => {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let (hooks, flag) = match arm {
                Arm::Full(hooks) => (hooks, None),
                Arm::FullClassic => (Hooks::Sock, Some("--no-native-histograms")),
                Arm::FullTlsCalls => (Hooks::Sock, Some("--tls=calls")),
                Arm::FullNoClient => (Hooks::Sock, Some("--no-client")),
                _ => (Hooks::Sock, Some("--no-tls")),
            };
            let child = Command::new(&opts.observer)
                .args([
                    "run",
                    "--pid",
                    &pid.to_string(),
                    "--listen",
                    &addr.to_string(),
                    "--hooks",
                    hooks.arg(),
                ])
                .args(flag)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let observer_pid = child.id();
            let guard = Guard(child);
            wait_for("the observer's /metrics", || http_get(addr, "/metrics").is_some())?;
            let result = f(Some(Attached { pid: observer_pid, metrics: Some(addr) }));
            drop(guard);
            Ok(result)
        }
    }
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ
}

pub(crate) fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 { xs[mid] } else { (xs[mid - 1] + xs[mid]) / 2.0 }
}

/// Runs wrk against `url` under each arm, `reps` times, rotating the arm order each round.
fn measure(
    opts: &Options,
    pid: u32,
    url: &str,
    arms: &[Arm],
    connections: u32,
) -> anyhow::Result<Vec<(Arm, Vec<Run>)>> {
    measure_with(opts, pid, url, arms, connections, &[])
}

/// [`measure`] with extra request headers for wrk.
fn measure_with(
    opts: &Options,
    pid: u32,
    url: &str,
    arms: &[Arm],
    connections: u32,
    headers: &[&str],
) -> anyhow::Result<Vec<(Arm, Vec<Run>)>> {
    let runs = interleaved(opts.reps, arms, |rep, arm| {
        let run = with_arm(opts, arm, pid, |attached| -> anyhow::Result<Run> {
            let observer = attached.and_then(Attached::observer);
            let cpu_before = observer.map(|(p, _)| cpu_seconds(p)).unwrap_or(0.0);
            let mut run = wrk::wrk_with(url, connections, opts.seconds, headers)?;
            if let Some((p, addr)) = observer {
                run.observer_cpu_s = cpu_seconds(p) - cpu_before;
                run.observer_hwm_kib = status_kib(p, "VmHWM:");
                thread::sleep(Duration::from_millis(300)); // let the last events drain
                let metrics = http_get(addr, "/metrics").unwrap_or_default();
                run.events_lost = metric(&metrics, "observer_events_lost_total");
                run.counted = metric(&metrics, "http_requests_total{");
            }
            Ok(run)
        })??;
        eprintln!(
            "  {:<20} rep {}: {:>10.0} req/s  p50 {:>8.0}µs  p99 {:>8.0}µs",
            arm.name(),
            rep + 1,
            run.rps,
            run.p50_us,
            run.p99_us
        );
        Ok(run)
    })?;
    Ok(arms.iter().copied().zip(runs).collect())
}

/// Runs `run(round, arm)` for every arm in each of `reps` rounds, the arms' order rotated each
/// round so none always runs first (or right after the same neighbour) on a shared machine;
/// returns each arm's results in round order, in the order of `arms`.
fn interleaved<A: Copy, T>(
    reps: usize,
    arms: &[A],
    mut run: impl FnMut(usize, A) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Vec<T>>> {
    let mut results: Vec<Vec<T>> = arms.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        for k in 0..arms.len() {
            let i = (k + rep) % arms.len();
            results[i].push(run(rep, arms[i])?);
        }
    }
    Ok(results)
}

struct Summary {
    name: String,
    /// Medians per arm.
    arms: Vec<(Arm, Run)>,
    /// Every run per arm, in round order.
    rounds: Vec<(Arm, Vec<Run>)>,
}

fn summarize(name: &str, runs: Vec<(Arm, Vec<Run>)>) -> Summary {
    let rounds = runs.clone();
    let arms = runs
        .into_iter()
        .map(|(arm, rs)| {
            let m = |f: fn(&Run) -> f64| median(rs.iter().map(f).collect());
            (
                arm,
                Run {
                    rps: m(|r| r.rps),
                    bytes_per_sec: m(|r| r.bytes_per_sec),
                    p50_us: m(|r| r.p50_us),
                    p99_us: m(|r| r.p99_us),
                    requests: m(|r| r.requests),
                    observer_cpu_s: m(|r| r.observer_cpu_s),
                    observer_hwm_kib: rs.iter().map(|r| r.observer_hwm_kib).fold(0.0, f64::max),
                    events_lost: rs.iter().map(|r| r.events_lost).sum(),
                    counted: m(|r| r.counted),
                },
            )
        })
        .collect();
    Summary { name: name.to_owned(), arms, rounds }
}

impl Summary {
    fn arm(&self, arm: Arm) -> Option<&Run> {
        self.arms.iter().find(|(a, _)| *a == arm).map(|(_, r)| r)
    }

    /// The median over rounds of `f(a) / f(b)` within each round. Each round runs every arm
    /// back to back, so a ratio within a round compares runs under the same background load;
    /// a ratio of medians would mix runs from quiet and busy moments of a shared machine.
    fn ratio(&self, a: Arm, b: Arm, f: fn(&Run) -> f64) -> Option<f64> {
        let runs = |arm: Arm| self.rounds.iter().find(|(x, _)| *x == arm).map(|(_, r)| r);
        let (a, b) = (runs(a)?, runs(b)?);
        Some(median(a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect()))
    }
}

/// nginx, one process, `return 200` on /hello and a sparse 1 GiB file on /big, in clear text
/// on `port` and over TLS on `tls_port`; /proxied is /hello through `proxy_pass` to itself
/// (a new upstream connection per request: a client's connections from before an arm
/// attached would not be followed).
struct Nginx {
    guard: Guard,
    port: u16,
    tls_port: u16,
    /// HTTP/2 in clear text (prior knowledge).
    h2c_port: u16,
}

fn start_nginx(dir: &Path) -> anyhow::Result<Nginx> {
    std::fs::create_dir_all(dir.join("www/big"))?;
    std::fs::File::create(dir.join("www/big/image.raw"))?.set_len(1 << 30)?;
    let port = free_port();
    let tls_port = free_port();
    let h2c_port = free_port();
    tls::self_signed_cert(dir)?;
    let root = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\npid {root}/nginx.pid;\n\
         error_log {root}/error.log;\nevents {{ worker_connections 16384; }}\nhttp {{\n access_log off;\n sendfile on;\n\
         keepalive_timeout 120;\n keepalive_requests 1000000;\n client_body_temp_path {root}/body;\n\
         proxy_temp_path {root}/proxy;\n fastcgi_temp_path {root}/fastcgi;\n uwsgi_temp_path {root}/uwsgi;\n\
         scgi_temp_path {root}/scgi;\n server {{\n  listen 127.0.0.1:{port} backlog=16384;\n\
         listen 127.0.0.1:{tls_port} ssl backlog=16384;\n  listen 127.0.0.1:{h2c_port} http2 backlog=16384;\n  ssl_certificate {root}/cert.pem;\n\
         ssl_certificate_key {root}/key.pem;\n  ssl_protocols TLSv1.2 TLSv1.3;\n  root {root}/www;\n\
         location = /hello {{ return 200 \"hello\\n\"; }}\n\
         location = /proxied {{ proxy_pass http://127.0.0.1:{port}/hello; }}\n }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut nginx = Command::new("nginx");
    nginx.arg("-c").arg(dir.join("nginx.conf")).arg("-e").arg(dir.join("error.log"));
    let guard = start_server("nginx", &mut nginx, port)?;
    Ok(Nginx { guard, port, tls_port, h2c_port })
}

/// Starts `cmd` (output discarded) and waits until it accepts on loopback `port`.
fn start_server(what: &str, cmd: &mut Command, port: u16) -> anyhow::Result<Guard> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let guard = Guard(child);
    wait_for(what, || TcpStream::connect(("127.0.0.1", port)).is_ok())?;
    Ok(guard)
}

fn start_axum(observer: &Path) -> anyhow::Result<(Guard, u16)> {
    let port = free_port();
    let mut axum = Command::new(observer);
    axum.args(["demo-server", "--listen", &format!("127.0.0.1:{port}")]);
    Ok((start_server("the axum server", &mut axum, port)?, port))
}

/// Daemon RSS with `n` idle keep-alive connections open to the observed nginx.
fn idle_connections_rss(opts: &Options, nginx: &Nginx, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    with_arm(opts, FULL, nginx.guard.0.id(), |attached| -> anyhow::Result<(f64, f64, f64)> {
        let (pid, addr) = attached.and_then(Attached::observer).expect("full arm");
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect(("127.0.0.1", nginx.port))?;
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: b\r\n\r\n")?;
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf)?;
            held.push(s);
        }
        thread::sleep(Duration::from_secs(2));
        let conns = http_get(addr, "/metrics").map_or(0.0, |m| metric(&m, "observer_connections"));
        let rss = status_kib(pid, "VmRSS:");
        drop(held);
        Ok((rss, status_kib(pid, "VmHWM:"), conns))
    })?
}

fn check_tools() -> anyhow::Result<()> {
    for tool in ["wrk", "h2load", "nginx", "dd", "redis-server", "redis-benchmark", "openssl"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map_or(true, |o| !o.status.success())
        {
            bail!("{tool} is not installed: run `cargo xtask setup`");
        }
    }
    Ok(())
}

/// The tools checked, the output folder made, and the bench's nginx started afresh.
fn prepare(opts: &Options) -> anyhow::Result<Nginx> {
    check_tools()?;
    std::fs::create_dir_all(&opts.out)?;
    let work = opts.out.join("nginx");
    let _ = std::fs::remove_dir_all(&work);
    start_nginx(&work)
}

pub fn bench(opts: &Options) -> anyhow::Result<()> {
    let nginx = prepare(opts)?;
    let (axum, axum_port) = start_axum(&opts.observer)?;
    let nginx_pid = nginx.guard.0.id();
    let axum_pid = axum.0.id();
    let all = [Arm::Unobserved, FLOOR, FULL];
    let every = [
        Arm::Unobserved,
        FLOOR,
        FULL,
        Arm::FullClassic,
        SYS_EXIT_FLOOR,
        SYS_EXIT_FULL,
        Arm::Floor(Hooks::Tracepoints),
        Arm::Full(Hooks::Tracepoints),
    ];
    let mut summaries = Vec::new();

    eprintln!("nginx `return 200`, wrk -t1 -c32, every hook strategy:");
    let url = format!("http://127.0.0.1:{}/hello", nginx.port);
    summaries.push(summarize("nginx return 200 (saturation)", measure(opts, nginx_pid, &url, &every, 32)?));

    eprintln!("nginx h2c `return 200`, h2load -t1 -c32 -m10:");
    summaries.push(h2::saturation(opts, nginx_pid, nginx.h2c_port)?);

    eprintln!("axum /api/status, wrk -t1 -c32:");
    let url = format!("http://127.0.0.1:{axum_port}/api/status");
    summaries.push(summarize("axum /api/status (saturation)", measure(opts, axum_pid, &url, &all, 32)?));

    eprintln!("axum /work/100 (~100 µs handler), wrk -t1 -c32:");
    let url = format!("http://127.0.0.1:{axum_port}/work/100");
    summaries.push(summarize(
        "axum ~100 µs handler (realistic)",
        measure(opts, axum_pid, &url, &[Arm::Unobserved, FULL], 32)?,
    ));

    eprintln!("nginx proxy_pass to itself (/proxied → /hello), wrk -t1 -c32:");
    let url = format!("http://127.0.0.1:{}/proxied", nginx.port);
    let proxy_arms = [Arm::Unobserved, FLOOR, FULL, Arm::FullNoClient];
    summaries
        .push(summarize("nginx proxy_pass (saturation)", measure(opts, nginx_pid, &url, &proxy_arms, 32)?));

    eprintln!("nginx https `return 200`, wrk -t1 -c32 (keep-alive):");
    let https = tls::https_workload(opts, nginx_pid, nginx.tls_port)?;
    let counts = tls::render_counts(&https.summaries[..2]);
    summaries.extend(https.summaries);

    eprintln!("nginx 1 GiB sendfile download, wrk -t1 -c2:");
    let url = format!("http://127.0.0.1:{}/big/image.raw", nginx.port);
    summaries.push(summarize("nginx 1 GiB file (sendfile)", measure(opts, nginx_pid, &url, &all, 2)?));

    eprintln!("axum /boot/{{mac}}: bare, seed middleware, observed; wrk -t1 -c32:");
    let middleware = middleware_arm(opts)?;

    eprintln!("a redis nobody observes (redis-benchmark -c 32 -t set,get) while nginx is watched:");
    let neighbour = neighbour_redis(opts, nginx_pid)?;

    eprintln!("syscalls of an unobserved process (dd bs=1):");
    let syscalls = unobserved_syscall_cost(opts, nginx_pid)?;

    eprintln!("kernel program time (kernel.bpf_stats_enabled), dd and nginx:");
    let kernel = kernel_cost(opts, nginx_pid, &format!("http://127.0.0.1:{}/hello", nginx.port))?;

    eprintln!("10,000 idle keep-alive connections:");
    let (rss_kib, hwm_kib, conns) = idle_connections_rss(opts, &nginx, 10_000)?;
    eprintln!("10,000 idle HTTP/2 connections, each after a request:");
    let (h2_rss, h2_hwm, h2_conns) = h2::idle_connections_rss(opts, nginx_pid, nginx.h2c_port, 10_000)?;

    let results = report::Results {
        summaries: &summaries,
        syscalls: &syscalls,
        kernel: &kernel,
        https_kernel: &https.kernel,
        memory: (rss_kib, hwm_kib, conns),
        neighbour: &neighbour,
        middleware: &middleware,
    };
    let mut text = report::render(&results, opts);
    text.push_str(&tls::render(&https.kernel, &https.neighbour_ns));
    text.push_str(&counts);
    text.push_str(&render_neighbours(&neighbour, &middleware));
    text.push_str(&format!(
        "\nDaemon memory with 10,000 idle HTTP/2 connections (h2c, one request answered on each): \
         RSS {:.1} MiB (peak {:.1} MiB), {h2_conns} connections in its table.\n",
        h2_rss / 1024.0,
        h2_hwm / 1024.0
    ));
    println!("{text}");
    std::fs::write(opts.out.join("results.md"), &text)?;
    std::fs::write(opts.out.join("results.json"), report::json(&results)?)?;
    eprintln!("written: {}", opts.out.join("results.{md,json}").display());
    Ok(())
}
