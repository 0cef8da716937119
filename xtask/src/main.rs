//! Project chores that a build script should not do: `setup` (toolchain, bpf-linker, Debian
//! packages) and `test` (the whole suite, privileged integration tests included).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};

mod bench;
mod soak;

/// The pinned toolchain; keep in step with rust-toolchain.toml.
const TOOLCHAIN: &str = "1.95.0";
/// bpf-linker release built against the toolchain's own libLLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz, for the fuzz targets in fuzz/ (built with the nightly toolchain).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const FUZZ_TARGETS: [&str; 7] =
    ["http_conn", "route", "hpack", "h2_frames", "h2_conn", "tls_records", "events"];
/// Seconds per fuzz target in `cargo xtask test` (a smoke run; `cargo xtask fuzz` goes longer).
const FUZZ_SMOKE_SECONDS: u64 = 15;

/// Debian packages the integration tests drive: (command, or absolute path of a file, that
/// proves it is there; package).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("setpriv", "util-linux"),
    ("nginx", "nginx"),
    ("node", "nodejs"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    // gRPC servers and clients (generic handlers: no protoc needed).
    ("/usr/lib/python3/dist-packages/grpc/__init__.py", "python3-grpcio"),
    // Loss on a link between the transfer test's own namespaces (no netem in this kernel).
    ("nft", "nftables"),
    // Apache httpd's binary and modules, without the service (nothing starts on port 80):
    // mod_http2 is the test server that speaks h2c after an HTTP/1.1 `Upgrade`.
    ("/usr/lib/apache2/modules/mod_http2.so", "apache2-bin"),
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("python3", "python3"),
    ("bpftool", "bpftool"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("ss", "iproute2"),
    ("ip", "iproute2"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("tmux", "tmux"),
    ("systemd-analyze", "systemd"),
];

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: rust-src, bpf-linker, Debian packages. Idempotent.
    Setup {
        /// Only what building needs (rust-src, bpf-linker): no test packages, no cargo-fuzz
        /// (deploy/Dockerfile).
        #[arg(long)]
        build_only: bool,
    },
    /// Set up, build, and run the observer: `observer demo` when no `--pid` is given,
    /// else `observer run` with the given arguments.
    Run {
        /// Arguments for the observer, e.g. `--pid 1234 --listen 127.0.0.1:9464`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build release, and measure the observer's overhead (see docs/benchmarks.md).
    Bench {
        /// Interleaved repetitions of every arm.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Seconds of load per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Only the HTTPS workloads (keep-alive, a handshake per request, the neighbour), into
        /// target/bench/https.md: for iterating on TLS; the full run is the record.
        #[arg(long)]
        https_only: bool,
    },
    /// Set up, build release, and run the observer for N minutes on churning real servers
    /// (nginx restarted every minute, HTTPS, resets, a forking python server): a row a
    /// minute in target/soak/soak.md; fails if a count is off or anything grows.
    Soak {
        #[arg(long, default_value_t = 30)]
        minutes: u64,
    },
    /// Run the cargo-fuzz targets (fuzz/) for N seconds each, from the committed corpus.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Set up, then run every test: unit tests, the privileged integration tests, and a short
    /// run of each fuzz target.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup { build_only: true } => setup_build(),
        Task::Setup { build_only: false } => setup(),
        Task::Run { args } => {
            setup()?;
            run_observer(&args)
        }
        Task::Test { args } => {
            setup()?;
            test(&args)?;
            fuzz(FUZZ_SMOKE_SECONDS)
        }
        Task::Fuzz { seconds } => {
            setup()?;
            fuzz(seconds)
        }
        Task::Soak { minutes } => {
            release_as_root("the soak", &["observer"])?;
            let root = workspace_root();
            with_path(|| soak::soak(&root.join("target/release/observer"), minutes, &soak::out_dir(&root)))?
        }
        Task::Bench { reps, seconds, https_only } => {
            release_as_root("the benchmark", &["observer", "boot-server"])?;
            let root = workspace_root();
            let opts = bench::Options {
                reps,
                seconds,
                observer: root.join("target/release/observer"),
                boot_server: root.join("target/release/boot-server"),
                out: root.join("target/bench"),
            };
            if https_only {
                return with_path(|| bench::bench_https(&opts))?;
            }
            with_path(|| bench::bench(&opts))?
        }
    }
}

/// Sets up and builds `packages` in release for `task`, which loads eBPF programs.
fn release_as_root(task: &str, packages: &[&str]) -> anyhow::Result<()> {
    setup()?;
    ensure!(is_root(), "{task} loads eBPF programs: run it as root");
    let mut cargo = Command::new("cargo");
    cargo.env("PATH", path_with_cargo_bin()?).args(["build", "--release", "--quiet"]);
    for package in packages {
        cargo.args(["--package", package]);
    }
    run(&mut cargo)
}

fn setup() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    setup_build()?;
    ensure_debian_packages()?;
    ensure_cargo_fuzz()?;
    eprintln!("xtask: setup done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What building the observer needs.
fn setup_build() -> anyhow::Result<()> {
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN]))
        .context("installing rust-src for the pinned toolchain")?;
    ensure_bpf_linker()
}

/// bpf-linker must link against the same LLVM as the rustc that compiles the eBPF crate:
/// build it against that toolchain's own libLLVM, with an rpath so it runs without rustup's
/// LD_LIBRARY_PATH.
fn ensure_bpf_linker() -> anyhow::Result<()> {
    let sysroot = output(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let version = output(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV names no LLVM version")?
        .to_owned();
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major} {}", libllvm.display());
    let stamp_file = cargo_home().join("bin/.bpf-linker-observer");
    let installed = Command::new("bpf-linker").arg("--version").env_remove("LD_LIBRARY_PATH").output();
    if installed.is_ok_and(|o| o.status.success())
        && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp)
    {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (llvm-{llvm_major})",
        libllvm.display()
    );
    let prefix = workspace_root().join("target/xtask/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    run(Command::new("cargo")
        .args(["install", "--locked", "--force", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{llvm_major}")])
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", lib.display())))
    .context("building bpf-linker")?;
    std::fs::write(&stamp_file, stamp)?;
    Ok(())
}

/// cargo-fuzz and the nightly toolchain it builds with (libFuzzer needs `-Z sanitizer`).
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let installed = Command::new(cargo_home().join("bin/cargo-fuzz")).arg("--version").output();
    if installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)) {
        return Ok(());
    }
    run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION]))
}

/// Each fuzz target for `seconds`, seeded from fuzz/corpus/<target>; new inputs go to
/// target/fuzz-corpus/<target> (promote interesting ones to fuzz/corpus by hand).
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    let root = workspace_root();
    for target in FUZZ_TARGETS {
        let scratch = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let started = std::time::Instant::now();
        let out = Command::new("cargo")
            .current_dir(&root)
            .env("PATH", path_with_cargo_bin()?)
            // The fuzz targets never load programs: skip the eBPF build.
            .env("OBSERVER_STUB_EBPF", "1")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let done = log.lines().rev().find(|l| l.starts_with("Done ")).unwrap_or("(no summary)");
        eprintln!("fuzz {target}: {done} ({:.0}s with the build)", started.elapsed().as_secs_f64());
        ensure!(out.status.success(), "fuzz target {target} failed:\n{}", tail(&log, 60));
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A command on PATH, or a file that exists (an absolute path).
fn present(proof: &str) -> bool {
    if proof.starts_with('/') { std::path::Path::new(proof).exists() } else { on_path(proof) }
}

fn ensure_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> =
        DEBIAN_PACKAGES.iter().filter(|(proof, _)| !present(proof)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    ensure!(is_root(), "Debian packages {missing:?} are missing and installing them needs root");
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn run_observer(args: &[String]) -> anyhow::Result<()> {
    let subcommand =
        if args.iter().any(|a| a == "--pid" || a.starts_with("--pid=")) { "run" } else { "demo" };
    run(Command::new("cargo")
        .env("PATH", path_with_cargo_bin()?)
        .args(["run", "--release", "--quiet", "--package", "observer", "--", subcommand])
        .args(args))
}

fn test(args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the integration tests load eBPF programs: run `cargo xtask test` as root");
    }
    // The default members: everything but the eBPF crate, which only builds for BPF.
    // One test at a time: each starts real servers and an observer on a 2-core machine.
    run(Command::new("cargo")
        .env("PATH", path_with_cargo_bin()?)
        .args(["test", "--"])
        .args(args)
        .arg("--test-threads=1"))?;
    // HTTPS is seen from session keys by default; the HTTPS tests pass with per-call uprobes
    // forced too (the fall back, and `--tls calls`).
    if args.is_empty() {
        run(Command::new("cargo").env("PATH", path_with_cargo_bin()?).env("OBSERVER_TLS", "calls").args([
            "test",
            "--package",
            "observer",
            "--test",
            "tls",
            "--test",
            "http2",
            "--",
            "--test-threads=1",
        ]))?;
    }
    Ok(())
}

/// Runs `f` with PATH extended as for the tests (nginx in /usr/sbin).
fn with_path<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let path = path_with_cargo_bin()?;
    // SAFETY: xtask is single-threaded here; the variable is read by the children it starts.
    unsafe { env::set_var("PATH", path) };
    Ok(f())
}

/// PATH with cargo's bin directory first (bpf-linker is installed there) and the sbin
/// directories last: a CI shell may have neither.
fn path_with_cargo_bin() -> anyhow::Result<std::ffi::OsString> {
    let mut paths = vec![cargo_home().join("bin")];
    paths.extend(env::var_os("PATH").map(|p| env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default());
    // Debian's nginx lives in /usr/sbin.
    paths.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
    Ok(env::join_paths(paths)?)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

fn on_path(cmd: &str) -> bool {
    // Debian puts nginx in /usr/sbin, which a non-login root shell may not have on PATH.
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .chain(&extra)
        .any(|dir| dir.join(cmd).is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)) == Some("0")
    })
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}
