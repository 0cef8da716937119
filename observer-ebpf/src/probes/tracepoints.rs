//! `--hooks tracepoints`: per-syscall `syscalls:sys_enter_*` / `sys_exit_*` tracepoints.
//! Entry programs remember the arguments of a call on a known socket of a target; the shared
//! exit program emits the record once the return value says how many bytes moved.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use observer_common::{Call, Kind, PendingCall, STATE_TLS, socket_key, stat};

use super::{Served, accepted, followed_socket, peeks, socket_io_inside};
use crate::{
    capture::Buffer,
    emit::{Record, advance, bump, emit_control, emit_data},
    maps::{PENDING, SOCKETS, TLS_CALLS},
    target::{current, is_target},
};

/// Offsets in the `syscalls:sys_enter_*` / `sys_exit_*` records (see their `format` files):
/// arguments are 8 bytes each from offset 16; the exit record holds the return value at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const ARG3: usize = 40;
const RET: usize = 16;

macro_rules! enter_program {
    ($name:ident, $syscall:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = remember_call(&ctx, $syscall);
            0
        }
    };
}

enter_program!(enter_read, Call::Read);
enter_program!(enter_readv, Call::Readv);
enter_program!(enter_recvfrom, Call::Recvfrom);
enter_program!(enter_recvmsg, Call::Recvmsg);
enter_program!(enter_write, Call::Write);
enter_program!(enter_writev, Call::Writev);
enter_program!(enter_sendto, Call::Sendto);
enter_program!(enter_sendmsg, Call::Sendmsg);
enter_program!(enter_sendfile, Call::Sendfile);

#[inline(always)]
fn remember_call(ctx: &TracePointContext, data: Call) -> Result<(), i64> {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return Ok(());
    }
    // SAFETY: offsets of the syscall tracepoint record, checked against its format file.
    let fd = unsafe { ctx.read_at::<u64>(ARG0) }? as i32;
    let state = followed_socket(tgid, fd);
    if let Some(call) = TLS_CALLS.get_ptr_mut(&id) {
        // Inside an OpenSSL call: ciphertext, which only ties the call to its socket.
        let served = state.map(|state| Served { state, conn: socket_key(tgid, fd), established_ns: 0 });
        // SAFETY: map values.
        unsafe { socket_io_inside(call, served) };
        return Ok(());
    }
    let Some(state) = state else {
        return Ok(());
    };
    // SAFETY: a state word in the socket table.
    if unsafe { *state } & STATE_TLS != 0 {
        return Ok(()); // ciphertext outside the calls (SSL_shutdown's close_notify)
    }
    // SAFETY: as above; arg 1 is the buffer / iovec / msghdr pointer, arg 2 the iovec count.
    let (buf, count) = unsafe { (ctx.read_at::<u64>(ARG1)?, ctx.read_at::<u64>(ARG2)?) };
    if data == Call::Recvfrom || data == Call::Recvmsg {
        // SAFETY: as above: the flags argument of either call.
        let arg3 = unsafe { ctx.read_at::<u64>(ARG3) }.unwrap_or(0);
        if peeks(data, count, arg3) {
            return Ok(());
        }
    }
    // SAFETY: a state word in the socket table.
    let (flags, cap) = unsafe { advance(state, data.direction()) };
    let call = PendingCall { buf, count, fd, call: data as u32, flags, head_cap: cap as u32 };
    if PENDING.insert(&id, &call, 0).is_err() {
        bump(stat::PENDING_FULL);
    }
    Ok(())
}

/// Shared by the exit tracepoints of every data syscall: the entry program said which one.
#[tracepoint]
pub fn exit_data(ctx: TracePointContext) -> u32 {
    let _ = finish_call(&ctx);
    0
}

#[inline(always)]
fn finish_call(ctx: &TracePointContext) -> Result<(), i64> {
    let (id, tgid) = current();
    // No TARGETS check: only targets have PENDING entries, and one lookup is cheaper than two.
    // SAFETY: copied out before the entry is removed.
    let call = match unsafe { PENDING.get(&id) } {
        Some(call) => *call,
        None => return Ok(()),
    };
    let _ = PENDING.remove(&id);
    // SAFETY: the exit record's return value.
    let ret = unsafe { ctx.read_at::<i64>(RET) }?;
    if ret <= 0 {
        return Ok(()); // EAGAIN, EOF and errors move no bytes
    }
    let Ok(data) = u8::try_from(call.call).map_err(|_| 0).and_then(Call::try_from) else {
        return Ok(());
    };
    let record = Record {
        call: data,
        fd: call.fd,
        flags: call.flags,
        ret,
        ..Record::of(Kind::Data, socket_key(tgid, call.fd), id, tgid)
    };
    let state = followed_socket(tgid, call.fd).unwrap_or(core::ptr::null_mut());
    emit_data(ctx, &record, Buffer::of(data, call.buf, call.count), u64::from(call.head_cap), state, false);
    Ok(())
}

/// accept / accept4 exit: a new connection socket of a target.
#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: the exit record's return value.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(RET) } {
        accepted(&ctx, id, tgid, ret);
    }
    0
}

/// close entry: forget the socket, tell userspace the connection ended. Taken at entry in
/// every syscall strategy: at exit the fd is already free, and another thread's accept may
/// have been given the same number, whose socket an exit-time close would then forget (seen:
/// 5 connections in 10,000 on a 2-thread tokio server).
#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: the entry record's first argument.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(ARG0) }) else {
        return 0;
    };
    let fd = fd as i32;
    let key = socket_key(tgid, fd);
    if SOCKETS.remove(&key).is_ok() {
        let record = Record { fd, ..Record::of(Kind::Close, key, id, tgid) };
        emit_control(&ctx, &record, core::ptr::null_mut());
    }
    0
}
