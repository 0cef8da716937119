//! The daemon: checks, loads the probes, follows the targets, and feeds events to the
//! connection table until asked to stop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use aya::maps::{MapData, RingBuf};
use observer_common::Kind;
use rustc_hash::FxHashMap;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    conn::Connections,
    events,
    listen::ListenQueues,
    metrics::{MapLabels, Metrics, ProgramLabels, ReasonLabels},
    peer::Peers,
    probes::{Hooks, KernelDrops, Probes, TlsMode},
    procfs::process_exists,
    route::{Router, Rules},
    serve,
    targets::Targets,
    tls::Keyed,
};

pub struct RunConfig {
    pub pids: Vec<u32>,
    /// Programs whose processes to observe, now and whenever one starts.
    pub exes: Vec<String>,
    pub listen: SocketAddr,
    pub max_endpoints: usize,
    /// Endpoint rules; reloaded on SIGHUP.
    pub routes: Option<PathBuf>,
    pub path_depth: usize,
    pub hooks: Hooks,
    /// Follow the targets' child processes, now and as they are forked.
    pub follow_children: bool,
    pub ring_bytes: u32,
    /// Most connections followed at once (the kernel's socket table and the daemon's).
    pub max_connections: u32,
    /// Seconds without events after which a connection counts as idle.
    pub idle_timeout_secs: u64,
    /// Exit once every target has exited, instead of serving what was counted.
    pub exit_with_targets: bool,
    /// Hook the OpenSSL copies the targets use, for the plaintext of HTTPS servers.
    pub tls: TlsMode,
    /// Latency histograms get native buckets besides the classic ones.
    pub native_histograms: bool,
    /// Follow the connections the targets open (the client role).
    pub clients: bool,
    /// Names for peers (`--peer-name`), and most peer labels besides them.
    pub peer_names: Vec<(SocketAddr, String)>,
    pub max_peers: usize,
}

pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::with_native(config.native_histograms));
    run_with_metrics(config, metrics).await
}

/// `run`, counting into `metrics` (which `observer top` reads in-process).
pub async fn run_with_metrics(config: RunConfig, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    for &pid in &config.pids {
        if !process_exists(pid) {
            bail!("no such process: {pid}");
        }
    }
    let mut rules = load_rules(config.routes.as_deref())?;
    let file_peers = rules.take_peers();
    check_privileges()?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow::anyhow!("listen address {} is already in use", config.listen)
        }
        _ => anyhow::Error::new(e).context(format!("binding {}", config.listen)),
    })?;
    let watch_exec = !config.exes.is_empty();
    let mut probes = Probes::load_and_attach(
        config.hooks,
        config.follow_children,
        watch_exec,
        config.ring_bytes,
        config.max_connections,
        config.tls,
        config.clients,
    )?;
    let mut ring = probes.take_events()?;
    let listen = Arc::new(Mutex::new(ListenQueues::new()));
    let mut targets = Targets::new(&config.exes, config.follow_children, &listen);
    targets.attach(&config.pids, &mut probes)?;
    drop_privileges(config.tls != TlsMode::Off)?;
    // Loading parsed the kernel's BTF and the object (~10 MB of allocations, freed by now):
    // give the pages back instead of carrying them as RSS for the daemon's lifetime.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let addr = listener.local_addr()?;
    let sampler = listen.clone();
    let before_scrape: serve::BeforeScrape = Arc::new(move |metrics: &Metrics| {
        if let Ok(mut queues) = sampler.lock() {
            queues.sample(metrics);
        }
    });
    before_scrape(&metrics);
    serve_on_own_thread(listener.into_std()?, metrics.clone(), before_scrape.clone())?;
    info!("serving metrics on http://{addr}/metrics");

    let router = Router::new(rules, config.max_endpoints, config.path_depth);
    let mut conns = Connections::new(&metrics, router, config.idle_timeout_secs)
        .with_capacity(config.max_connections as usize)
        .with_peers(Peers::new(&config.peer_names, config.max_peers));
    conns.name_peers(&file_peers);
    let mut keyed = Keyed::default();
    let mut drops_seen = KernelDrops::default();
    let mut misses_seen = FxHashMap::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The kernel wakes us only once a backlog builds up (see WAKEUP_BYTES in the eBPF
    // crate); below that, records are collected on a timer paced by the traffic.
    let mut pace = DrainPace::default();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        let wake = tokio::select! {
            guard = ring.readable_mut() => {
                // Cleared before the drain below: records that land after it wake us again.
                guard.context("waiting on the ring buffer")?.clear_ready();
                Wake::Events
            }
            _ = tokio::time::sleep(pace.every()) => Wake::Events,
            _ = tick.tick() => Wake::Second,
            _ = sighup.recv() => Wake::Reload,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        // Whatever is in the ring first: a target found gone below must have had its last
        // events handled, or they would open connections nobody ends.
        let drained = drain_ring(ring.get_mut(), &mut conns, &mut keyed, &mut targets, &metrics);
        pace.drained(drained, targets.changing());
        learned_tls(&mut keyed, &mut probes, &metrics);
        targets.follow(&mut probes);
        match wake {
            Wake::Events => {}
            Wake::Second => {
                before_scrape(&metrics);
                conns.sweep(|conn, _, _| probes.still_open(conn));
                metrics.health.connections.set(conns.count() as i64);
                drops_seen = count_kernel_drops(&metrics, probes.drops(), drops_seen);
                count_program_misses(&metrics, probes.program_misses(), &mut misses_seen);
                // Targets found gone now wrote their last records before they went: drain
                // once more before ending their connections. The drain above is not enough:
                // following new processes since (uprobes: 0.2-0.5 s each) gives a forked
                // child time to answer and exit (seen in the soak: 3 of 1,650 responses of
                // a forking python server taken for abandoned).
                let gone = targets.exited();
                if !gone.is_empty() {
                    drain_ring(ring.get_mut(), &mut conns, &mut keyed, &mut targets, &metrics);
                }
                targets.sweep(&mut probes, &mut conns, &gone);
                for &tgid in &gone {
                    keyed.forget_process(tgid);
                }
                if config.exit_with_targets && targets.all_gone() {
                    info!("every target exited; stopping");
                    break;
                }
            }
            Wake::Reload => match load_rules(config.routes.as_deref()) {
                Ok(rules) => {
                    info!(rules = rules.count(), "reloaded the routes file");
                    conns.set_rules(rules);
                }
                Err(e) => warn!("keeping the previous routes: {e:#}"),
            },
        }
    }
    drop(probes); // detaches every program
    info!("detached; bye");
    Ok(())
}

/// What woke the event loop.
enum Wake {
    /// Records may be pending (the ring's readiness, or the drain timer).
    Events,
    /// The once-a-second tick: sweeps, drops, target exits.
    Second,
    /// SIGHUP: reload the routes.
    Reload,
}

/// Adds what the kernel dropped since `seen` to the metrics; returns the new totals. The
/// totals only grow: a reading that failed (0) is not taken as a reset, or the next good one
/// would be counted twice.
fn count_kernel_drops(metrics: &Metrics, now: KernelDrops, seen: KernelDrops) -> KernelDrops {
    metrics.health.events_lost.inc_by(now.ring_full.saturating_sub(seen.ring_full));
    metrics.health.opens_unseen.inc_by(now.opens_unseen.saturating_sub(seen.opens_unseen));
    metrics.health.frames_unwalked.inc_by(now.frames_unwalked.saturating_sub(seen.frames_unwalked));
    for (map, now, seen) in [
        ("frame_cursors", now.frames_full, seen.frames_full),
        ("sockets", now.sockets_full, seen.sockets_full),
        ("pending_calls", now.pending_full, seen.pending_full),
        ("tls", now.tls_full, seen.tls_full),
    ] {
        metrics.health.kernel_map_full.get_or_create(&MapLabels { map }).inc_by(now.saturating_sub(seen));
    }
    KernelDrops {
        ring_full: now.ring_full.max(seen.ring_full),
        sockets_full: now.sockets_full.max(seen.sockets_full),
        pending_full: now.pending_full.max(seen.pending_full),
        tls_full: now.tls_full.max(seen.tls_full),
        opens_unseen: now.opens_unseen.max(seen.opens_unseen),
        frames_full: now.frames_full.max(seen.frames_full),
        frames_unwalked: now.frames_unwalked.max(seen.frames_unwalked),
    }
}

/// Adds the programs' skipped runs since `seen` to the metrics (totals only grow).
fn count_program_misses(metrics: &Metrics, now: Vec<(String, u64)>, seen: &mut FxHashMap<String, u64>) {
    for (program, misses) in now {
        let before = seen.insert(program.clone(), misses).unwrap_or(0);
        metrics
            .health
            .program_misses
            .get_or_create(&ProgramLabels { program })
            .inc_by(misses.saturating_sub(before));
    }
}

/// The benchmark floor: hooks attached, nothing done, until SIGTERM/SIGINT.
pub async fn floor(pids: &[u32], hooks: Hooks) -> anyhow::Result<()> {
    check_privileges()?;
    let floor = crate::probes::Floor::load_and_attach(pids, hooks)?;
    info!("floor attached");
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    drop(floor);
    Ok(())
}

/// How long the daemon sleeps between drains when the kernel did not wake it, from the size
/// of the last batch, which it keeps between `SMALL_BATCH` and `MEDIUM_BATCH` records where
/// it can. Busy, it drains every `MIN`: short batches, because under saturation on few cores
/// a 10 ms batch (about 1,000 requests) stalled the server for its length when the daemon
/// ran on the server's core (p99 ~1 ms vs ~0.7 ms). Quiet, it backs off to `MAX`: a fixed
/// 2 ms timer cost an idle daemon 2 % of a core (500 wakeups a second, ~40 µs each on this
/// VM), taken from whatever else runs on the host. A burst after a quiet spell is caught by
/// the kernel's wakeup at a sixteenth of the ring, and every duration comes from the
/// kernel's timestamps, so a later drain changes no figure. While the targets' processes
/// change (fork, exec records), it drains every `MIN`: following them races them.
struct DrainPace {
    every: Duration,
}

impl DrainPace {
    const MIN: Duration = Duration::from_millis(2);
    const MAX: Duration = Duration::from_millis(50);
    /// A batch below this many records: the next drain can wait twice as long.
    const SMALL_BATCH: u64 = 64;
    /// A batch above this many (about 0.1 ms of daemon work): the next drain comes twice as
    /// soon.
    const MEDIUM_BATCH: u64 = 128;
    /// A batch above this many (about 0.5 ms of daemon work): back to `MIN` at once.
    const LARGE_BATCH: u64 = 512;

    fn every(&self) -> Duration {
        self.every
    }

    /// After a drain of `records`; `changing`: it held fork or exec records.
    fn drained(&mut self, records: u64, changing: bool) {
        self.every = if changing || records > Self::LARGE_BATCH {
            Self::MIN
        } else if records > Self::MEDIUM_BATCH {
            (self.every / 2).max(Self::MIN)
        } else if records < Self::SMALL_BATCH {
            (self.every * 2).min(Self::MAX)
        } else {
            self.every
        };
    }
}

impl Default for DrainPace {
    fn default() -> Self {
        DrainPace { every: Self::MIN }
    }
}

/// Hands every pending record to the targets (fork, exec, listen) or the connections; returns
/// how many there were.
fn drain_ring(
    ring: &mut RingBuf<MapData>,
    conns: &mut Connections<'_>,
    keyed: &mut Keyed,
    targets: &mut Targets<'_>,
    metrics: &Metrics,
) -> u64 {
    let mut count = 0;
    while let Some(record) = ring.next() {
        count += 1;
        match events::decode(&record) {
            Ok(event) if targets.take(&event) => {}
            Ok(event) if event.kind == Kind::Keys => {
                if let Some(plaintext) = keyed.keys(&event) {
                    conns.handle(&plaintext.event(&event));
                }
            }
            Ok(event) if event.cipher => {
                if let Some(plaintext) = keyed.data(&event) {
                    conns.handle(&plaintext.event(&event));
                }
            }
            Ok(event) => {
                if event.kind == Kind::Close {
                    keyed.close(event.conn);
                }
                conns.handle(&event)
            }
            Err(e) => warn!("dropping a malformed kernel record: {e}"),
        }
    }
    metrics.health.events.inc_by(count);
    count
}

/// `--tls keys`: hands the layouts learned to the kernel and counts what was decrypted and
/// lost.
fn learned_tls(keyed: &mut Keyed, probes: &mut Probes, metrics: &Metrics) {
    for (tgid, layout) in keyed.take_learned() {
        let Some((client, server)) = layout.complete() else { continue };
        info!(pid = tgid, client, server, tickets = ?layout.tickets, "learned where the process's OpenSSL keeps TLS 1.3 secrets");
        let mut at = observer_common::TLS_CALLS_ONLY;
        (at[0], at[1]) = (client, server);
        probes.set_secrets_at(tgid, at);
    }
    metrics.health.tls_keyed_fall_backs.inc_by(probes.take_tls_calibration_fall_backs());
    for (tgid, reason) in keyed.take_fall_backs() {
        probes.tls_fall_back(tgid, reason.name());
        metrics.health.tls_keyed_fall_backs.inc();
    }
    let (verified, lost) = keyed.take_counts();
    metrics.health.tls_keyed_verified.inc_by(verified);
    for (reason, count) in lost {
        metrics.health.tls_keyed_lost.get_or_create(&ReasonLabels { reason: reason.name() }).inc_by(count);
    }
}

fn load_rules(path: Option<&Path>) -> anyhow::Result<Rules> {
    match path {
        Some(path) => Ok(Rules::load(path).context("bad routes file")?),
        None => Ok(Rules::default()),
    }
}

/// What the daemon keeps once its programs are attached and its port bound: CAP_BPF for the
/// map updates that follow new processes, CAP_SYS_PTRACE to read their /proc/PID/fd.
/// Everything else (CAP_PERFMON, CAP_SYS_ADMIN, CAP_NET_BIND_SERVICE, ...) is dropped.
const KEPT_CAPABILITIES: [caps::Capability; 2] =
    [caps::Capability::CAP_BPF, caps::Capability::CAP_SYS_PTRACE];

/// The scrape endpoint on a thread of its own (started after the capabilities were dropped,
/// so it inherits none): scrapes stay fast while the event loop is busy.
fn serve_on_own_thread(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    before_scrape: serve::BeforeScrape,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("serve".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    if let Err(e) = serve::serve(listener, metrics, before_scrape).await {
                        warn!("the /metrics server stopped: {e}");
                    }
                }
                Err(e) => warn!("the /metrics server could not start: {e}"),
            }
        })
    })?;
    Ok(())
}

/// Capabilities are per thread: this must run before any other thread is started. With
/// `tls`, CAP_SYS_ADMIN is kept if held: the OpenSSL uprobes are attached per process, so
/// each new worker or restarted server needs its own, and the kernel wants CAP_SYS_ADMIN
/// for a uprobe perf event (EACCES with CAP_PERFMON alone, Linux 6.18). CAP_PERFMON goes
/// with it for the same reason, and CAP_SETUID/CAP_SETGID (if held) for the libssl helper.
fn drop_privileges(tls: bool) -> anyhow::Result<()> {
    use caps::{CapSet, Capability, CapsHashSet};
    let mut keep: CapsHashSet = KEPT_CAPABILITIES.into_iter().collect();
    if tls && caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false) {
        keep.extend([Capability::CAP_SYS_ADMIN, Capability::CAP_PERFMON]);
        // The libssl helper becomes nobody before it loads a target's library; a child gets
        // no more than this process holds (`no_new_privs`, or no root to regain them).
        keep.extend([Capability::CAP_SETUID, Capability::CAP_SETGID]);
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let now = caps::read(None, set).context("reading capabilities")?;
        caps::set(None, set, &now.intersection(&keep).copied().collect()).context("dropping capabilities")?;
    }
    let _ = caps::clear(None, CapSet::Ambient);
    let mut kept: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    kept.sort();
    info!(?kept, "dropped every other capability");
    Ok(())
}

/// Loading tracepoint programs needs root or CAP_BPF + CAP_PERFMON; say so before trying.
fn check_privileges() -> anyhow::Result<()> {
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !(has(CAP_BPF) && has(CAP_PERFMON)) {
        bail!("not permitted: observer needs root, or CAP_BPF and CAP_PERFMON, to load its eBPF programs");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::DrainPace;

    #[test]
    fn the_drain_backs_off_when_quiet_and_returns_at_once_under_load() {
        let mut pace = DrainPace::default();
        assert_eq!(pace.every(), DrainPace::MIN);
        for _ in 0..10 {
            pace.drained(0, false);
        }
        assert_eq!(pace.every(), DrainPace::MAX, "quiet: capped back-off");
        pace.drained(100, false);
        assert_eq!(pace.every(), DrainPace::MAX, "a batch in the band keeps the pace");
        pace.drained(DrainPace::MEDIUM_BATCH + 1, false);
        assert_eq!(pace.every(), DrainPace::MAX / 2, "a larger batch: twice as soon");
        pace.drained(DrainPace::LARGE_BATCH + 1, false);
        assert_eq!(pace.every(), DrainPace::MIN, "a large batch: straight back to the shortest wait");
        pace.drained(DrainPace::SMALL_BATCH - 1, false);
        assert_eq!(pace.every(), DrainPace::MIN * 2);
        pace.drained(1, true);
        assert_eq!(pace.every(), DrainPace::MIN, "processes changing: the shortest wait");
    }

    #[test]
    fn a_steady_moderate_load_settles_in_the_band_whatever_came_before() {
        // 5,000 records a second: 250 at 50 ms, 10 at 2 ms; the band is 64..=128.
        let batch = |every: std::time::Duration| (5_000.0 * every.as_secs_f64()) as u64;
        for start in [DrainPace::MIN, DrainPace::MAX] {
            let mut pace = DrainPace { every: start };
            for _ in 0..20 {
                pace.drained(batch(pace.every()), false);
            }
            let settled = batch(pace.every());
            assert!((DrainPace::SMALL_BATCH..=DrainPace::MEDIUM_BATCH).contains(&settled), "{settled}");
        }
    }
}
