//! Why loading or attaching the kernel programs failed, and telling a missing privilege
//! from the rest.

use std::io;

use super::Hooks;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "not permitted to load eBPF programs ({0}): run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (for tracefs)"
    )]
    NotPermitted(String),
    #[error("--hooks {0} needs the kernel's BTF (/sys/kernel/btf/vmlinux): {1}")]
    Btf(Hooks, aya::BtfError),
    #[error("--hooks sock: {0}")]
    Layout(String),
    #[error("--hooks {0} reads x86-64 registers; on this architecture use --hooks tracepoints")]
    Arch(Hooks),
    #[error("tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {0}")]
    Tracefs(io::Error),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "tracepoint {category}:{tracepoint} does not exist on this kernel (no {category}/{tracepoint} under tracefs' events/; syscall tracepoints need CONFIG_FTRACE_SYSCALLS)"
    )]
    MissingTracepoint { category: String, tracepoint: &'static str },
    #[error("program {program} on {tracepoint}: {source}")]
    Program { program: &'static str, tracepoint: &'static str, source: aya::programs::ProgramError },
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("this binary was built without its eBPF programs (OBSERVER_STUB_EBPF=1)")]
    Stub,
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("mapping the {0} bitmap into memory: {1}")]
    MapBitmap(&'static str, io::Error),
    #[error("pid {0} is beyond the kernel's pid limit")]
    PidOutOfRange(u32),
    #[error("registering the ring buffer with tokio: {0}")]
    Register(#[source] io::Error),
}

/// Whether the kernel refused for want of privilege: EPERM or EACCES anywhere in the chain
/// of sources (aya keeps the syscall's io::Error as one).
fn is_permission(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        cause = err.source();
    }
    false
}

pub(super) fn permission(e: ProbeError) -> ProbeError {
    if is_permission(&e) { ProbeError::NotPermitted(e.to_string()) } else { e }
}

pub(super) fn permission_or(e: aya::EbpfError, wrap: fn(aya::EbpfError) -> ProbeError) -> ProbeError {
    permission(wrap(e))
}
