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
use observer_common::{Kind, STATE_TLS, socket_key};

use super::{Served, accepted, data_call, followed_socket, peeks, socket_io_inside, x86_64};
use crate::{
    capture::Buffer,
    emit::{Record, advance, emit_data},
    maps::TLS_CALLS,
    target::{current, is_target},
};

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
    let Some(call) = data_call(nr) else {
        if nr == x86_64::ACCEPT || nr == x86_64::ACCEPT4 {
            accepted(ctx, id, tgid, ret);
        }
        return 0;
    };
    if ret <= 0 || peeks(call, reg(x86_64::DX), reg(x86_64::R10)) {
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
    let (flags, cap) = unsafe { advance(state, call.direction()) };
    let record = Record { call, fd, flags, ret, ..Record::of(Kind::Data, socket_key(tgid, fd), id, tgid) };
    emit_data(ctx, &record, Buffer::of(call, reg(x86_64::SI), reg(x86_64::DX)), cap, state, false);
    0
}
