//! Loading and attaching the kernel programs, and the maps userspace talks to them through.

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Btf, Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};
use observer_common::{TARGET_WORDS, socket_key, stat, target_bit};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

/// The object built by build.rs from observer-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// The benchmark floor (observer-ebpf/src/floor.rs): same tracepoints, tgid filter only.
static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

/// Program name → the `syscalls` tracepoints it is attached to.
const ATTACHMENTS: &[(&str, &[&str])] = &[
    ("enter_read", &["sys_enter_read"]),
    ("enter_readv", &["sys_enter_readv"]),
    ("enter_recvfrom", &["sys_enter_recvfrom"]),
    ("enter_recvmsg", &["sys_enter_recvmsg"]),
    ("enter_write", &["sys_enter_write"]),
    ("enter_writev", &["sys_enter_writev"]),
    ("enter_sendto", &["sys_enter_sendto"]),
    ("enter_sendmsg", &["sys_enter_sendmsg"]),
    ("enter_sendfile", &["sys_enter_sendfile64"]),
    (
        "exit_data",
        &[
            "sys_exit_read",
            "sys_exit_readv",
            "sys_exit_recvfrom",
            "sys_exit_recvmsg",
            "sys_exit_write",
            "sys_exit_writev",
            "sys_exit_sendto",
            "sys_exit_sendmsg",
            "sys_exit_sendfile64",
        ],
    ),
    ("exit_accept", &["sys_exit_accept", "sys_exit_accept4"]),
    ("enter_close", &["sys_enter_close"]),
];

impl Hooks {
    /// What `auto` means on this machine.
    pub fn resolve(self) -> Hooks {
        match self {
            Hooks::Auto if Path::new("/sys/kernel/btf/vmlinux").exists() => Hooks::Btf,
            Hooks::Auto => Hooks::Raw,
            hooks => hooks,
        }
    }
}

/// How the kernel programs hook the syscalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hooks {
    /// `btf` when the kernel has BTF, else `raw`.
    Auto,
    /// `syscalls:sys_enter_*`/`sys_exit_*` tracepoints on the hooked syscalls only (needs
    /// tracefs); an entry and an exit program per call.
    Tracepoints,
    /// One raw tracepoint at `sys_exit`, for every syscall; arguments from the saved registers
    /// (x86-64). close is still taken at `sys_enter_close` (see the eBPF crate for why).
    Raw,
    /// As `raw`, as a BTF-typed tracepoint (tp_btf): registers read with plain loads instead
    /// of helper calls. Needs kernel BTF (/sys/kernel/btf/vmlinux).
    Btf,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "not permitted to load eBPF programs ({0}): run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (for tracefs)"
    )]
    NotPermitted(String),
    #[error("--hooks btf needs the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(aya::BtfError),
    #[error("tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {0}")]
    Tracefs(io::Error),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "tracepoint {category}:{tracepoint} does not exist on this kernel (no {category}/{tracepoint} under tracefs' events/; syscall tracepoints need CONFIG_FTRACE_SYSCALLS)"
    )]
    MissingTracepoint { category: String, tracepoint: &'static str },
    #[error("program {program} on syscalls:{tracepoint}: {source}")]
    Program { program: &'static str, tracepoint: &'static str, source: aya::programs::ProgramError },
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("this binary was built without its eBPF programs (OBSERVER_STUB_EBPF=1)")]
    Stub,
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("mapping the TARGETS bitmap into memory: {0}")]
    MapTargets(io::Error),
    #[error("pid {0} is beyond the kernel's pid limit")]
    PidOutOfRange(u32),
    #[error("registering the ring buffer with tokio: {0}")]
    Register(io::Error),
}

/// Loaded, attached programs; dropping this detaches them.
pub struct Probes {
    ebpf: Ebpf,
    targets: TargetBits,
    sockets: HashMap<MapData, u64, u32>,
    /// Open sockets of new targets that did not fit in the socket table when learned.
    sockets_refused: u64,
}

/// The kernel's `TARGETS` bitmap (one bit per tgid), mapped into this process. Bits are set
/// and cleared with atomic operations, as the kernel's fork hook sets them, so neither side
/// can lose a bit the other wrote.
struct TargetBits {
    words: NonNull<AtomicU64>,
    /// Keeps the map alive while it is mapped.
    _map: MapData,
}

const TARGET_BYTES: usize = TARGET_WORDS as usize * size_of::<u64>();

impl TargetBits {
    fn map(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let Some(Map::Array(map)) = ebpf.take_map("TARGETS") else {
            return Err(ProbeError::MissingMap("TARGETS"));
        };
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the array's values (a BPF_F_MMAPABLE array of
        // TARGET_WORDS u64s); unmapped in Drop, before the map's fd closes.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                TARGET_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(ProbeError::MapTargets(io::Error::last_os_error()));
        }
        let words = NonNull::new(at.cast::<AtomicU64>()).ok_or(ProbeError::MissingMap("TARGETS"))?;
        Ok(TargetBits { words, _map: map })
    }

    fn word(&self, tgid: u32) -> Result<(&AtomicU64, u64), ProbeError> {
        let (word, bit) = target_bit(tgid);
        if word >= TARGET_WORDS {
            return Err(ProbeError::PidOutOfRange(tgid));
        }
        // SAFETY: in bounds (checked above) of the live mapping; u64s are 8-byte aligned.
        Ok((unsafe { &*self.words.as_ptr().add(word as usize) }, bit))
    }

    fn set(&self, tgid: u32) -> Result<(), ProbeError> {
        let (word, bit) = self.word(tgid)?;
        word.fetch_or(bit, Ordering::Relaxed);
        Ok(())
    }

    fn clear(&self, tgid: u32) {
        if let Ok((word, bit)) = self.word(tgid) {
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Every tgid whose bit is set.
    fn all(&self) -> Vec<u32> {
        // SAFETY: the whole live mapping, TARGET_WORDS u64s.
        let words = unsafe { std::slice::from_raw_parts(self.words.as_ptr(), TARGET_WORDS as usize) };
        words
            .iter()
            .enumerate()
            .flat_map(|(index, word)| pids_in_word(index as u32, word.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The tgids a bitmap word at `index` holds.
fn pids_in_word(index: u32, mut word: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let bit = word.trailing_zeros();
        word &= word - 1;
        Some(index * 64 + bit)
    })
}

impl Drop for TargetBits {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, not used after this.
        unsafe { libc::munmap(self.words.as_ptr().cast(), TARGET_BYTES) };
    }
}

impl Probes {
    /// `follow_children`: targets' new child processes become targets (nginx master → workers).
    /// `ring_bytes`: ring buffer size (a power of two, at least a page).
    /// `watch_exec`: report every program start (for `--exe`).
    /// `max_sockets`: size of the kernel's table of followed sockets.
    pub fn load_and_attach(
        hooks: Hooks,
        follow_children: bool,
        watch_exec: bool,
        ring_bytes: u32,
        max_sockets: u32,
    ) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::Stub);
        }
        // Both strategies take close at its entry, through the syscalls tracepoint.
        ensure_tracefs()?;
        let child_pid_offset = if follow_children { fork_child_pid_offset()? } else { 0 };
        let wakeup_bytes = u64::from(ring_bytes / 16);
        let (pidns_dev, pidns_ino) = child_pid_namespace().unwrap_or((0, 0));
        if pidns_ino != 0 {
            info!("running in a child PID namespace: pids are those seen in it");
        }
        let mut ebpf = aya::EbpfLoader::new()
            .override_global("PIDNS_DEV", &pidns_dev, true)
            .override_global("PIDNS_INO", &pidns_ino, true)
            .override_global("CHILD_PID_OFFSET", &child_pid_offset, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .map_max_entries("EVENTS", ring_bytes)
            .map_max_entries("SOCKETS", max_sockets)
            .load(OBJECT)
            .map_err(|e| permission_or(e, ProbeError::Load))?;
        start_kernel_logger(&mut ebpf);
        let hooks = hooks.resolve();
        debug!(?hooks, "hooking the syscalls");
        match hooks {
            Hooks::Auto => unreachable!("resolved above"),
            Hooks::Tracepoints => attach_tracepoints(&mut ebpf)?,
            Hooks::Raw => {
                attach_raw(&mut ebpf, "raw_sys_exit")?;
                attach_tracepoint(&mut ebpf, "enter_close", "syscalls", "sys_enter_close")?;
            }
            Hooks::Btf => {
                attach_btf(&mut ebpf, "btf_sys_exit")?;
                attach_tracepoint(&mut ebpf, "enter_close", "syscalls", "sys_enter_close")?;
            }
        }
        if watch_exec {
            attach_tracepoint(&mut ebpf, "exec", "sched", "sched_process_exec")?;
        }
        if follow_children {
            attach_tracepoint(&mut ebpf, "fork", "sched", "sched_process_fork")?;
        }
        let targets = TargetBits::map(&mut ebpf)?;
        let sockets = take_map(&mut ebpf, "SOCKETS")?;
        Ok(Probes { ebpf, targets, sockets, sockets_refused: 0 })
    }

    /// Starts following `tgid`, including the sockets it already has open.
    pub fn add_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.targets.set(tgid)?;
        self.learn_sockets(tgid);
        Ok(())
    }

    /// A pid the fork hook made a target turned out to be a thread of a target: its syscalls
    /// are already followed under its process's tgid.
    pub fn forget_thread(&mut self, tid: u32) {
        self.targets.clear(tid);
    }

    /// Learns the sockets `tgid` has open now (inherited or accepted before we attached).
    pub fn learn_sockets(&mut self, tgid: u32) {
        let mut learned = 0;
        for fd in socket_fds(tgid) {
            // Sockets accepted meanwhile were learned by the accept hook; inserting again is harmless.
            match self.sockets.insert(socket_key(tgid, fd), 0, 0) {
                Ok(()) => learned += 1,
                Err(_) => self.sockets_refused += 1, // the table is full
            }
        }
        info!(pid = tgid, sockets = learned, "following process");
    }

    /// Tgids the kernel treats as targets now: those userspace added and those the fork hook
    /// added on its own (children whose fork record may have been lost with a full ring).
    pub fn targets(&self) -> Vec<u32> {
        self.targets.all()
    }

    /// Stops following `tgid` (it exited) and forgets its sockets.
    pub fn remove_target(&mut self, tgid: u32) {
        self.targets.clear(tgid);
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
            .map_err(|e| ProbeError::Register(io::Error::other(e.to_string())))
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

    /// What the kernel programs dropped so far.
    pub fn drops(&self) -> KernelDrops {
        KernelDrops {
            ring_full: self.stat(stat::RING_FULL),
            sockets_full: self.stat(stat::SOCKETS_FULL) + self.sockets_refused,
            pending_full: self.stat(stat::PENDING_FULL),
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
}

/// The benchmark floor: one do-nothing program on every tracepoint the observer uses.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    pub fn load_and_attach(pids: &[u32], hooks: Hooks) -> Result<Self, ProbeError> {
        if FLOOR_OBJECT.is_empty() {
            return Err(ProbeError::Stub);
        }
        let mut ebpf = Ebpf::load(FLOOR_OBJECT).map_err(|e| permission_or(e, ProbeError::Load))?;
        // The btf strategy's floor is the raw one: the same hook, attached the same way
        // (a tp_btf program runs exactly where a raw tracepoint program runs).
        if hooks.resolve() != Hooks::Tracepoints {
            ensure_tracefs()?;
            attach_raw(&mut ebpf, "floor_raw")?;
            attach_tracepoint(&mut ebpf, "floor", "syscalls", "sys_enter_close")?;
        } else {
            ensure_tracefs()?;
            let prog: &mut TracePoint =
                ebpf.program_mut("floor").expect("the floor program").try_into().expect("a tracepoint");
            let fail = |tracepoint: &'static str| {
                move |source| ProbeError::Program { program: "floor", tracepoint, source }
            };
            prog.load().map_err(fail("load")).map_err(permission)?;
            for &(_, tracepoints) in ATTACHMENTS {
                for &tracepoint in tracepoints {
                    prog.attach("syscalls", tracepoint).map_err(fail(tracepoint)).map_err(permission)?;
                }
            }
        }
        // Set once, before anything else runs: plain map updates will do.
        let mut targets: Array<MapData, u64> = take_map(&mut ebpf, "TARGETS")?;
        for &pid in pids {
            let (word, bit) = target_bit(pid);
            let old = targets.get(&word, 0).map_err(|_| ProbeError::PidOutOfRange(pid))?;
            targets.set(word, old | bit, 0).map_err(|e| ProbeError::Map("TARGETS", e))?;
        }
        Ok(Floor { _ebpf: ebpf })
    }
}

fn attach_tracepoints(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for &(program, tracepoints) in ATTACHMENTS {
        let prog: &mut TracePoint = ebpf
            .program_mut(program)
            .expect("every ATTACHMENTS program is in the object")
            .try_into()
            .expect("every program is a tracepoint");
        let fail =
            |tracepoint: &'static str| move |source| ProbeError::Program { program, tracepoint, source };
        prog.load().map_err(fail(tracepoints[0])).map_err(permission)?;
        for &tracepoint in tracepoints {
            require_tracepoint("syscalls", tracepoint)?;
            prog.attach("syscalls", tracepoint).map_err(fail(tracepoint)).map_err(permission)?;
        }
    }
    Ok(())
}

/// Loads `program` and attaches it to the classic tracepoint `category:tracepoint`.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    tracepoint: &'static str,
) -> Result<(), ProbeError> {
    let prog: &mut TracePoint =
        ebpf.program_mut(program).expect("the program is in the object").try_into().expect("a tracepoint");
    let fail = |source| ProbeError::Program { program, tracepoint, source };
    require_tracepoint(category, tracepoint)?;
    prog.load().map_err(fail).map_err(permission)?;
    prog.attach(category, tracepoint).map_err(fail).map_err(permission)?;
    Ok(())
}

fn attach_btf(ebpf: &mut Ebpf, program: &'static str) -> Result<(), ProbeError> {
    let btf = Btf::from_sys_fs().map_err(ProbeError::Btf)?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .expect("the tp_btf program is in the object")
        .try_into()
        .expect("a BTF tracepoint");
    let fail = |source| ProbeError::Program { program, tracepoint: "sys_exit (tp_btf)", source };
    prog.load("sys_exit", &btf).map_err(fail).map_err(permission)?;
    prog.attach().map_err(fail).map_err(permission)?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, program: &'static str) -> Result<(), ProbeError> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .expect("the raw program is in the object")
        .try_into()
        .expect("a raw tracepoint");
    let fail = |source| ProbeError::Program { program, tracepoint: "sys_exit (raw)", source };
    prog.load().map_err(fail).map_err(permission)?;
    prog.attach("sys_exit").map_err(fail).map_err(permission)?;
    Ok(())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|e| ProbeError::Map(name, e))
}

/// Socket fds of `tgid` now, from /proc/PID/fd (`socket:[inode]` links).
fn socket_fds(tgid: u32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{tgid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|entry| fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
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

/// Where `child_pid` sits in the sched_process_fork record on this kernel.
fn fork_child_pid_offset() -> Result<u32, ProbeError> {
    require_tracepoint("sched", "sched_process_fork")?;
    let format = TRACEFS_ROOTS
        .iter()
        .find_map(|root| fs::read_to_string(format!("{root}/events/sched/sched_process_fork/format")).ok())
        .ok_or_else(|| ProbeError::Tracefs(io::Error::other("no sched_process_fork format file")))?;
    format
        .lines()
        .find(|l| l.contains(" child_pid;"))
        .and_then(|l| l.split("offset:").nth(1)?.split(';').next()?.trim().parse().ok())
        .ok_or_else(|| ProbeError::Tracefs(io::Error::other("no child_pid field in sched_process_fork")))
}

/// A tracepoint the kernel lacks (a config option off, a rename) is named as such rather than
/// as the file aya failed to open.
fn require_tracepoint(category: &str, tracepoint: &'static str) -> Result<(), ProbeError> {
    let exists = TRACEFS_ROOTS
        .iter()
        .any(|root| Path::new(root).join("events").join(category).join(tracepoint).join("id").exists());
    if exists {
        Ok(())
    } else {
        Err(ProbeError::MissingTracepoint { category: category.to_owned(), tracepoint })
    }
}

/// Where tracefs is looked for, as aya does.
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Classic tracepoints need tracefs; it is not mounted at boot everywhere.
fn ensure_tracefs() -> Result<(), ProbeError> {
    let mounted = |dir: &str| Path::new(dir).join("events/syscalls").is_dir();
    if TRACEFS_ROOTS.iter().any(|root| mounted(root)) {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc =
        unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(ProbeError::Tracefs(io::Error::last_os_error()));
    }
    info!("mounted tracefs on /sys/kernel/tracing");
    Ok(())
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

fn is_permission(text: &str) -> bool {
    text.contains("Operation not permitted") || text.contains("Permission denied") || text.contains("EPERM")
}

fn permission(e: ProbeError) -> ProbeError {
    let text = format!("{e}: {:?}", e);
    if is_permission(&text) { ProbeError::NotPermitted(e.to_string()) } else { e }
}

fn permission_or(e: aya::EbpfError, wrap: fn(aya::EbpfError) -> ProbeError) -> ProbeError {
    permission(wrap(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_word_gives_back_the_pids_set_in_it() {
        for pid in [1u32, 63, 64, 4_194_303] {
            let (word, bit) = target_bit(pid);
            assert_eq!(pids_in_word(word, bit).collect::<Vec<_>>(), vec![pid]);
        }
        assert_eq!(pids_in_word(2, 0b1010_0001).collect::<Vec<_>>(), vec![128, 133, 135]);
        assert_eq!(pids_in_word(7, 0).count(), 0);
    }
}
