//! Copies of what a call moved: its first bytes (the head) and its last (the tail), from a
//! plain buffer, an iovec array or a msghdr, into the per-CPU scratch record.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_user};
use observer_common::{Call, HEAD_LEN, MAX_IOV, TAIL_LEN};

use crate::scratch::{DATA_CAP, Iovec, Walk, scratch};

// What the masks below assume.
const _: () = assert!(HEAD_LEN.is_power_of_two(), "offsets are masked with HEAD_LEN - 1");
const _: () = assert!(MAX_IOV.is_power_of_two(), "iovec indices are masked with MAX_IOV - 1");
const _: () = assert!(TAIL_LEN <= HEAD_LEN, "a tail after a full head fits in DATA_CAP");
const _: () = assert!(observer_common::RESPONSE_HEAD_LEN <= HEAD_LEN);
const _: () = assert!(observer_common::WRITE_HEAD_LEN <= HEAD_LEN);

/// `struct user_msghdr`: `msg_iov` and `msg_iovlen`.
pub const MSGHDR_IOV: u64 = 16;
pub const MSGHDR_IOVLEN: u64 = 24;

/// Where a call's bytes are in the caller's memory: the one place that knows each call's shape.
#[derive(Clone, Copy)]
pub enum Buffer {
    /// Nothing to copy (sendfile, splice, calls we do not know): bytes are counted only.
    None,
    /// read, recvfrom, write, sendto: one buffer.
    Plain(u64),
    /// readv, writev: an iovec array and its length.
    Iovecs { iov: u64, count: u64 },
    /// recvmsg, sendmsg: a `struct user_msghdr`.
    Msghdr(u64),
}

impl Buffer {
    /// The buffer of `call`, given its second and third arguments.
    #[inline(always)]
    pub fn of(call: Call, arg1: u64, arg2: u64) -> Buffer {
        match call {
            Call::Read | Call::Recvfrom | Call::Write | Call::Sendto | Call::TlsRead | Call::TlsWrite => {
                Buffer::Plain(arg1)
            }
            Call::Readv | Call::Writev => Buffer::Iovecs { iov: arg1, count: arg2 },
            Call::Recvmsg | Call::Sendmsg => Buffer::Msghdr(arg1),
            Call::Sendfile | Call::Recv | Call::Send | Call::None => Buffer::None,
        }
    }
}

/// Copies up to `cap` bytes from the start of the `ret` bytes the call moved, and up to
/// `TAIL_LEN` from their end (after the head), into the scratch record's data. Returns
/// (head length, tail length).
#[inline(always)]
pub fn capture(buffer: Buffer, ret: u64, cap: u64) -> (u64, u64) {
    let (iov, count) = match buffer {
        Buffer::None => return (0, 0),
        Buffer::Plain(base) => return copy_plain(base, ret, cap),
        Buffer::Iovecs { iov, count } => (iov, count),
        Buffer::Msghdr(msg) => {
            let mut iov = 0u64;
            let mut count = 0u64;
            // SAFETY: 8-byte reads of msghdr fields into locals; faults leave them 0.
            unsafe {
                read_user(&mut iov as *mut u64 as *mut u8, 8, msg + MSGHDR_IOV);
                read_user(&mut count as *mut u64 as *mut u8, 8, msg + MSGHDR_IOVLEN);
            }
            (iov, count)
        }
    };
    let count = load_iovecs(iov, count);
    if count <= 2 {
        // One or two iovecs (a response head and its body, as nginx and node write them):
        // no bpf_loop walks, which cost more than the copies.
        return copy_two(count, ret, cap);
    }
    let head_len = copy_head(count, ret, cap);
    (head_len, copy_tail(count, ret, head_len))
}

/// Copies `len` user bytes to `dst`; false on a fault.
///
/// # Safety
/// `dst..dst + len` must lie inside the scratch area (the verifier checks it too).
#[inline(always)]
unsafe fn read_user(dst: *mut u8, len: u64, src: u64) -> bool {
    unsafe { bpf_probe_read_user(dst as *mut c_void, len as u32, src as *const c_void) == 0 }
}

/// Puts up to `MAX_IOV` of the caller's iovecs in `scratch.iov`; returns how many.
#[inline(always)]
fn load_iovecs(iov: u64, count: u64) -> u64 {
    let Some(scratch) = scratch() else { return 0 };
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

/// One or two iovecs, already in `scratch.iov`.
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

const CONTINUE: i64 = 0;
const STOP: i64 = 1;

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
