//! Which kernel hooks carry the targets' socket I/O, and what `auto` means on this machine.

use std::path::Path;

/// Where the kernel's BTF is.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

impl Hooks {
    /// What `auto` means on this machine.
    pub fn resolve(self) -> Hooks {
        match self {
            Hooks::Auto if has_socket_tracepoints() => Hooks::Sock,
            Hooks::Auto if Path::new(KERNEL_BTF).exists() => Hooks::Btf,
            Hooks::Auto => Hooks::Raw,
            hooks => hooks,
        }
    }

    /// Whether these hooks read x86-64 registers.
    pub(super) fn reads_x86_registers(self) -> bool {
        matches!(self, Hooks::Sock | Hooks::Btf | Hooks::Raw)
    }
}

impl std::fmt::Display for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let value = self.to_possible_value().expect("no hooks value is skipped");
        f.write_str(value.get_name())
    }
}

/// Whether the kernel's BTF has the socket I/O tracepoints (Linux ≥ 6.3).
fn has_socket_tracepoints() -> bool {
    let Ok(btf) = btf_rs::Btf::from_file_with_backend(KERNEL_BTF, btf_rs::Backend::Mmap) else {
        return false;
    };
    ["btf_trace_sock_recv_length", "btf_trace_sock_send_length"]
        .iter()
        .all(|name| btf.resolve_ids_by_name(name).is_ok_and(|ids| !ids.is_empty()))
}

/// How the kernel programs hook the targets' socket I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hooks {
    /// `sock` when the kernel's BTF has the socket tracepoints, else `btf` when the kernel
    /// has BTF, else `raw`.
    Auto,
    /// BTF tracepoints on socket I/O (`sock_recv_length`, `sock_send_length`) and TCP state
    /// changes: only socket I/O runs a program, no syscall tracepoint is enabled, the rest of
    /// the host pays nothing. Linux ≥ 6.3 with BTF; x86-64.
    Sock,
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
