//! Syscall tracepoints on the socket read/write family of the target processes.
//!
//! Entry programs remember the arguments of a syscall on a known socket of a target; the
//! shared exit program copies the first bytes of the buffer into a ring-buffer event once the
//! return value says how many bytes moved. Every program filters on the target tgid first,
//! before any other work.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    Event, FLAG_LOST_BEFORE, HEAD_LEN, PendingCall, RING_BYTES, Syscall, socket_key, stat,
};

/// Target tgids (value unused). Filled by userspace.
#[map]
static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// Known sockets of targets, `socket_key(tgid, fd)` → `FLAG_*` bits. Learned from accept and,
/// at attach time, from /proc/PID/fd; forgotten at close.
#[map]
static SOCKETS: HashMap<u64, u32> = HashMap::with_max_entries(65536, 0);

/// Arguments of syscalls in progress, keyed by pid_tgid (one syscall per thread at a time).
#[map]
static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-CPU counters, indexed by `observer_common::stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Offsets in the `syscalls:sys_enter_*` / `sys_exit_*` records (see their `format` files):
/// arguments are 8 bytes each from offset 16; the exit record holds the return value at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;
/// `struct user_msghdr.msg_iov`.
const MSGHDR_IOV: u64 = 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

#[inline(always)]
fn current() -> (u64, u32) {
    let id = bpf_get_current_pid_tgid();
    (id, (id >> 32) as u32)
}

#[inline(always)]
fn is_target(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { TARGETS.get(&tgid) }.is_some()
}

#[inline(always)]
fn bump(index: u32) -> u64 {
    match STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; programs do not migrate while running.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

macro_rules! enter_program {
    ($name:ident, $syscall:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = remember_call(&ctx, $syscall);
            0
        }
    };
}

enter_program!(enter_read, Syscall::Read);
enter_program!(enter_readv, Syscall::Readv);
enter_program!(enter_recvfrom, Syscall::Recvfrom);
enter_program!(enter_recvmsg, Syscall::Recvmsg);
enter_program!(enter_write, Syscall::Write);
enter_program!(enter_writev, Syscall::Writev);
enter_program!(enter_sendto, Syscall::Sendto);
enter_program!(enter_sendmsg, Syscall::Sendmsg);
enter_program!(enter_sendfile, Syscall::Sendfile);

#[inline(always)]
fn remember_call(ctx: &TracePointContext, syscall: Syscall) -> Result<(), i64> {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return Ok(());
    }
    // SAFETY: offsets of the syscall tracepoint record, checked against its format file.
    let fd = unsafe { ctx.read_at::<u64>(ARG0) }? as i32;
    // SAFETY: presence test only.
    if unsafe { SOCKETS.get(&socket_key(tgid, fd)) }.is_none() {
        return Ok(());
    }
    let buf = match syscall {
        Syscall::Sendfile => 0,
        // SAFETY: as above; arg 1 is the buffer / iovec / msghdr pointer.
        _ => unsafe { ctx.read_at::<u64>(ARG1) }?,
    };
    let call = PendingCall {
        buf,
        fd,
        syscall: syscall as u32,
    };
    if PENDING.insert(&id, &call, 0).is_err() {
        bump(stat::PENDING_FULL);
    }
    Ok(())
}

/// Shared by the exit tracepoints of every data syscall: the entry program said which one.
#[tracepoint]
pub fn exit_data(ctx: TracePointContext) -> u32 {
    let _ = emit_data(&ctx);
    0
}

#[inline(always)]
fn emit_data(ctx: &TracePointContext) -> Result<(), i64> {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return Ok(());
    }
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
    let Ok(syscall) = Syscall::try_from(call.syscall) else {
        return Ok(());
    };
    let key = socket_key(tgid, call.fd);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        ring_full(ctx, key);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, exclusively owned ring-buffer slot. Fields are
    // written in place: an `Event` is larger than the 512-byte BPF stack.
    unsafe {
        fill_header(
            event,
            tgid,
            id as u32,
            call.fd,
            syscall,
            ret,
            take_lost_flag(key),
        );
        (*event).captured = copy_head(syscall, call.buf, ret as u64, &mut (*event).head);
    }
    entry.submit(0);
    Ok(())
}

/// Copies the first bytes the syscall moved: from the buffer, or from the first iovec.
#[inline(always)]
fn copy_head(syscall: Syscall, buf: u64, ret: u64, head: &mut [u8; HEAD_LEN]) -> u32 {
    let (ptr, avail) = match syscall {
        Syscall::Read | Syscall::Recvfrom | Syscall::Write | Syscall::Sendto => (buf, ret),
        Syscall::Readv | Syscall::Writev => match first_iovec(buf) {
            Some(iov) => (iov.base, iov.len),
            None => return 0,
        },
        Syscall::Recvmsg | Syscall::Sendmsg => {
            // SAFETY: reading a user pointer field; failure is handled.
            let iov = unsafe { bpf_probe_read_user((buf + MSGHDR_IOV) as *const u64) };
            match iov.ok().and_then(first_iovec) {
                Some(iov) => (iov.base, iov.len),
                None => return 0,
            }
        }
        Syscall::Sendfile | Syscall::Accept | Syscall::Close => return 0,
    };
    let mut len = if avail < ret { avail } else { ret } as usize;
    if len > HEAD_LEN {
        len = HEAD_LEN;
    }
    if len == 0 {
        return 0;
    }
    // SAFETY: bounded copy from user memory into the reserved slot; failure reports 0 bytes.
    match unsafe { bpf_probe_read_user_buf(ptr as *const u8, &mut head[..len]) } {
        Ok(()) => len as u32,
        Err(_) => 0,
    }
}

#[inline(always)]
fn first_iovec(iov: u64) -> Option<Iovec> {
    // SAFETY: user pointer read through the helper; failure is handled.
    unsafe { bpf_probe_read_user(iov as *const Iovec) }.ok()
}

/// # Safety
/// `event` must point at a reserved ring-buffer slot.
#[inline(always)]
unsafe fn fill_header(
    event: *mut Event,
    tgid: u32,
    tid: u32,
    fd: i32,
    syscall: Syscall,
    ret: i64,
    flags: u32,
) {
    unsafe {
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).ret = ret;
        (*event).tgid = tgid;
        (*event).tid = tid;
        (*event).fd = fd;
        (*event).syscall = syscall as u32;
        (*event).flags = flags;
        (*event).captured = 0;
    }
}

/// Counts a dropped event and marks its socket so userspace resyncs that connection.
#[inline(always)]
fn ring_full(ctx: &TracePointContext, key: u64) {
    if bump(stat::RING_FULL) == 1 {
        warn!(
            ctx,
            "ring buffer full: dropping events (see observer_events_lost_total)"
        );
    }
    if let Some(flags) = SOCKETS.get_ptr_mut(&key) {
        // SAFETY: a u32 in a map slot; a racing writer can only set the same bit.
        unsafe { *flags |= FLAG_LOST_BEFORE };
    }
}

#[inline(always)]
fn take_lost_flag(key: u64) -> u32 {
    match SOCKETS.get_ptr_mut(&key) {
        // SAFETY: as in `ring_full`.
        Some(flags) => unsafe {
            let old = *flags;
            if old != 0 {
                *flags = 0;
            }
            old & FLAG_LOST_BEFORE
        },
        None => 0,
    }
}

/// accept / accept4 exit: a new connection socket of a target.
#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    let _ = learn_socket(&ctx);
    0
}

#[inline(always)]
fn learn_socket(ctx: &TracePointContext) -> Result<(), i64> {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return Ok(());
    }
    // SAFETY: the exit record's return value.
    let ret = unsafe { ctx.read_at::<i64>(RET) }?;
    if ret < 0 {
        return Ok(());
    }
    let fd = ret as i32;
    if SOCKETS.insert(&socket_key(tgid, fd), &0, 0).is_err() {
        bump(stat::SOCKETS_FULL);
        return Ok(());
    }
    emit_control(ctx, id, tgid, fd, Syscall::Accept, ret);
    Ok(())
}

/// close entry: forget the socket, tell userspace the connection ended.
#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let _ = forget_socket(&ctx);
    0
}

#[inline(always)]
fn forget_socket(ctx: &TracePointContext) -> Result<(), i64> {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return Ok(());
    }
    // SAFETY: the entry record's first argument.
    let fd = unsafe { ctx.read_at::<u64>(ARG0) }? as i32;
    if SOCKETS.remove(&socket_key(tgid, fd)).is_err() {
        return Ok(()); // not a socket we follow
    }
    emit_control(ctx, id, tgid, fd, Syscall::Close, 0);
    Ok(())
}

#[inline(always)]
fn emit_control(ctx: &TracePointContext, id: u64, tgid: u32, fd: i32, syscall: Syscall, ret: i64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        ring_full(ctx, socket_key(tgid, fd));
        return;
    };
    // SAFETY: reserved slot, see `emit_data`.
    unsafe { fill_header(entry.as_mut_ptr(), tgid, id as u32, fd, syscall, ret, 0) };
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
