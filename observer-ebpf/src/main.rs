//! Syscall tracepoints on the socket read/write family of the target processes.
//!
//! Entry programs remember the arguments of a syscall on a known socket of a target; the
//! shared exit program copies the first and last bytes it moved into a ring-buffer record
//! once the return value says how many bytes moved. Every program filters on the target
//! tgid first, before any other work.
#![no_std]
#![no_main]
// `atomic_or`: the target has no compare-and-swap, so core's atomics offer no fetch_or; the
// BPF instruction set has an atomic OR all the same.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MMAPABLE, bpf_pidns_info},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_ns_current_pid_tgid, bpf_loop, bpf_probe_read_user},
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use observer_common::{
    Direction, EventHeader, FLAG_LOST_BEFORE, HEAD_LEN, HEADER_LEN, MAX_CONNECTIONS, MAX_IOV, PendingCall,
    READ_HEAD_LEN, RING_BYTES, Syscall, TAIL_LEN, TARGET_WORDS, WRITE_HEAD_LEN, socket_key, stat, target_bit,
};

/// Target tgids, one bit each. Every program run on every syscall of every process starts
/// by testing a bit here: an array lookup the verifier inlines, where a hash map lookup cost
/// ~33 ns a run. Userspace sets and clears bits with atomic operations on its mmap of the
/// map; the fork hook sets a child's with an atomic OR, so neither loses the other's bits.
#[map]
static TARGETS: Array<u64> = Array::with_max_entries(TARGET_WORDS, BPF_F_MMAPABLE);

/// Known sockets of targets, `socket_key(tgid, fd)` → `FLAG_*` bits. Learned from accept and,
/// at attach time, from /proc/PID/fd; forgotten at close. Userspace sets its size
/// (`--max-connections`).
#[map]
static SOCKETS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Arguments of syscalls in progress, keyed by pid_tgid (one syscall per thread at a time).
#[map]
static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-CPU counters, indexed by `observer_common::stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Room the verifier can see: head copies start below `HEAD_LEN` and are at most `HEAD_LEN`
/// long, tail copies start below `HEAD_LEN + TAIL_LEN`; twice the largest head bounds both.
const DATA_CAP: usize = 2 * HEAD_LEN;

/// Per-CPU work area where a record is assembled (far larger than the 512-byte BPF stack).
#[repr(C)]
struct Scratch {
    header: EventHeader,
    data: [u8; DATA_CAP],
    iov: [Iovec; MAX_IOV],
    walk: Walk,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Offsets in the `syscalls:sys_enter_*` / `sys_exit_*` records (see their `format` files):
/// arguments are 8 bytes each from offset 16; the exit record holds the return value at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;
/// `struct user_msghdr`: `msg_iov` and `msg_iovlen`.
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// The observer's PID namespace (device and inode of its nsfs file), set by userspace when it
/// runs in a child namespace (a container): then every pid and tgid here, in maps and in
/// records, is the one seen in that namespace, as `--pid` and /proc there give them.
/// Inode 0 means the initial namespace, where the plain helper is the cheaper answer.
#[unsafe(no_mangle)]
static PIDNS_DEV: u64 = 0;
#[unsafe(no_mangle)]
static PIDNS_INO: u64 = 0;

/// (pid_tgid, tgid) of the current task, in the observer's PID namespace; tgid 0 for a task
/// outside it.
#[inline(always)]
fn current() -> (u64, u32) {
    // SAFETY: constants patched by the loader; volatile so the compiler keeps the loads.
    let ino = unsafe { core::ptr::read_volatile(&PIDNS_INO) };
    if ino == 0 {
        let id = bpf_get_current_pid_tgid();
        return (id, (id >> 32) as u32);
    }
    let dev = unsafe { core::ptr::read_volatile(&PIDNS_DEV) };
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    let size = core::mem::size_of::<bpf_pidns_info>() as u32;
    // SAFETY: the helper writes `size` bytes into `info`.
    if unsafe { bpf_get_ns_current_pid_tgid(dev, ino, &mut info, size) } != 0 {
        return (0, 0);
    }
    ((u64::from(info.tgid) << 32) | u64::from(info.pid), info.tgid)
}

/// Children of targets forked in a child PID namespace, by their pid in the initial namespace
/// (the only one the fork record gives): each becomes a target, under its namespaced tgid, at
/// its first hooked syscall. LRU: entries of threads (which never match) age out.
#[map]
static FORKED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: the helper takes no arguments and touches no memory.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn is_target(tgid: u32) -> bool {
    let (word, bit) = target_bit(tgid);
    // SAFETY: a u64 in a map slot that others only change atomically.
    TARGETS.get_ptr(word).is_some_and(|w| unsafe { core::ptr::read_volatile(w) } & bit != 0)
        || adopt_forked(tgid)
}

/// Makes `tgid` a target.
#[inline(always)]
fn add_target(tgid: u32) {
    let (word, bit) = target_bit(tgid);
    if let Some(w) = TARGETS.get_ptr_mut(word) {
        // SAFETY: a u64 in a map slot; an atomic OR, as userspace's updates are atomic too.
        unsafe {
            core::intrinsics::atomic_or::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(w, bit)
        };
    }
}

/// In a child PID namespace: whether the current task is a target's new child (see FORKED),
/// which then becomes a target.
#[inline(always)]
fn adopt_forked(tgid: u32) -> bool {
    // SAFETY: a constant patched by the loader; volatile so the compiler keeps the load.
    if tgid == 0 || unsafe { core::ptr::read_volatile(&PIDNS_INO) } == 0 {
        return false;
    }
    let global = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    if unsafe { FORKED.get(&global) }.is_none() {
        return false;
    }
    let _ = FORKED.remove(&global);
    add_target(tgid);
    true
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

/// Copies `len` user bytes to `dst`; false on a fault.
///
/// # Safety
/// `dst..dst + len` must lie inside the scratch area (the verifier checks it too).
#[inline(always)]
unsafe fn read_user(dst: *mut u8, len: u64, src: u64) -> bool {
    unsafe { bpf_probe_read_user(dst as *mut c_void, len as u32, src as *const c_void) == 0 }
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

/// `Some(FLAG_* bits)` if `fd` is a socket of `tgid` we follow. Events of it that were lost
/// are reported once, on the next event (the flag is cleared here, where the entry is at
/// hand, rather than by another lookup later).
#[inline(always)]
fn followed_socket(tgid: u32, fd: i32) -> Option<u32> {
    let socket = SOCKETS.get_ptr_mut(&socket_key(tgid, fd))?;
    // SAFETY: a u32 in a map slot; a racing writer can only set the same bit.
    Some(unsafe {
        let flags = *socket;
        if flags != 0 {
            *socket = 0;
        }
        flags & FLAG_LOST_BEFORE
    })
}

#[inline(always)]
fn remember_call(ctx: &TracePointContext, syscall: Syscall) -> Result<(), i64> {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return Ok(());
    }
    // SAFETY: offsets of the syscall tracepoint record, checked against its format file.
    let fd = unsafe { ctx.read_at::<u64>(ARG0) }? as i32;
    let Some(flags) = followed_socket(tgid, fd) else {
        return Ok(());
    };
    // SAFETY: as above; arg 1 is the buffer / iovec / msghdr pointer, arg 2 the iovec count.
    let (buf, count) = match syscall {
        Syscall::Sendfile => (0, 0),
        Syscall::Readv | Syscall::Writev => unsafe { (ctx.read_at::<u64>(ARG1)?, ctx.read_at::<u64>(ARG2)?) },
        _ => (unsafe { ctx.read_at::<u64>(ARG1) }?, 0),
    };
    let call = PendingCall { buf, count, fd, syscall: syscall as u32, flags, reserved: 0 };
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
    emit_data(ctx, id, tgid, &call, ret);
    Ok(())
}

/// Emits the data record of a finished syscall on a followed socket.
#[inline(always)]
fn emit_data<C: EbpfContext>(ctx: &C, id: u64, tgid: u32, call: &PendingCall, ret: i64) {
    if ret <= 0 {
        return; // EAGAIN, EOF and errors move no bytes
    }
    let Ok(syscall) = Syscall::try_from(call.syscall) else {
        return;
    };
    let key = socket_key(tgid, call.fd);
    let ret = ret as u64;
    let cap = if syscall.direction() == Direction::In { READ_HEAD_LEN } else { WRITE_HEAD_LEN } as u64;
    let (head_len, tail_len) = match syscall {
        Syscall::Read | Syscall::Recvfrom | Syscall::Write | Syscall::Sendto => {
            copy_plain(call.buf, ret, cap)
        }
        _ => {
            // The scratch slot is borrowed afresh around the bpf_loop calls, whose callbacks
            // write it.
            let Some(count) = scratch().map(|s| load_iovecs(s, syscall, call, ret)) else {
                return;
            };
            if count <= 2 {
                copy_two(count, ret, cap)
            } else {
                let head_len = copy_head(count, ret, cap);
                (head_len, copy_tail(count, ret, head_len))
            }
        }
    };
    let Some(scratch) = scratch() else {
        return;
    };
    scratch.header = EventHeader {
        ts_ns: now(),
        ret: ret as i64,
        tgid,
        tid: id as u32,
        fd: call.fd,
        syscall: syscall as u32,
        flags: call.flags,
        head_len: head_len as u32,
        tail_len: tail_len as u32,
        reserved: 0,
    };
    let mut size = HEADER_LEN as u64 + head_len + tail_len;
    if size > (HEADER_LEN + DATA_CAP) as u64 {
        size = (HEADER_LEN + DATA_CAP) as u64;
    }
    // SAFETY: `size` bytes from the start of the scratch slot, which is larger.
    let record =
        unsafe { core::slice::from_raw_parts(scratch as *const Scratch as *const u8, size as usize) };
    if EVENTS.output::<[u8]>(record, wakeup_flag()).is_err() {
        ring_full(ctx, key);
    }
}

/// One buffer: the head and the tail are two straight copies, no walk.
#[inline(always)]
fn copy_plain(buf: u64, ret: u64, cap: u64) -> (u64, u64) {
    let Some(scratch) = scratch() else { return (0, 0) };
    let mut head = if ret < cap { ret } else { cap };
    if head > HEAD_LEN as u64 {
        head = HEAD_LEN as u64;
    }
    // SAFETY: head <= HEAD_LEN inside DATA_CAP.
    if head > 0 && !unsafe { read_user(scratch.data.as_mut_ptr(), head, buf) } {
        return (0, 0);
    }
    let mut tail = ret - head;
    if tail > TAIL_LEN as u64 {
        tail = TAIL_LEN as u64;
    }
    // SAFETY: head <= HEAD_LEN and tail <= TAIL_LEN inside DATA_CAP = 2 * HEAD_LEN.
    if tail > 0 && !unsafe { read_user(scratch.data.as_mut_ptr().add(head as usize), tail, buf + ret - tail) }
    {
        return (head, 0);
    }
    (head, tail)
}

/// One or two iovecs (a response head and its body, as nginx and node write them): the
/// head and tail copies without the `bpf_loop` walks, which cost more than the copies.
#[inline(always)]
fn copy_two(count: u64, ret: u64, cap: u64) -> (u64, u64) {
    let Some(scratch) = scratch() else { return (0, 0) };
    if count == 0 {
        return (0, 0);
    }
    let first = scratch.iov[0];
    let second = if count == 2 { scratch.iov[1] } else { Iovec { base: 0, len: 0 } };
    let used0 = if first.len < ret { first.len } else { ret };
    let rest = ret - used0;
    let used1 = if second.len < rest { second.len } else { rest };
    if used0 + used1 < ret {
        return (0, 0); // more bytes than the iovecs hold: not a state we can trust
    }
    let cap = if cap > HEAD_LEN as u64 { HEAD_LEN as u64 } else { cap };
    // Head: from the first iovec, then the second.
    let mut head0 = if used0 < cap { used0 } else { cap };
    head0 &= HEAD_LEN as u64 * 2 - 1;
    if head0 > HEAD_LEN as u64 {
        return (0, 0);
    }
    // SAFETY: head0 <= HEAD_LEN inside DATA_CAP.
    if head0 > 0 && !unsafe { read_user(scratch.data.as_mut_ptr(), head0, first.base) } {
        return (0, 0);
    }
    let mut head1 = if used1 < cap - head0 { used1 } else { cap - head0 };
    if head1 > HEAD_LEN as u64 {
        head1 = HEAD_LEN as u64;
    }
    // SAFETY: head0 < HEAD_LEN... the sum is checked below before use as a bound.
    if head1 > 0 && !unsafe { read_user(scratch.data.as_mut_ptr().add(head0 as usize), head1, second.base) } {
        return (head0, 0);
    }
    let head = head0 + head1;
    // Tail: the last bytes after the head, from the end of the second iovec, then the first.
    let mut want = ret - head;
    if want > TAIL_LEN as u64 {
        want = TAIL_LEN as u64;
    }
    let from1 = if used1 - head1 < want { used1 - head1 } else { want };
    let from0 = want - from1;
    let at = head & (HEAD_LEN as u64 * 2 - 1);
    if at + TAIL_LEN as u64 > DATA_CAP as u64 || from0 > TAIL_LEN as u64 || from1 > TAIL_LEN as u64 {
        return (head, 0);
    }
    // SAFETY: at + from0 + from1 <= at + TAIL_LEN <= DATA_CAP, checked above.
    if from0 > 0
        && !unsafe {
            read_user(scratch.data.as_mut_ptr().add(at as usize), from0, first.base + used0 - from0)
        }
    {
        return (head, 0);
    }
    let at1 = (at + from0) & (HEAD_LEN as u64 * 2 - 1);
    if at1 + TAIL_LEN as u64 > DATA_CAP as u64 {
        return (head, 0);
    }
    // SAFETY: as above.
    if from1 > 0
        && !unsafe {
            read_user(scratch.data.as_mut_ptr().add(at1 as usize), from1, second.base + used1 - from1)
        }
    {
        return (head, 0);
    }
    (head, want)
}

/// Puts the syscall's buffers in `scratch.iov` as iovecs; returns how many.
#[inline(always)]
fn load_iovecs(scratch: &mut Scratch, syscall: Syscall, call: &PendingCall, ret: u64) -> u64 {
    let (iov, count) = match syscall {
        Syscall::Read | Syscall::Recvfrom | Syscall::Write | Syscall::Sendto => {
            scratch.iov[0] = Iovec { base: call.buf, len: ret }; // (copy_plain handles these)
            return 1;
        }
        Syscall::Readv | Syscall::Writev => (call.buf, call.count),
        Syscall::Recvmsg | Syscall::Sendmsg => {
            let mut iov = 0u64;
            let mut count = 0u64;
            // SAFETY: 8-byte reads of msghdr fields into locals; faults leave them 0.
            unsafe {
                read_user(&mut iov as *mut u64 as *mut u8, 8, call.buf + MSGHDR_IOV);
                read_user(&mut count as *mut u64 as *mut u8, 8, call.buf + MSGHDR_IOVLEN);
            }
            (iov, count)
        }
        Syscall::Sendfile | Syscall::Accept | Syscall::Close | Syscall::Fork | Syscall::Exec => return 0,
    };
    let mut count = count;
    if count > MAX_IOV as u64 {
        count = MAX_IOV as u64;
    }
    if count == 0 {
        return 0;
    }
    // SAFETY: at most MAX_IOV iovecs into an array of MAX_IOV.
    let ok = unsafe { read_user(scratch.iov.as_mut_ptr() as *mut u8, count * 16, iov) };
    if ok { count } else { 0 }
}

/// State of the iovec walks, which the `bpf_loop` callbacks update. An unrolled walk over 16
/// iovecs, or a `bpf_loop` over state on the stack (whose values the verifier tracks per
/// iteration), made the verifier explore over a million states ("BPF program is too large").
/// Kept in the scratch map value, the state is opaque to the verifier and each body is
/// checked once; every offset is re-bounded with explicit clamps instead.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Walk {
    count: u64,
    /// Bytes not yet walked (head walk), or not yet located (end walk).
    left: u64,
    /// Head bytes gathered so far.
    off: u64,
    /// The last iovec the syscall reached, and how many of its bytes it used.
    last: u64,
    last_used: u64,
    /// Tail bytes still to gather, filled backwards from `head_len + remaining`.
    remaining: u64,
    head_len: u64,
    failed: u64,
    /// Most head bytes to gather for this syscall.
    cap: u64,
}

const CONTINUE: i64 = 0;
const STOP: i64 = 1;

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the per-CPU scratch slot is only used by the program running on this CPU.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Gathers the first bytes the syscall moved, across iovecs, into `scratch.data`.
#[inline(always)]
fn copy_head(count: u64, ret: u64, cap: u64) -> u64 {
    let Some(s) = scratch() else { return 0 };
    s.walk = Walk { count, left: ret, cap, ..Walk::default() };
    // SAFETY: the callback only touches the scratch slot.
    unsafe { bpf_loop(MAX_IOV as u32, head_step as *mut c_void, core::ptr::null_mut(), 0) };
    let Some(s) = scratch() else { return 0 };
    let off = s.walk.off;
    if off > HEAD_LEN as u64 { HEAD_LEN as u64 } else { off }
}

#[inline(never)]
extern "C" fn head_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = scratch() else { return STOP };
    let mut walk = scratch.walk;
    if index >= walk.count || walk.left == 0 || walk.off >= walk.cap || walk.off >= HEAD_LEN as u64 {
        return STOP;
    }
    let iov = scratch.iov[(index as usize) & (MAX_IOV - 1)];
    let used = if iov.len < walk.left { iov.len } else { walk.left };
    let mut n = walk.cap - walk.off;
    if used < n {
        n = used;
    }
    if n > HEAD_LEN as u64 {
        n = HEAD_LEN as u64; // redundant, but visible to the verifier
    }
    let at = walk.off & (HEAD_LEN as u64 - 1);
    // SAFETY: at < HEAD_LEN and n <= HEAD_LEN, inside DATA_CAP = 2 * HEAD_LEN.
    if n > 0 && !unsafe { read_user(scratch.data.as_mut_ptr().add(at as usize), n, iov.base) } {
        return STOP;
    }
    walk.off += n;
    walk.left -= used;
    scratch.walk = walk;
    CONTINUE
}

/// Gathers the last bytes the syscall moved (those after the head, at most `TAIL_LEN`),
/// walking the used iovecs backwards, into `scratch.data` right after the head.
#[inline(always)]
fn copy_tail(count: u64, ret: u64, head_len: u64) -> u64 {
    let mut want = ret - head_len;
    if want > TAIL_LEN as u64 {
        want = TAIL_LEN as u64;
    }
    if want == 0 || head_len > HEAD_LEN as u64 {
        return 0;
    }
    let Some(s) = scratch() else { return 0 };
    s.walk = Walk { count, left: ret, head_len, remaining: want, ..Walk::default() };
    // SAFETY: the callbacks only touch the scratch slot.
    unsafe { bpf_loop(MAX_IOV as u32, end_step as *mut c_void, core::ptr::null_mut(), 0) };
    let Some(s) = scratch() else { return 0 };
    if s.walk.left > 0 {
        return 0; // more iovecs than we follow: the end is unknown
    }
    // SAFETY: as above.
    unsafe { bpf_loop(MAX_IOV as u32, tail_step as *mut c_void, core::ptr::null_mut(), 0) };
    let Some(s) = scratch() else { return 0 };
    if s.walk.remaining == 0 && s.walk.failed == 0 { want } else { 0 }
}

/// Locates the last iovec the syscall reached.
#[inline(never)]
extern "C" fn end_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = scratch() else { return STOP };
    if index >= scratch.walk.count || scratch.walk.left == 0 {
        return STOP;
    }
    let len = scratch.iov[(index as usize) & (MAX_IOV - 1)].len;
    let walk = &mut scratch.walk;
    let used = if len < walk.left { len } else { walk.left };
    walk.left -= used;
    if used > 0 {
        walk.last = index;
        walk.last_used = used;
    }
    CONTINUE
}

/// Copies from the end of iovec `last - step`, backwards.
#[inline(never)]
extern "C" fn tail_step(step: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = scratch() else { return STOP };
    let mut walk = scratch.walk;
    if walk.remaining == 0 || step > walk.last {
        return STOP;
    }
    let index = ((walk.last - step) as usize) & (MAX_IOV - 1);
    let iov = scratch.iov[index];
    let used = if step == 0 { walk.last_used } else { iov.len };
    let mut take = if used < walk.remaining { used } else { walk.remaining };
    if take > TAIL_LEN as u64 {
        take = TAIL_LEN as u64;
    }
    // head_len <= HEAD_LEN and remaining <= TAIL_LEN, but the verifier cannot see values kept
    // in the map: the mask and the check below bound the copy for it.
    let at = (walk.head_len + walk.remaining - take) & (DATA_CAP as u64 - 1);
    if at + take > DATA_CAP as u64 {
        scratch.walk.failed = 1;
        return STOP;
    }
    // SAFETY: at + take <= DATA_CAP, checked above.
    if take > 0
        && !unsafe { read_user(scratch.data.as_mut_ptr().add(at as usize), take, iov.base + used - take) }
    {
        scratch.walk.failed = 1;
        return STOP;
    }
    walk.remaining -= take;
    scratch.walk = walk;
    CONTINUE
}

/// Waking the reader for every record costs the daemon a context switch per syscall at
/// saturation. Records are submitted without a wakeup until `WAKEUP_BYTES` are pending (a
/// sixteenth of the ring; userspace sets it with the ring's size);
/// the daemon also drains on a short timer (see `run.rs`), so nothing waits long.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = RING_BYTES as u64 / 16;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

#[inline(always)]
fn wakeup_flag() -> u64 {
    // SAFETY: a constant patched by the loader; volatile so the compiler keeps the load.
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }
}

/// Counts a dropped event and marks its socket so userspace resyncs that connection.
#[inline(always)]
fn ring_full<C: EbpfContext>(ctx: &C, key: u64) {
    if bump(stat::RING_FULL) == 1 {
        warn!(ctx, "ring buffer full: dropping events (see observer_events_lost_total)");
    }
    if let Some(flags) = SOCKETS.get_ptr_mut(&key) {
        // SAFETY: a u32 in a map slot; a racing writer can only set the same bit.
        unsafe { *flags |= FLAG_LOST_BEFORE };
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
    accepted(ctx, id, tgid, ret);
    Ok(())
}

/// accept/accept4 returned `ret`: a new connection socket to follow.
#[inline(always)]
fn accepted<C: EbpfContext>(ctx: &C, id: u64, tgid: u32, ret: i64) {
    if ret < 0 {
        return;
    }
    let fd = ret as i32;
    if SOCKETS.insert(&socket_key(tgid, fd), &0, 0).is_err() {
        bump(stat::SOCKETS_FULL);
        return;
    }
    emit_control(ctx, id, tgid, fd, Syscall::Accept, ret);
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
    closed(ctx, id, tgid, fd);
    Ok(())
}

/// `fd` of `tgid` is being closed: forget it if it is a socket we follow.
#[inline(always)]
fn closed<C: EbpfContext>(ctx: &C, id: u64, tgid: u32, fd: i32) {
    if SOCKETS.remove(&socket_key(tgid, fd)).is_ok() {
        emit_control(ctx, id, tgid, fd, Syscall::Close, 0);
    }
}

/// A header-only record (accept, close).
#[inline(always)]
fn emit_control<C: EbpfContext>(ctx: &C, id: u64, tgid: u32, fd: i32, syscall: Syscall, ret: i64) {
    let header = EventHeader {
        ts_ns: now(),
        ret,
        tgid,
        tid: id as u32,
        fd,
        syscall: syscall as u32,
        ..EventHeader::default()
    };
    if EVENTS.output::<EventHeader>(&header, wakeup_flag()).is_err() {
        ring_full(ctx, socket_key(tgid, fd));
    }
}

/// Offset of `child_pid` in the `sched:sched_process_fork` record. Userspace sets it from the
/// tracepoint's format file before loading: it moved (44 → 20) when the comm fields became
/// `__data_loc` strings.
#[unsafe(no_mangle)]
static CHILD_PID_OFFSET: u32 = 20;

/// sched_process_fork, in the parent's context: a target's child becomes a target at once, so
/// not even its first accept is missed. Threads show up here too; userspace tells them apart
/// (from /proc) and removes them again.
#[tracepoint]
pub fn fork(ctx: TracePointContext) -> u32 {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: a constant patched by the loader; volatile so the compiler keeps the load.
    let offset = unsafe { core::ptr::read_volatile(&CHILD_PID_OFFSET) } as usize;
    // SAFETY: a field of the tracepoint record, at the offset its format file gives.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(offset & 0xff) }) else {
        return 0;
    };
    if child <= 0 {
        return 0;
    }
    // SAFETY: a constant patched by the loader; volatile so the compiler keeps the load.
    if unsafe { core::ptr::read_volatile(&PIDNS_INO) } != 0 {
        // `child` is the initial namespace's pid: adopted at its first syscall (FORKED);
        // userspace is told of a fork of `tgid` without the child's pid.
        let _ = FORKED.insert(&(child as u32), &0, 0);
        emit_control(&ctx, id, tgid, 0, Syscall::Fork, 0);
        return 0;
    }
    if child as u32 == tgid {
        return 0;
    }
    add_target(child as u32);
    emit_control(&ctx, id, tgid, child, Syscall::Fork, 0);
    0
}

/// sched_process_exec, attached only for `--exe`: every program start on the machine is
/// reported (they are rare) and userspace decides whether it is one to observe.
#[tracepoint]
pub fn exec(ctx: TracePointContext) -> u32 {
    let (id, tgid) = current();
    if tgid == 0 {
        return 0; // outside the observer's PID namespace
    }
    emit_control(&ctx, id, tgid, 0, Syscall::Exec, 0);
    0
}

/// The other hook strategy (`--hooks raw`): one raw tracepoint at `sys_exit` for every
/// syscall, reading the arguments from the saved user registers, which the syscall leaves
/// untouched. No entry programs, no PENDING map; but it runs for every syscall of every
/// process, not only the hooked ones. x86-64 numbers and `struct pt_regs` offsets.
///
/// close is not handled here but by `enter_close` (sys_enter_close) in both strategies: at
/// exit the fd is already free, and another thread's accept may have been given the same
/// number, whose socket an exit-time close would then forget (seen: 5 connections in 10,000
/// on a 2-thread tokio server).
mod x86_64 {
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
    /// `struct pt_regs` offsets of rdx, rsi, rdi and orig_ax.
    pub const DX: usize = 96;
    pub const SI: usize = 104;
    pub const DI: usize = 112;
    pub const ORIG_AX: usize = 120;
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
/// Needs kernel BTF.
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
    let syscall = match reg(x86_64::ORIG_AX) {
        x86_64::READ => Syscall::Read,
        x86_64::READV => Syscall::Readv,
        x86_64::RECVFROM => Syscall::Recvfrom,
        x86_64::RECVMSG => Syscall::Recvmsg,
        x86_64::WRITE => Syscall::Write,
        x86_64::WRITEV => Syscall::Writev,
        x86_64::SENDTO => Syscall::Sendto,
        x86_64::SENDMSG => Syscall::Sendmsg,
        x86_64::SENDFILE => Syscall::Sendfile,
        x86_64::ACCEPT | x86_64::ACCEPT4 => {
            accepted(ctx, id, tgid, ret);
            return 0;
        }
        _ => return 0,
    };
    if ret <= 0 {
        return 0; // EAGAIN, EOF and errors move no bytes: no socket lookup for them
    }
    let fd = reg(x86_64::DI) as i32;
    let Some(flags) = followed_socket(tgid, fd) else {
        return 0;
    };
    let (buf, count) = match syscall {
        Syscall::Sendfile => (0, 0),
        Syscall::Readv | Syscall::Writev => (reg(x86_64::SI), reg(x86_64::DX)),
        _ => (reg(x86_64::SI), 0),
    };
    let call = PendingCall { buf, count, fd, syscall: syscall as u32, flags, reserved: 0 };
    emit_data(ctx, id, tgid, &call, ret);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
