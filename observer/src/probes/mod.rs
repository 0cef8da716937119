//! Loading and attaching the kernel programs, and the maps userspace talks to them through.

mod attach;
mod bitmap;
mod error;
mod hooks;
pub mod layout;
mod tls;

use std::fs;

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
};
use observer_common::{
    ConnState, PORT_WORDS, TARGET_WORDS, TLS_KEY_BIT, TlsCall, TlsConn, WAKEUP_DIVISOR, port_bit, socket_key,
    stat, target_bit,
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use self::{
    attach::{
        SOCKET_HOOKS, attach_btf, attach_raw, attach_tracepoint, attach_tracepoints, ensure_tracefs,
        fork_child_pid_offset,
    },
    bitmap::Bitmap,
    tls::TlsAttach,
};
use crate::procfs;

use self::error::{permission, permission_or};
pub use self::{attach::Floor, error::ProbeError, hooks::Hooks};

/// The object built by build.rs from observer-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// The benchmark floor (observer-ebpf/src/floor.rs): same tracepoints, tgid filter only.
static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

/// How HTTPS through OpenSSL is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Not at all (`--no-tls`).
    Off,
    /// Uprobes on every SSL_read/SSL_write call (and the handshake).
    Calls,
    /// Uprobes on the handshake only: each session's keys are learned there and its records
    /// decrypted by the daemon (TLS 1.3, socket hooks).
    Keys,
}

/// Loaded, attached programs; dropping this detaches them.
pub struct Probes {
    ebpf: Ebpf,
    hooks: Hooks,
    targets: Bitmap,
    /// `--hooks sock`: the ports the targets listen on.
    ports: Bitmap,
    /// Syscall hooks: the targets' followed sockets.
    sockets: HashMap<MapData, u64, u32>,
    /// `--hooks sock`: the followed connections, by socket cookie (an LRU hash).
    conns: HashMap<MapData, u64, Conn>,
    /// OpenSSL sessions of the targets (`tls_key` → session).
    tls_conns: HashMap<MapData, u64, Session>,
    /// OpenSSL calls of the targets in progress (pid_tgid → call).
    tls_calls: HashMap<MapData, u64, Call>,
    /// `--tls keys`: where each process keeps its sessions' secrets (tgid → offsets).
    secrets_at: HashMap<MapData, u32, [u32; observer_common::SECRETS_AT_LEN]>,
    /// The OpenSSL copies hooked so far; `None` with `--no-tls`.
    tls: Option<TlsAttach>,
    /// Open sockets of new targets that did not fit in the socket table when learned.
    sockets_refused: u64,
}

/// A `TLS_CONNS` value, as aya reads it.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Session(TlsConn);

// SAFETY: a repr(C) struct of integers without padding (observer-common tests its size).
unsafe impl aya::Pod for Session {}

/// A `TLS_CALLS` value, as aya reads it.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Call(#[allow(dead_code)] TlsCall);

// SAFETY: as above.
unsafe impl aya::Pod for Call {}

/// A `CONNS` value, as aya reads it.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Conn(#[allow(dead_code)] ConnState);

// SAFETY: a repr(C) struct of integers without padding (observer-common tests its size).
unsafe impl aya::Pod for Conn {}

impl Probes {
    /// `follow_children`: targets' new child processes become targets (nginx master → workers).
    /// `ring_bytes`: ring buffer size (a power of two, at least a page).
    /// `watch_exec`: report every program start (for `--exe`).
    /// `max_sockets`: size of the kernel's table of followed sockets (connections).
    /// `tls`: how to see what the OpenSSL copies the targets use move (uprobes), if at all.
    /// `clients`: follow the connections the targets open (the socket hooks only).
    pub fn load_and_attach(
        hooks: Hooks,
        follow_children: bool,
        watch_exec: bool,
        ring_bytes: u32,
        max_sockets: u32,
        tls_mode: TlsMode,
        clients: bool,
    ) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::Stub);
        }
        let hooks = hooks.resolve();
        let tls = tls_mode != TlsMode::Off;
        let keys = tls_mode == TlsMode::Keys && hooks == Hooks::Sock;
        if tls_mode == TlsMode::Keys && !keys {
            info!(hooks = %hooks, "OpenSSL's calls are hooked: session keys (--tls keys, the default) need the socket hooks, which carry the ciphertext");
        }
        if hooks.reads_x86_registers() && !cfg!(target_arch = "x86_64") {
            return Err(ProbeError::Arch(hooks));
        }
        info!(hooks = %hooks, "hooking socket I/O");
        // Classic tracepoints (the syscall hooks' close, fork and exec) need tracefs.
        if hooks != Hooks::Sock || follow_children || watch_exec {
            ensure_tracefs()?;
        }
        let child_pid_offset = if follow_children { fork_child_pid_offset()? } else { 0 };
        let wakeup_bytes = u64::from(ring_bytes / WAKEUP_DIVISOR);
        let (pidns_dev, pidns_ino) = child_pid_namespace().unwrap_or((0, 0));
        if pidns_ino != 0 {
            info!("running in a child PID namespace: pids are those seen in it");
        }
        let btf = match hooks {
            Hooks::Sock | Hooks::Btf => Some(Btf::from_sys_fs().map_err(|e| ProbeError::Btf(hooks, e))?),
            _ => None,
        };
        let offsets = if hooks == Hooks::Sock { layout::socket_offsets()? } else { Vec::new() };
        let tick_ns = layout::tick_ns()?;
        // Each strategy's own tables get their size; the others' a single entry, so the
        // memory (charged to our cgroup) goes where it is used.
        let (sockets, conns) = if hooks == Hooks::Sock { (1, max_sockets) } else { (max_sockets, 1) };
        let pending = if hooks == Hooks::Tracepoints { 16_384 } else { 1 };
        // The socket hooks report an OpenSSL write at its first socket write; the syscall
        // hooks need its return.
        let write_returns = u64::from(hooks != Hooks::Sock);
        let keys_global = u64::from(keys);
        // The targets' own connections are followed from their connect: the socket hooks only.
        let clients_global = u64::from(clients && hooks == Hooks::Sock);
        let mut loader = aya::EbpfLoader::new();
        loader
            .override_global("PIDNS_DEV", &pidns_dev, true)
            .override_global("PIDNS_INO", &pidns_ino, true)
            .override_global("CHILD_PID_OFFSET", &child_pid_offset, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("TICK_NS", &tick_ns, true)
            .override_global("TLS_WRITE_RETURNS", &write_returns, true)
            .override_global("TLS_KEYS", &keys_global, true)
            .override_global("CLIENTS", &clients_global, true)
            .map_max_entries("EVENTS", ring_bytes)
            .map_max_entries("SOCKETS", sockets)
            .map_max_entries("CONNS", conns)
            .map_max_entries("PENDING", pending)
            .map_max_entries("TLS_CONNS", if tls { max_sockets } else { 1 })
            // HTTP/2 connections are walked frame by frame on the socket hooks and OpenSSL.
            .map_max_entries("FRAME_CURSORS", if hooks == Hooks::Sock || tls { max_sockets } else { 1 })
            .map_max_entries("TLS_CALLS", if tls { observer_common::MAX_TLS_CALLS } else { 1 });
        for (global, offset) in &offsets {
            loader.override_global(global, offset, true);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| permission_or(e, ProbeError::Load))?;
        start_kernel_logger(&mut ebpf);
        match hooks {
            Hooks::Auto => unreachable!("resolved above"),
            Hooks::Sock => {
                for (program, tracepoint) in SOCKET_HOOKS {
                    attach_btf(&mut ebpf, btf.as_ref().expect("read above"), program, tracepoint)?;
                }
            }
            Hooks::Tracepoints => attach_tracepoints(&mut ebpf)?,
            Hooks::Raw => {
                attach_raw(&mut ebpf, "raw_sys_exit")?;
                attach_tracepoint(&mut ebpf, "enter_close", "syscalls", "sys_enter_close")?;
            }
            Hooks::Btf => {
                attach_btf(&mut ebpf, btf.as_ref().expect("read above"), "btf_sys_exit", "sys_exit")?;
                attach_tracepoint(&mut ebpf, "enter_close", "syscalls", "sys_enter_close")?;
            }
        }
        if watch_exec {
            attach_tracepoint(&mut ebpf, "exec", "sched", "sched_process_exec")?;
        }
        if follow_children {
            attach_tracepoint(&mut ebpf, "fork", "sched", "sched_process_fork")?;
        }
        let targets = Bitmap::map(&mut ebpf, "TARGETS", TARGET_WORDS)?;
        let ports = Bitmap::map(&mut ebpf, "PORTS", PORT_WORDS)?;
        let sockets = take_map(&mut ebpf, "SOCKETS")?;
        let conns = take_map(&mut ebpf, "CONNS")?;
        let tls_conns = take_map(&mut ebpf, "TLS_CONNS")?;
        let tls_calls = take_map(&mut ebpf, "TLS_CALLS")?;
        let secrets_at = take_map(&mut ebpf, "TLS_SECRETS_AT")?;
        let tls = if tls { Some(TlsAttach::load(&mut ebpf, hooks != Hooks::Sock, keys)?) } else { None };
        Ok(Probes {
            ebpf,
            hooks,
            targets,
            ports,
            sockets,
            conns,
            tls_conns,
            tls_calls,
            secrets_at,
            tls,
            sockets_refused: 0,
        })
    }

    /// The hooks in use (`auto` resolved).
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// Starts following `tgid`, including the sockets it already has open and the OpenSSL
    /// it maps.
    pub fn add_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        if !self.targets.set(target_bit(tgid)) {
            return Err(ProbeError::PidOutOfRange(tgid));
        }
        self.learn_sockets(tgid);
        self.follow_tls(tgid);
        Ok(())
    }

    /// Hooks the OpenSSL copies `tgid` maps (for it: uprobes are per process). Failures are
    /// logged; the process is followed all the same.
    pub fn follow_tls(&mut self, tgid: u32) {
        let Some(tls) = &mut self.tls else { return };
        if let Some(at) = tls.follow(&mut self.ebpf, tgid) {
            self.set_secrets_at(tgid, at);
        }
    }

    /// `--tls keys`: from now on, handshakes of `tgid` hand over the secrets at these offsets
    /// (see the kernel's `TLS_SECRETS_AT`) instead of the session's memory.
    pub fn set_secrets_at(&mut self, tgid: u32, offsets: [u32; observer_common::SECRETS_AT_LEN]) {
        if let Err(e) = self.secrets_at.insert(tgid, offsets, 0) {
            warn!(pid = tgid, "cannot record where the process keeps TLS secrets: {e}");
        }
    }

    /// `--tls keys` gives up on `tgid` (`why`): its OpenSSL calls are hooked from now on and
    /// its handshakes hand over nothing.
    pub fn tls_fall_back(&mut self, tgid: u32, why: &str) {
        let Some(tls) = &mut self.tls else { return };
        if tls.fall_back(&mut self.ebpf, tgid, why) {
            self.set_secrets_at(tgid, observer_common::TLS_CALLS_ONLY);
        }
    }

    /// Processes put on per-call uprobes from the start (their libssl's calibration failed)
    /// since the last call.
    pub fn take_tls_calibration_fall_backs(&mut self) -> u64 {
        self.tls.as_mut().map_or(0, |tls| tls.take_calibration_fall_backs())
    }

    /// The OpenSSL files hooked so far.
    pub fn tls_libraries(&self) -> &[std::path::PathBuf] {
        self.tls.as_ref().map_or(&[], |tls| &tls.libraries)
    }

    /// A pid the fork hook made a target turned out to be a thread of a target: its syscalls
    /// are already followed under its process's tgid.
    pub fn forget_thread(&mut self, tid: u32) {
        self.targets.clear(target_bit(tid));
    }

    /// Learns what `tgid` has open now (inherited or opened before we attached): with the
    /// socket hooks the ports it listens on, with the syscall hooks its sockets.
    pub fn learn_sockets(&mut self, tgid: u32) {
        if self.hooks == Hooks::Sock {
            let ports = procfs::listening_ports(tgid);
            for &port in &ports {
                self.ports.set(port_bit(port));
            }
            if procfs::listens_on_unix(tgid) {
                warn!(
                    pid = tgid,
                    "the process listens on a unix-domain socket, which --hooks sock does not follow (--hooks btf does)"
                );
            }
            info!(pid = tgid, ?ports, "following process");
            return;
        }
        let mut learned = 0;
        for (fd, _) in procfs::socket_fds(tgid) {
            // Sockets accepted meanwhile were learned by the accept hook; inserting again is harmless.
            match self.sockets.insert(socket_key(tgid, fd), 0, 0) {
                Ok(()) => learned += 1,
                Err(_) => self.sockets_refused += 1, // the table is full
            }
        }
        info!(pid = tgid, sockets = learned, "following process");
    }

    /// A target's listener on `port` closed: the port stops being followed unless a target in
    /// `live` still listens on it (SO_REUSEPORT, another worker).
    pub fn listener_closed(&mut self, port: u16, live: &[u32]) {
        if !live.iter().any(|&pid| procfs::listening_ports(pid).contains(&port)) {
            self.ports.clear(port_bit(port));
        }
    }

    /// Whether the kernel still follows connection `conn` (`--hooks sock`: its socket has not
    /// closed; syscall hooks: the fd is still a followed socket).
    pub fn still_open(&self, conn: u64) -> bool {
        if conn & TLS_KEY_BIT != 0 {
            return self.tls_conns.get(&conn, 0).is_ok(); // an OpenSSL session not tied to a socket
        }
        match self.hooks {
            Hooks::Sock => self.conns.get(&conn, 0).is_ok(),
            _ => self.sockets.get(&conn, 0).is_ok(),
        }
    }

    /// Tgids the kernel treats as targets now: those userspace added and those the fork hook
    /// added on its own (children whose fork record may have been lost with a full ring).
    pub fn targets(&self) -> Vec<u32> {
        self.targets.all()
    }

    /// Stops following `tgid` (it exited) and forgets its sockets.
    pub fn remove_target(&mut self, tgid: u32) {
        self.targets.clear(target_bit(tgid));
        let _ = self.secrets_at.remove(&tgid);
        if let Some(tls) = &mut self.tls {
            tls.forget(&mut self.ebpf, tgid);
        }
        let sessions: Vec<u64> = self
            .tls_conns
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, Session(session))| session.tgid == tgid)
            .map(|(key, _)| key)
            .collect();
        for key in sessions {
            let _ = self.tls_conns.remove(&key);
        }
        // Calls its threads never returned from (killed inside them).
        let calls: Vec<u64> =
            self.tls_calls.keys().filter_map(Result::ok).filter(|id| (id >> 32) as u32 == tgid).collect();
        for id in calls {
            let _ = self.tls_calls.remove(&id);
        }
        if self.hooks == Hooks::Sock {
            return; // its connections end at their CLOSE transitions
        }
        let stale: Vec<u64> =
            self.sockets.keys().filter_map(Result::ok).filter(|k| (k >> 32) as u32 == tgid).collect();
        for key in stale {
            let _ = self.sockets.remove(&key);
        }
    }

    /// The ring buffer, registered with tokio for readiness.
    pub fn take_events(&mut self) -> Result<AsyncFd<RingBuf<MapData>>, ProbeError> {
        let ring: RingBuf<MapData> = take_map(&mut self.ebpf, "EVENTS")?;
        // SAFETY: the ring buffer owns its fd and moves into the AsyncFd, which deregisters it
        // before dropping it, so the registered fd stays open while registered.
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| ProbeError::Register(e.into_parts().1))
    }

    /// Sum over CPUs of one `STATS` counter.
    pub fn stat(&self, index: u32) -> u64 {
        let Some(map) = self.ebpf.map("STATS") else {
            return 0;
        };
        let Ok(stats) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        stats.get(&index, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }

    /// Runs the kernel skipped so far, by program, for those with any: a tracing program
    /// already running on a CPU is not run again there until it returns (the state program,
    /// run in process context, interrupted by the softirq of a packet that changes another
    /// socket's state). Read from the program's fdinfo (`recursion_misses`).
    pub fn program_misses(&self) -> Vec<(String, u64)> {
        use std::os::fd::{AsFd, AsRawFd};
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?.as_fd().as_raw_fd();
                let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                let misses =
                    info.lines().find_map(|l| l.strip_prefix("recursion_misses:"))?.trim().parse().ok()?;
                (misses > 0).then(|| (name.to_owned(), misses))
            })
            .collect()
    }

    /// What the kernel programs dropped so far.
    pub fn drops(&self) -> KernelDrops {
        KernelDrops {
            ring_full: self.stat(stat::RING_FULL),
            sockets_full: self.stat(stat::SOCKETS_FULL) + self.sockets_refused,
            pending_full: self.stat(stat::PENDING_FULL),
            tls_full: self.stat(stat::TLS_FULL),
            opens_unseen: self.stat(stat::OPENS_UNSEEN),
            frames_full: self.stat(stat::FRAMES_FULL),
            frames_unwalked: self.stat(stat::FRAMES_UNWALKED),
        }
    }
}

/// Running totals of what the kernel programs could not record.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelDrops {
    /// Events: the ring buffer was full.
    pub ring_full: u64,
    /// Accepted connections not followed: the socket table was full.
    pub sockets_full: u64,
    /// Syscalls not seen (`--hooks tracepoints`): the in-flight syscall table was full.
    pub pending_full: u64,
    /// OpenSSL calls or sessions not followed: their table was full.
    pub tls_full: u64,
    /// New connections whose open the state program did not record, found new at their
    /// first read (not a drop: their wait came from the socket).
    pub opens_unseen: u64,
    /// HTTP/2 connections not followed frame by frame: the cursor table was full.
    pub frames_full: u64,
    /// HTTP/2 calls whose frames could not be walked (that direction is given up).
    pub frames_unwalked: u64,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|e| ProbeError::Map(name, e))
}

/// Inode of the initial PID namespace (`PROC_PID_INIT_INO`), the same on every kernel.
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// (device, inode) of our PID namespace when it is not the initial one (a container with its
/// own PID namespace): the kernel programs then give pids as seen in it.
fn child_pid_namespace() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let ns = fs::metadata("/proc/self/ns/pid").ok()?;
    (ns.ino() != INITIAL_PID_NAMESPACE).then(|| (ns.dev(), ns.ino()))
}

/// aya-log records from the kernel programs go to this process's log.
fn start_kernel_logger(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            warn!("kernel-side logging unavailable: {e}");
            return;
        }
    };
    // SAFETY: the logger owns its fd and moves into the AsyncFd, which outlives the registration.
    let logger = match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
        Ok(logger) => logger,
        Err(e) => {
            warn!("kernel-side logging unavailable: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let mut logger = logger;
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    debug!("kernel-side logging started");
}
