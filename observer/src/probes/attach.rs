//! Attaching programs to their hooks: classic tracepoints (and tracefs), raw tracepoints,
//! BTF tracepoints; and the benchmark's floor.

use std::{fs, io, path::Path};

use aya::{
    Btf, Ebpf,
    maps::{Array, MapData},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};
use observer_common::target_bit;
use tracing::info;

use super::{FLOOR_OBJECT, Hooks, ProbeError, permission, permission_or, take_map};

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

/// `--hooks sock`: program name → BTF tracepoint.
pub const SOCKET_HOOKS: [(&str, &str); 4] = [
    ("sock_recv_length", "sock_recv_length"),
    ("sock_send_length", "sock_send_length"),
    ("inet_sock_set_state", "inet_sock_set_state"),
    ("tcp_destroy_sock", "tcp_destroy_sock"),
];

/// The benchmark floor: one do-nothing program on every tracepoint the observer uses.
pub struct Floor {
    _ebpf: Ebpf,
    _tls: Option<super::tls::TlsAttach>,
}

impl Floor {
    pub fn load_and_attach(pids: &[u32], hooks: Hooks) -> Result<Self, ProbeError> {
        if FLOOR_OBJECT.is_empty() {
            return Err(ProbeError::Stub);
        }
        let mut ebpf = Ebpf::load(FLOOR_OBJECT).map_err(|e| permission_or(e, ProbeError::Load))?;
        match hooks.resolve() {
            Hooks::Sock => {
                let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(Hooks::Sock, e))?;
                attach_btf(&mut ebpf, &btf, "floor_sock_recv", "sock_recv_length")?;
                attach_btf(&mut ebpf, &btf, "floor_sock_send", "sock_send_length")?;
            }
            Hooks::Tracepoints => {
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
            // The btf strategy's floor is the raw one: the same hook, attached the same way
            // (a tp_btf program runs exactly where a raw tracepoint program runs).
            Hooks::Btf | Hooks::Raw | Hooks::Auto => {
                ensure_tracefs()?;
                attach_raw(&mut ebpf, "floor_raw")?;
                attach_tracepoint(&mut ebpf, "floor", "syscalls", "sys_enter_close")?;
            }
        }
        // Set once, before anything else runs: plain map updates will do.
        let mut targets: Array<MapData, u64> = take_map(&mut ebpf, "TARGETS")?;
        for &pid in pids {
            let (word, bit) = target_bit(pid);
            let old = targets.get(&word, 0).map_err(|_| ProbeError::PidOutOfRange(pid))?;
            targets.set(word, old | bit, 0).map_err(|e| ProbeError::Map("TARGETS", e))?;
        }
        // The default hooks' floor has the OpenSSL uprobes too, as the observer has them.
        let tls = match hooks.resolve() {
            Hooks::Sock => {
                let mut tls = super::tls::TlsAttach::load_floor(&mut ebpf)?;
                for &pid in pids {
                    tls.follow(&mut ebpf, pid);
                }
                Some(tls)
            }
            _ => None,
        };
        Ok(Floor { _ebpf: ebpf, _tls: tls })
    }
}

pub fn attach_tracepoints(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
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
pub fn attach_tracepoint(
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

pub fn attach_btf(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program: &'static str,
    tracepoint: &'static str,
) -> Result<(), ProbeError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .expect("the tp_btf program is in the object")
        .try_into()
        .expect("a BTF tracepoint");
    let fail = |source| ProbeError::Program { program, tracepoint, source };
    prog.load(tracepoint, btf).map_err(fail).map_err(permission)?;
    prog.attach().map_err(fail).map_err(permission)?;
    Ok(())
}

pub fn attach_raw(ebpf: &mut Ebpf, program: &'static str) -> Result<(), ProbeError> {
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

/// Where `child_pid` sits in the sched_process_fork record on this kernel.
pub fn fork_child_pid_offset() -> Result<u32, ProbeError> {
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
pub fn ensure_tracefs() -> Result<(), ProbeError> {
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
