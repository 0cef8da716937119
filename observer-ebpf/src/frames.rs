//! HTTP/2 connections, followed frame by frame: once a connection's client preface is read,
//! each call's bytes are walked from the direction's `FrameCursor` on. Every 9-byte frame
//! header is copied, and the payloads that HPACK and stream state need (up to `KEPT_PAYLOAD`),
//! never DATA. A slice of the buffer would miss header blocks that sit anywhere in a call,
//! and one missed block desynchronises HPACK for the rest of the connection.
//!
//! A record holds at most `HEAD_LEN` bytes; a call that keeps more goes out as several
//! records. Records are numbered per direction, so the daemon sees a lost one as a gap.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_user};
use observer_common::{
    COPY_ALL, Direction, EventHeader, FLAG_CIPHER, FLAG_FRAMES, FLAG_TCP, FrameCursor, FrameCursors,
    H2_PREFACE, HEAD_LEN, HEADER_LEN, KEPT_PAYLOAD, MAX_IOV, STATE_H2, STATE_UPGRADE, frame_payload_kept,
    stat,
};

use crate::{
    capture::{Buffer, MSGHDR_IOV, MSGHDR_IOVLEN},
    emit::{bump, output},
    maps::FRAME_CURSORS,
    scratch::{FrameWalk, Iovec, Scratch, scratch},
};

/// Frame header length (RFC 9113 §4.1).
const FRAME_HEADER: u64 = 9;

/// Most iovecs of one call walked (the kernel's UIO_MAXIOV): nginx writes a burst of responses
/// as one writev of a few iovecs per frame.
const MAX_WALKED_IOV: u64 = 1024;

/// Most steps of one walk (a step copies or passes over part of one frame in one iovec, or
/// flushes a record): a 64 KiB read of small frames takes ~2 per frame.
const MAX_STEPS: u32 = 16384;

const CONTINUE: i64 = 0;
const STOP: i64 = 1;

/// Whether the bytes a read captured (`head`, `head_len` of them) begin with the client
/// preface: the connection is HTTP/2 from here on.
#[inline(always)]
pub fn starts_with_preface(head_len: u64) -> bool {
    starts_with(H2_PREFACE, head_len)
}

/// Whether the first bytes a new connection's server wrote (`head_len` of them captured) are
/// a SETTINGS frame: an HTTP/2 server speaks first (nginx sends its SETTINGS before it reads
/// the client preface). No HTTP/1 response starts so.
#[inline(always)]
pub fn starts_with_settings(head_len: u64) -> bool {
    let Some(s) = scratch() else { return false };
    if head_len < FRAME_HEADER {
        return false;
    }
    let d = &s.data;
    let len = u32::from(d[0]) << 16 | u32::from(d[1]) << 8 | u32::from(d[2]);
    d[3] == SETTINGS
        && d[4] == 0
        && d[5] == 0
        && d[6] == 0
        && d[7] == 0
        && d[8] == 0
        && len % 6 == 0
        && len <= 256
}

/// The status line of a switch of protocols (h2c's `Upgrade` among them).
const SWITCHING: &[u8; 13] = b"HTTP/1.1 101 ";

/// Whether a server write (`head_len` bytes of it captured) is the first after an h2c `101`
/// and begins with the server's SETTINGS: the connection is HTTP/2 from this write on. Notes
/// in `state` whether this write is itself a `101`, for the next one (`STATE_UPGRADE`). An
/// h2c server writes the 101 alone (Apache's mod_http2, Go's x/net/http2/h2c flush it first).
///
/// # Safety
/// `state` points into a map value.
#[inline(always)]
pub unsafe fn after_upgrade(state: *mut u32, head_len: u64) -> bool {
    // SAFETY: per the contract.
    let old = unsafe { *state };
    let upgraded = old & STATE_UPGRADE != 0;
    let switching = starts_with(SWITCHING, head_len);
    if switching != upgraded {
        // SAFETY: per the contract.
        unsafe { *state = old ^ STATE_UPGRADE };
    }
    upgraded && starts_with_settings(head_len)
}

/// Whether the captured bytes (`head_len` of them) begin with `text`.
#[inline(always)]
fn starts_with<const N: usize>(text: &[u8; N], head_len: u64) -> bool {
    let Some(s) = scratch() else { return false };
    if head_len < N as u64 {
        return false;
    }
    let mut i = 0;
    while i < N {
        if s.data[i] != text[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Frame type SETTINGS.
const SETTINGS: u8 = 0x4;

/// Most frames one read is tested for (`whole_frames`).
const SNIFFED_FRAMES: u32 = 64;

/// Whether a read of `ret` bytes, all captured, holds whole HTTP/2 frames and nothing else,
/// each one plausible (a known kind, a length within the default maximum frame size and, for
/// the fixed-size kinds, theirs, a stream id where the kind needs one and none where it must
/// not): an HTTP/2 connection from before attach, read at a frame boundary (clients write
/// whole frames, so a read at a quiet moment is one). An HTTP/1 read fails at its fourth byte.
#[inline(always)]
pub fn whole_frames(head_len: u64, ret: u64) -> bool {
    let Some(s) = scratch() else { return false };
    if head_len != ret || ret < FRAME_HEADER || ret > HEAD_LEN as u64 || s.data[3] > 9 {
        return false;
    }
    s.frames.off = 0;
    s.frames.left = ret;
    s.frames.failed = 0;
    // SAFETY: the callback only touches the scratch slot.
    unsafe { bpf_loop(SNIFFED_FRAMES, sniff_step as *mut c_void, core::ptr::null_mut(), 0) };
    let Some(s) = scratch() else { return false };
    s.frames.failed == 0 && s.frames.off == ret
}

/// Tests the frame header at `frames.off` of the captured read and steps past the frame.
#[inline(never)]
extern "C" fn sniff_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = scratch() else { return STOP };
    let (at, end) = (s.frames.off, s.frames.left);
    if at >= end {
        return STOP;
    }
    if at + FRAME_HEADER > end || at >= HEAD_LEN as u64 {
        s.frames.failed = 1;
        return STOP;
    }
    let p = (at & (HEAD_LEN as u64 - 1)) as usize;
    let d = &s.data;
    let len = u64::from(d[p]) << 16 | u64::from(d[p + 1]) << 8 | u64::from(d[p + 2]);
    let kind = d[p + 3];
    let stream = u32::from_be_bytes([d[p + 5], d[p + 6], d[p + 7], d[p + 8]]);
    let plausible = stream & 0x8000_0000 == 0
        && len <= u64::from(KEPT_PAYLOAD)
        && match kind {
            // DATA, HEADERS, CONTINUATION: on a stream.
            0x0 | 0x1 | 0x9 => stream != 0,
            0x2 => stream != 0 && len == 5,     // PRIORITY
            0x3 => stream != 0 && len == 4,     // RST_STREAM
            0x4 => stream == 0 && len % 6 == 0, // SETTINGS
            0x5 => stream != 0 && len >= 4,     // PUSH_PROMISE
            0x6 => stream == 0 && len == 8,     // PING
            0x7 => stream == 0 && len >= 8,     // GOAWAY
            0x8 => len == 4,                    // WINDOW_UPDATE
            _ => false,
        };
    if !plausible {
        s.frames.failed = 1;
        return STOP;
    }
    s.frames.off = at + FRAME_HEADER + len;
    CONTINUE
}

/// Makes `conn` an HTTP/2 connection: both cursors at their start (the requests' one, the
/// reads of a server or the writes of a `client`, expects the preface unless the connection
/// `joined` mid-stream), `STATE_H2` set. False (counted) if the table is full.
///
/// # Safety
/// `state` points into a map value.
#[inline(always)]
pub unsafe fn start(conn: u64, state: *mut u32, joined: bool, client: bool) -> bool {
    let preface =
        FrameCursor { copy: if joined { 0 } else { H2_PREFACE.len() as u32 }, ..FrameCursor::default() };
    let cursors = match client {
        false => FrameCursors { read: preface, write: FrameCursor::default() },
        true => FrameCursors { read: FrameCursor::default(), write: preface },
    };
    if FRAME_CURSORS.insert(&conn, &cursors, 0).is_err() {
        bump(stat::FRAMES_FULL);
        return false;
    }
    // SAFETY: per the contract.
    unsafe { *state |= STATE_H2 };
    true
}

/// Makes keyed TLS connection `conn` (ALPN `h2`) one whose calls are copied whole, as numbered
/// `FLAG_FRAMES` records: its frames lie inside the ciphertext, where only the daemon sees
/// them. `STATE_H2` set; false (counted) if the table is full.
///
/// # Safety
/// `state` points into a map value.
#[inline(always)]
pub unsafe fn start_cipher(conn: u64, state: *mut u32) -> bool {
    let all = FrameCursor { copy: COPY_ALL, ..FrameCursor::default() };
    if FRAME_CURSORS.insert(&conn, &FrameCursors { read: all, write: all }, 0).is_err() {
        bump(stat::FRAMES_FULL);
        return false;
    }
    // SAFETY: per the contract.
    unsafe { *state |= STATE_H2 };
    true
}

/// Forgets the cursors of a connection that ended.
#[inline(always)]
pub fn forget(conn: u64) {
    let _ = FRAME_CURSORS.remove(&conn);
}

/// Walks the `ret` bytes of a call on HTTP/2 connection `header.conn` from its cursor and
/// emits them as numbered `FLAG_FRAMES` records. `header` is the record's header, its lengths
/// and number to be filled in.
#[inline(always)]
pub fn emit_frames(header: EventHeader, buffer: Buffer, direction: Direction) {
    let Some(cursors) = FRAME_CURSORS.get_ptr_mut(&header.conn) else {
        return;
    };
    // SAFETY: a map value; one thread at a time moves bytes of one direction of a connection.
    let cursor = unsafe {
        if direction == Direction::In { &raw mut (*cursors).read } else { &raw mut (*cursors).write }
    };
    let Some(s) = scratch() else { return };
    let ret = header.ret as u64;
    s.header = EventHeader { flags: header.flags | FLAG_FRAMES, head_len: 0, tail_len: 0, ..header };
    // SAFETY: per the above.
    let start = unsafe { *cursor };
    let mut walk = FrameWalk { cursor: start, left: ret, ..FrameWalk::default() };
    walk.header[..8].copy_from_slice(&start.header);
    match buffer {
        Buffer::Plain(base) => {
            s.iov[0] = Iovec { base, len: ret };
            walk.count = 1;
        }
        Buffer::Iovecs { iov, count } => (walk.iov_user, walk.count, walk.batch) = (iov, count, u64::MAX),
        Buffer::Msghdr(msg) => {
            let (mut iov, mut count) = (0u64, 0u64);
            // SAFETY: 8-byte reads of msghdr fields into locals; faults leave them 0.
            unsafe {
                bpf_probe_read_user(
                    &mut iov as *mut u64 as *mut c_void,
                    8,
                    (msg + MSGHDR_IOV) as *const c_void,
                );
                bpf_probe_read_user(
                    &mut count as *mut u64 as *mut c_void,
                    8,
                    (msg + MSGHDR_IOVLEN) as *const c_void,
                );
            }
            (walk.iov_user, walk.count, walk.batch) = (iov, count, u64::MAX);
        }
        // Bytes without a user buffer (sendfile, splice: nginx sends a file's DATA payload so,
        // after writing the frame's header): they can only be passed over, and a walk that
        // needs to read them fails at address 0.
        Buffer::None => {
            s.iov[0] = Iovec { base: 0, len: ret };
            walk.count = 1;
        }
    }
    if walk.count > MAX_WALKED_IOV {
        walk.failed = 1;
    }
    s.frames = walk;
    if walk.failed == 0 {
        // SAFETY: the callback only touches the scratch slot.
        unsafe { bpf_loop(MAX_STEPS, frame_step as *mut c_void, core::ptr::null_mut(), 0) };
    }
    let Some(s) = scratch() else { return };
    let mut walk = s.frames;
    if walk.failed != 0 || walk.left != 0 {
        // Where the next frame starts is unknown from here: the skipped number tells the
        // daemon, which stops trusting this direction.
        bump(stat::FRAMES_UNWALKED);
        // A ciphertext cursor stays one: its bytes are still copied whole, for the daemon
        // to see the gap and give the connection up, not walked as frames they are not.
        let copy = if start.copy == COPY_ALL { COPY_ALL } else { 0 };
        walk.cursor = FrameCursor { seq: walk.cursor.seq.wrapping_add(1), copy, ..FrameCursor::default() };
    } else {
        flush();
        walk = s.frames;
    }
    walk.cursor.header.copy_from_slice(&walk.header[..8]);
    // SAFETY: per the above.
    unsafe { *cursor = walk.cursor };
}

/// Sends the kept bytes as one record (the next number of the direction) and starts the next.
#[inline(always)]
fn flush() {
    let Some(s) = scratch() else { return };
    let mut out = s.frames.out;
    if out > HEAD_LEN as u64 {
        out = HEAD_LEN as u64;
    }
    s.header.head_len = out as u16;
    s.header.ret = s.frames.wire as i64;
    s.header.seq = s.frames.cursor.seq;
    output(HEADER_LEN as u64 + out);
    let Some(s) = scratch() else { return };
    s.frames.cursor.seq = s.frames.cursor.seq.wrapping_add(1);
    s.frames.out = 0;
    s.frames.wire = 0;
    // FLAG_NEW and FLAG_LOST_BEFORE go with the first record only; each record of the call
    // carries its TCP accounting, as streams may start in any of them, and is ciphertext
    // if the first is.
    s.header.flags &= FLAG_FRAMES | FLAG_TCP | FLAG_CIPHER;
}

/// One step of a walk: the current iovec's next bytes of the current frame.
#[inline(never)]
extern "C" fn frame_step(_index: u64, ctx: *mut c_void) -> i64 {
    let _ = ctx;
    let Some(s) = scratch() else { return STOP };
    let w = &mut s.frames;
    if w.left == 0 {
        return STOP;
    }
    if w.index >= w.count {
        w.failed = 1; // the iovecs hold fewer bytes than the call moved
        return STOP;
    }
    if w.iov_user != 0 && (w.batch == u64::MAX || w.index < w.batch || w.index >= w.batch + MAX_IOV as u64) {
        let mut n = w.count - w.index;
        if n > MAX_IOV as u64 {
            n = MAX_IOV as u64;
        }
        let from = w.iov_user + w.index * 16;
        w.batch = w.index;
        // SAFETY: at most MAX_IOV iovecs into an array of MAX_IOV.
        if unsafe {
            bpf_probe_read_user(s.iov.as_mut_ptr() as *mut c_void, (n * 16) as u32, from as *const c_void)
        } != 0
        {
            s.frames.failed = 1;
            return STOP;
        }
    }
    let w = &mut s.frames;
    let slot = if w.iov_user == 0 { 0 } else { (w.index - w.batch) as usize & (MAX_IOV - 1) };
    let iov = s.iov[slot];
    if iov.len <= w.off {
        w.index += 1;
        w.off = 0;
        return CONTINUE;
    }
    let mut avail = iov.len - w.off;
    if avail > w.left {
        avail = w.left;
    }
    let src = iov.base + w.off;
    let room = (HEAD_LEN as u64).saturating_sub(w.out);
    let moved = if w.cursor.copy > 0 {
        let mut n = u64::from(w.cursor.copy);
        if n > avail {
            n = avail;
        }
        if n > room {
            n = room;
        }
        if n == 0 {
            return flush_step(s);
        }
        if !keep(s, src, n) {
            return STOP;
        }
        if s.frames.cursor.copy != COPY_ALL {
            s.frames.cursor.copy -= n as u32;
        }
        n
    } else if w.cursor.skip > 0 {
        let n = if u64::from(w.cursor.skip) < avail { u64::from(w.cursor.skip) } else { avail };
        w.cursor.skip -= n as u32;
        n
    } else {
        let mut n = FRAME_HEADER.saturating_sub(u64::from(w.cursor.header_len & 15));
        if n > avail {
            n = avail;
        }
        if n > room {
            return flush_step(s);
        }
        let at = (w.cursor.header_len & 15) as usize;
        // SAFETY: at < 16 and n <= 9 inside the 24-byte header.
        if n > FRAME_HEADER
            || unsafe {
                bpf_probe_read_user(
                    w.header.as_mut_ptr().add(at) as *mut c_void,
                    n as u32,
                    src as *const c_void,
                )
            } != 0
            || !keep(s, src, n)
        {
            s.frames.failed = 1;
            return STOP;
        }
        let w = &mut s.frames;
        w.cursor.header_len += n as u32;
        if u64::from(w.cursor.header_len) == FRAME_HEADER {
            let h = w.header;
            let len = u32::from(h[0]) << 16 | u32::from(h[1]) << 8 | u32::from(h[2]);
            let copy = if frame_payload_kept(h[3]) { len.min(KEPT_PAYLOAD) } else { 0 };
            (w.cursor.copy, w.cursor.skip, w.cursor.header_len) = (copy, len - copy, 0);
        }
        n
    };
    let w = &mut s.frames;
    w.off += moved;
    w.left -= moved;
    w.wire += moved;
    CONTINUE
}

/// The record is full: out it goes, and the walk goes on into the next.
#[inline(always)]
fn flush_step(s: &mut Scratch) -> i64 {
    if s.frames.out == 0 {
        s.frames.failed = 1; // no progress possible
        return STOP;
    }
    flush();
    CONTINUE
}

/// Appends `n` user bytes at `src` to the record's data.
#[inline(always)]
fn keep(s: &mut Scratch, src: u64, n: u64) -> bool {
    let at = s.frames.out & (HEAD_LEN as u64 - 1);
    let mut n = n;
    if n > HEAD_LEN as u64 {
        n = HEAD_LEN as u64;
    }
    // SAFETY: at < HEAD_LEN and n <= HEAD_LEN, inside DATA_CAP = 2 * HEAD_LEN.
    if n > 0
        && unsafe {
            bpf_probe_read_user(
                s.data.as_mut_ptr().add(at as usize) as *mut c_void,
                n as u32,
                src as *const c_void,
            )
        } != 0
    {
        s.frames.failed = 1;
        return false;
    }
    s.frames.out += n;
    true
}
