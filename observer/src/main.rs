//! The `observer` command line.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use observer::{
    demo, demo_server,
    metrics::Metrics,
    probes::{Hooks, TlsMode},
    run,
    top::{self, SortBy},
};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as one JSON object per line (for log shippers). `RUST_LOG` sets
    /// the level (info by default).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Observe running HTTP servers and serve their request metrics.
    Run {
        /// Process to observe (repeatable).
        #[arg(long = "pid", value_name = "PID", required_unless_present = "exes")]
        pids: Vec<u32>,
        /// Observe every process running this program, now and as new ones start (a restarted
        /// server is picked up again): a path, or a file name (repeatable).
        #[arg(long = "exe", value_name = "NAME|PATH")]
        exes: Vec<String>,
        /// Address to serve /metrics on.
        #[arg(long, default_value = "0.0.0.0:9464")]
        listen: SocketAddr,
        #[command(flatten)]
        common: Common,
        /// Exit once every target has exited (default: keep serving what was counted).
        #[arg(long)]
        exit_with_targets: bool,
    },
    /// Live terminal view, one row per endpoint: requests/s, in flight, p50/p99 latency, error
    /// ratio, bytes/s. Reads a running daemon (`--url`) or observes `--pid`/`--exe` itself.
    Top {
        /// A running daemon's metrics, e.g. http://127.0.0.1:9464/metrics.
        #[arg(long, conflicts_with_all = ["pids", "exes"], required_unless_present_any = ["pids", "exes"])]
        url: Option<String>,
        /// Process to observe here (repeatable).
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
        /// Program whose processes to observe here (repeatable).
        #[arg(long = "exe", value_name = "NAME|PATH")]
        exes: Vec<String>,
        /// Seconds between refreshes; rates are over this interval.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Initial sort column (keys: s or → next column, 1-7 pick one, r reverse).
        #[arg(long, value_enum, default_value = "rate")]
        sort: SortBy,
        /// When observing here, also serve /metrics on this address (an ephemeral loopback
        /// port by default).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[command(flatten)]
        common: Common,
    },
    /// Start a demo HTTP server with some traffic, and observe it.
    Demo {
        /// Address to serve /metrics on.
        #[arg(long, default_value = "0.0.0.0:9464")]
        listen: SocketAddr,
        #[command(flatten)]
        common: Common,
    },
    /// Benchmark floor: attach a do-nothing program to the same tracepoints (cargo xtask bench).
    #[command(hide = true)]
    Floor {
        #[arg(long = "pid", required = true)]
        pids: Vec<u32>,
        #[arg(long, value_enum, default_value = "auto")]
        hooks: Hooks,
    },
    /// The demo's HTTP server (started by `demo`).
    #[command(hide = true)]
    DemoServer {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Where a libssl keeps a session's secrets (`--tls keys` runs this as its helper).
    #[command(hide = true)]
    TlsOffsets { library: PathBuf },
}

#[derive(clap::Args)]
struct Common {
    /// Most distinct endpoint labels; later ones are counted as endpoint="other".
    #[arg(long, default_value_t = 100)]
    max_endpoints: usize,
    /// TOML file of endpoint rules (see examples/dragonfly-routes.toml); SIGHUP reloads it.
    #[arg(long, value_name = "FILE")]
    routes: Option<PathBuf>,
    /// Path segments kept in a label when no rule matches (ids become `{id}`).
    #[arg(long, default_value_t = 2)]
    path_depth: usize,
    /// How to hook the targets' socket I/O: the socket tracepoints (sock: only socket I/O runs
    /// a program, Linux ≥ 6.3 with BTF), one tracepoint at sys_exit, BTF-typed (btf) or raw
    /// (raw), or per-syscall tracepoints; auto is sock where the kernel has it, else btf when
    /// it has BTF, else raw. docs/benchmarks.md has what each costs.
    #[arg(long, value_enum, default_value = "auto")]
    hooks: Hooks,
    /// Observe only the given processes, not their children (by default an nginx master's
    /// workers, existing and future, are observed too).
    #[arg(long)]
    no_children: bool,
    /// Ring buffer size in bytes between the kernel programs and the daemon.
    #[arg(long, default_value_t = observer_common::RING_BYTES, value_parser = ring_bytes)]
    ring_bytes: u32,
    /// Size of the kernel's table of followed connections (with the syscall hooks: of
    /// followed sockets, the targets' other sockets open at attach included) and of the
    /// daemon's connection table; connections beyond are counted in
    /// observer_kernel_map_full_total{map="sockets"} and not followed.
    #[arg(long, default_value_t = observer_common::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds without traffic after which a connection is idle: a response whose end was not
    /// seen is ended at its last write, and the connection leaves the table.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
    /// Do not hook OpenSSL (uprobes on SSL_read/SSL_write in each libssl the targets map, and
    /// in their executables when OpenSSL is linked in): HTTPS served by the targets is then
    /// not seen.
    #[arg(long)]
    no_tls: bool,
    /// How HTTPS through OpenSSL is seen: `keys` (the default) hooks only the handshake of a
    /// shared libssl, takes each session's keys there and decrypts its records from the
    /// socket hooks (with other `--hooks`, or OpenSSL linked in, `calls`); `calls` hooks every
    /// SSL_read/SSL_write call; `off` is `--no-tls`. Also from the environment (`OBSERVER_TLS`).
    #[arg(long, value_enum, default_value_t = TlsMode::Keys, env = "OBSERVER_TLS")]
    tls: TlsMode,
    /// Record latency histograms with classic buckets only. By default they also get native
    /// (exponential) buckets, which only Prometheus' protobuf format carries (Prometheus with
    /// `--enable-feature=native-histograms`); text scrapes get the classic buckets either way.
    #[arg(long)]
    no_native_histograms: bool,
    /// Do not follow the connections the targets open themselves (to their upstreams): no
    /// http_client_*, grpc_client_* or tcp_connect_* metrics.
    #[arg(long)]
    no_client: bool,
    /// A readable name for an upstream, as its peer label (repeatable): ADDR:PORT=NAME.
    #[arg(long = "peer-name", value_name = "ADDR:PORT=NAME", value_parser = observer::peer::parse_peer_name)]
    peer_names: Vec<(SocketAddr, String)>,
    /// Most distinct peer labels (upstreams without a name); later ones are counted as
    /// peer="other".
    #[arg(long, default_value_t = observer::peer::DEFAULT_MAX_PEERS)]
    max_peers: usize,
}

/// A page: the smallest ring the kernel takes.
const MIN_RING_BYTES: u32 = 4096;

/// `--ring-bytes`: the kernel takes a power of two of at least a page.
fn ring_bytes(value: &str) -> Result<u32, String> {
    let bytes: u32 = value.parse().map_err(|e| format!("{e}"))?;
    if bytes.is_power_of_two() && bytes >= MIN_RING_BYTES {
        Ok(bytes)
    } else {
        Err(format!("must be a power of two of at least {MIN_RING_BYTES}, not {bytes}"))
    }
}

impl Common {
    fn config(self, pids: Vec<u32>, listen: SocketAddr, exit_with_targets: bool) -> run::RunConfig {
        run::RunConfig {
            pids,
            exes: Vec::new(),
            listen,
            max_endpoints: self.max_endpoints,
            routes: self.routes,
            path_depth: self.path_depth,
            hooks: self.hooks,
            follow_children: !self.no_children,
            ring_bytes: self.ring_bytes,
            max_connections: self.max_connections,
            idle_timeout_secs: self.idle_timeout,
            exit_with_targets,
            tls: if self.no_tls { TlsMode::Off } else { self.tls },
            native_histograms: !self.no_native_histograms,
            clients: !self.no_client,
            peer_names: self.peer_names,
            max_peers: self.max_peers,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The live view owns the terminal: its logs would scribble over it.
    let writer = match cli.command {
        Command::Top { .. } => BoxMakeWriter::new(std::io::sink),
        _ => BoxMakeWriter::new(std::io::stderr),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(writer)
        // Colours only for a terminal: piped to a file, journald or a log shipper, escape
        // codes are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => log.init(),
        LogFormat::Json => log.json().flatten_event(true).init(),
    }
    let fail = |e: anyhow::Error| fail(e, cli.log_format);
    // One thread: capabilities are per thread, and `run` drops them before starting any other
    // (the /metrics server gets a thread of its own, so it answers while events are busy).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(anyhow::Error::new(e).context("starting the async runtime")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { pids, exes, listen, common, exit_with_targets } => {
                run::run(run::RunConfig { exes, ..common.config(pids, listen, exit_with_targets) }).await
            }
            Command::Top { url, pids, exes, interval, sort, listen, common } => {
                let interval = Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
                match url {
                    Some(url) => top::show(top::Source::Url(url), interval, sort).await,
                    None => {
                        let config = run::RunConfig { exes, ..common.config(pids, listen, false) };
                        let metrics = Arc::new(Metrics::with_native(config.native_histograms));
                        tokio::select! {
                            done = run::run_with_metrics(config, metrics.clone()) => done,
                            done = top::show(top::Source::Local(metrics), interval, sort) => done,
                        }
                    }
                }
            }
            Command::Demo { listen, common } => demo::demo(common.config(Vec::new(), listen, true)).await,
            Command::DemoServer { listen } => demo_server::serve(listen).await,
            Command::Floor { pids, hooks } => run::floor(&pids, hooks).await,
            Command::TlsOffsets { library } => {
                observer::tls::learn::helper_main(&library).map_err(|e| anyhow::anyhow!(e))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// One line on stderr (a JSON log record with `--log-format json`), non-zero exit.
fn fail(e: anyhow::Error, format: LogFormat) -> ExitCode {
    match format {
        LogFormat::Text => eprintln!("observer: error: {e:#}"),
        LogFormat::Json => tracing::error!("observer: error: {e:#}"),
    }
    ExitCode::FAILURE
}
