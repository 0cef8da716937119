//! `--hooks raw` / `--hooks btf`: one program at `sys_exit` for every syscall, reading the
//! arguments from the saved user registers, which the syscall leaves untouched. No entry
//! programs, no PENDING map; but it runs for every syscall of every process (and enabling it
//! puts every thread of the machine on the syscall slow path). close is taken at
//! `sys_enter_close` (see `tracepoints::enter_close`). x86-64 numbers and `struct pt_regs`.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use observer_common::{STATE_TLS, Syscall, socket_key};

use super::{
    followed_socket,
    tls::{Served, socket_io_inside},
    tracepoints::accepted,
};
use crate::{
    capture::Buffer,
    emit::{Record, advance, emit_data},
    maps::TLS_CALLS,
    target::{current, is_target},
};

/// x86-64 syscall numbers, shared with the socket hooks.
pub mod x86_64 {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
    /// `struct pt_regs` offsets of r10 (the 4th argument), rdx, rsi, rdi and orig_ax.
    pub const R10: usize = 56;
    pub const DX: usize = 96;
    pub const SI: usize = 104;
    pub const DI: usize = 112;
    pub const ORIG_AX: usize = 120;
}

pub const MSG_PEEK: u64 = 2;

/// Whether a receive only peeked (MSG_PEEK): its bytes are read again by the next call, so
/// they are not reported twice. nginx peeks at the first byte of every connection on a TLS
/// listener to tell TLS from plaintext. `recvfrom` takes its flags as argument 4, `recvmsg`
/// as argument 3.
#[inline(always)]
pub fn peeks(syscall: Syscall, arg3: u64, arg4: u64) -> bool {
    match syscall {
        Syscall::Recvfrom => arg4 & MSG_PEEK != 0,
        Syscall::Recvmsg => arg3 & MSG_PEEK != 0,
        _ => false,
    }
}

/// The data syscall an x86-64 syscall number names, if it is one.
#[inline(always)]
pub fn data_syscall(nr: u64) -> Option<Syscall> {
    Some(match nr {
        x86_64::READ => Syscall::Read,
        x86_64::READV => Syscall::Readv,
        x86_64::RECVFROM => Syscall::Recvfrom,
        x86_64::RECVMSG => Syscall::Recvmsg,
        x86_64::WRITE => Syscall::Write,
        x86_64::WRITEV => Syscall::Writev,
        x86_64::SENDTO => Syscall::Sendto,
        x86_64::SENDMSG => Syscall::Sendmsg,
        x86_64::SENDFILE => Syscall::Sendfile,
        _ => return None,
    })
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    // SAFETY: kernel reads of the saved registers through the helper; a fault returns 0.
    let reg = |offset: usize| unsafe { bpf_probe_read_kernel(regs.add(offset) as *const u64) }.unwrap_or(0);
    sys_exit(&ctx, ret, reg)
}

/// `--hooks btf`: the same hook as a BTF-typed tracepoint (tp_btf). The kernel knows the
/// argument is a `struct pt_regs *`, so the registers are plain loads (checked against the
/// struct's layout by the verifier, made fault-safe by the JIT) instead of helper calls.
#[btf_tracepoint(function = "sys_exit")]
pub fn btf_sys_exit(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    // SAFETY: a BTF-typed pointer to the task's saved registers; offsets within the struct.
    let reg = |offset: usize| unsafe { core::ptr::read_volatile(regs.add(offset) as *const u64) };
    sys_exit(&ctx, ret, reg)
}

/// Both sys_exit hooks: which syscall finished (from `orig_ax`), on which fd, with which
/// buffers, read through `reg(offset in struct pt_regs)`.
#[inline(always)]
fn sys_exit<C: EbpfContext>(ctx: &C, ret: i64, reg: impl Fn(usize) -> u64) -> i32 {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return 0;
    }
    let nr = reg(x86_64::ORIG_AX);
    let Some(syscall) = data_syscall(nr) else {
        if nr == x86_64::ACCEPT || nr == x86_64::ACCEPT4 {
            accepted(ctx, id, tgid, ret);
        }
        return 0;
    };
    if ret <= 0 || peeks(syscall, reg(x86_64::DX), reg(x86_64::R10)) {
        return 0; // EAGAIN, EOF and errors move no bytes: no socket lookup for them
    }
    let fd = reg(x86_64::DI) as i32;
    let state = followed_socket(tgid, fd);
    if let Some(call) = TLS_CALLS.get_ptr_mut(&id) {
        // Inside an OpenSSL call: ciphertext, which only ties the call to its socket.
        let served = state.map(|state| Served { state, conn: socket_key(tgid, fd), established_ns: 0 });
        // SAFETY: map values.
        unsafe { socket_io_inside(call, served) };
        return 0;
    }
    let Some(state) = state else {
        return 0;
    };
    // SAFETY: a state word in the socket table.
    if unsafe { *state } & STATE_TLS != 0 {
        return 0; // ciphertext outside the calls (SSL_shutdown's close_notify)
    }
    // SAFETY: a state word in the socket table.
    let (flags, cap) = unsafe { advance(state, syscall.direction()) };
    let record = Record { conn: socket_key(tgid, fd), id, tgid, fd, syscall, flags, ret, wait_us: 0 };
    emit_data(ctx, &record, Buffer::of(syscall, reg(x86_64::SI), reg(x86_64::DX)), cap, state, false);
    0
}
