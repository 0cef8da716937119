//! Ring-buffer records: data records (header, head, tail) and header-only control records.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use observer_common::{
    Call, Direction, EventHeader, FLAG_LOST_BEFORE, FLAG_NEW, FLAG_TCP, HEADER_LEN, Kind, READ_HEAD_LEN,
    REPORTED_FLAGS, RESPONSE_HEAD_LEN, RING_BYTES, Role, STATE_CLIENT, STATE_CLOSE_SENT, STATE_H2,
    STATE_LAST_REQUEST, STATE_MIDSTREAM, TCP_CHRONO_LEN, TcpChrono, WAKEUP_DIVISOR, WRITE_HEAD_LEN, stat,
};

use crate::{
    capture::{Buffer, capture},
    frames,
    maps::{EVENTS, PROCESS_WOKEN, STATS},
    scratch::{DATA_CAP, Scratch, scratch},
    target::{now, patched},
};

/// What a record says: its kind, and for data who made which call on which connection and
/// what it returned.
#[derive(Clone, Copy)]
pub struct Record {
    pub kind: Kind,
    pub call: Call,
    pub conn: u64,
    pub id: u64,
    pub tgid: u32,
    pub fd: i32,
    /// `FLAG_*` bits to report.
    pub flags: u32,
    pub ret: i64,
    /// See `EventHeader::wait_us`.
    pub wait_us: u32,
    /// `Kind::Fork`: the child's pid.
    pub child: u32,
    /// `Kind::Listen` / `Unlisten`: the port; a client `Kind::Open`: the peer's.
    pub port: u16,
    pub role: Role,
}

impl Record {
    /// A record of `kind` by task `id` of `tgid`, about `conn`; everything else empty.
    #[inline(always)]
    pub const fn of(kind: Kind, conn: u64, id: u64, tgid: u32) -> Record {
        Record {
            kind,
            call: Call::None,
            conn,
            id,
            tgid,
            fd: -1,
            flags: 0,
            ret: 0,
            wait_us: 0,
            child: 0,
            port: 0,
            role: Role::Server,
        }
    }

    #[inline(always)]
    pub fn header(&self, head_len: u64, tail_len: u64) -> EventHeader {
        EventHeader {
            ts_ns: now(),
            ret: self.ret,
            conn: self.conn,
            tgid: self.tgid,
            tid: self.id as u32,
            fd: self.fd,
            flags: self.flags,
            head_len: head_len as u16,
            tail_len: tail_len as u16,
            wait_us: self.wait_us,
            seq: 0,
            child: self.child,
            kind: self.kind as u8,
            call: self.call as u8,
            role: self.role as u8,
            reserved: 0,
            port: self.port,
            reserved2: 0,
        }
    }
}

#[inline(always)]
pub fn bump(index: u32) -> u64 {
    match STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; programs do not migrate while running.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// A socket's state word (`FLAG_*` to report, `STATE_*` kept) as a data record of
/// `direction` passes: takes the flags to report, notes whether this record went the
/// requests' way (a server's read, a client's write: `STATE_CLIENT`), and says how much of
/// the call's start to copy. The first record the other way after it starts a response, so
/// it gets room for a whole head (`RESPONSE_HEAD_LEN`); later ones are body, whose chunk-size
/// lines sit at their start or end (`WRITE_HEAD_LEN`).
///
/// # Safety
/// `state` points into a map value (the verifier checks it too).
#[inline(always)]
pub unsafe fn advance(state: *mut u32, direction: Direction) -> (u32, u64) {
    // SAFETY: per the contract; a racing writer can only set FLAG_LOST_BEFORE, which at worst
    // is reported one record late.
    let old = unsafe { *state };
    let requesting = (direction == Direction::In) != (old & STATE_CLIENT != 0);
    let cap = match requesting {
        true => READ_HEAD_LEN,
        false if old & STATE_LAST_REQUEST != 0 => RESPONSE_HEAD_LEN,
        false => WRITE_HEAD_LEN,
    } as u64;
    let kept = old & !(REPORTED_FLAGS | STATE_LAST_REQUEST | STATE_CLOSE_SENT);
    let new = if requesting { kept | STATE_LAST_REQUEST } else { kept };
    if new != old {
        unsafe { *state = new };
    }
    (old & REPORTED_FLAGS, cap)
}

/// Emits the data record of a call that moved `record.ret > 0` bytes: the header, up to `cap`
/// bytes from the start of `buffer` and up to `TAIL_LEN` from its end. `state` is the
/// socket's state word, flagged if the record does not fit in the ring. With `h2` (the
/// connection's state and its end are ours to keep: socket hooks, OpenSSL), a read that
/// starts with the client preface makes the connection HTTP/2, whose calls are walked frame
/// by frame from then on (`frames`).
#[inline(always)]
pub fn emit_data<C: EbpfContext>(
    ctx: &C,
    record: &Record,
    buffer: Buffer,
    cap: u64,
    state: *mut u32,
    h2: bool,
) {
    let direction = record.call.direction();
    // SAFETY: `state` points into a map value.
    if h2 && unsafe { *state } & STATE_H2 != 0 {
        frames::emit_frames(record.header(0, 0), buffer, direction);
        return;
    }
    let (head_len, tail_len) = capture(buffer, record.ret as u64, cap);
    // HTTP/2 from here: the client preface read, a new connection's server speaking first, or
    // (a connection from before attach) a read of whole frames.
    // SAFETY: as above.
    let midstream = h2 && unsafe { *state } & STATE_MIDSTREAM != 0;
    // A client (its own connection) writes the preface; a server reads it. Either may see
    // the server's SETTINGS first (a server speaks first; grpc's does).
    let client = record.role == Role::Client;
    let (h2_starts, joined) = match direction {
        Direction::Out if client => (frames::starts_with_preface(head_len), false),
        Direction::In if client => {
            (record.flags & FLAG_NEW != 0 && frames::starts_with_settings(head_len), false)
        }
        Direction::In if frames::starts_with_preface(head_len) => (true, false),
        Direction::In => (midstream && frames::whole_frames(head_len, record.ret as u64), true),
        // SAFETY: as above.
        _ if h2 && unsafe { frames::after_upgrade(state, head_len) } => (true, false),
        _ => (record.flags & FLAG_NEW != 0 && frames::starts_with_settings(head_len), false),
    };
    // SAFETY: as above.
    if h2 && h2_starts && unsafe { frames::start(record.conn, state, joined, client) } {
        frames::emit_frames(record.header(0, 0), buffer, direction);
        return;
    }
    let Some(scratch) = scratch() else {
        return;
    };
    scratch.header = record.header(head_len, tail_len);
    let size = with_tcp(scratch, HEADER_LEN as u64 + head_len + tail_len);
    // SAFETY: `size` bytes from the start of the scratch slot, which is larger.
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const Scratch as *const u8, size as usize) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flag()).is_err() {
        ring_full(ctx, state);
    }
}

/// Most bytes of a record assembled in the scratch slot: header, data, TCP accounting.
const RECORD_CAP: u64 = (HEADER_LEN + DATA_CAP + TCP_CHRONO_LEN) as u64;

/// The length of the scratch record whose header and data take `len` bytes, once the slot's
/// `TcpChrono` is appended after them (if the header has `FLAG_TCP`); at most `RECORD_CAP`.
#[inline(always)]
fn with_tcp(scratch: &mut Scratch, len: u64) -> u64 {
    let mut at = len;
    if at > (HEADER_LEN + DATA_CAP) as u64 {
        at = (HEADER_LEN + DATA_CAP) as u64;
    }
    if scratch.header.flags & FLAG_TCP == 0 {
        return at;
    }
    let tcp = scratch.tcp;
    // SAFETY: `at + TCP_CHRONO_LEN` ≤ `RECORD_CAP` bytes, inside the slot (its iovec and walk
    // areas follow the data); unaligned stores are fine on a map value.
    unsafe {
        let dst = (scratch as *mut Scratch as *mut u8).add(at as usize) as *mut TcpChrono;
        core::ptr::write_unaligned(dst, tcp);
    }
    at + TCP_CHRONO_LEN as u64
}

/// Sends the first `len` bytes of the scratch record (header and data); a record that does not
/// fit is counted (the `FLAG_FRAMES` records' numbers tell the daemon which).
#[inline(always)]
pub fn output(len: u64) {
    let Some(scratch) = scratch() else { return };
    let mut size = with_tcp(scratch, len);
    if size > RECORD_CAP {
        size = RECORD_CAP;
    }
    // SAFETY: `size` bytes from the start of the scratch slot, which is larger.
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const Scratch as *const u8, size as usize) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flag()).is_err() {
        bump(stat::RING_FULL);
    }
}

/// A header-only record (accept, close, listen, a TLS session's end). `state`, if not null, is flagged
/// when the record does not fit.
#[inline(always)]
pub fn emit_control<C: EbpfContext>(ctx: &C, record: &Record, state: *mut u32) {
    let header = record.header(0, 0);
    if EVENTS.output::<EventHeader>(&header, wakeup_flag()).is_err() {
        ring_full(ctx, state);
    }
}

/// A header-only record followed by the connection's TCP accounting (`FLAG_TCP`): a close.
#[inline(always)]
pub fn emit_control_tcp<C: EbpfContext>(ctx: &C, record: &Record, tcp: TcpChrono, state: *mut u32) {
    let header = EventHeader { flags: record.flags | FLAG_TCP, ..record.header(0, 0) };
    if EVENTS.output::<WithTcp>(&WithTcp { header, tcp }, wakeup_flag()).is_err() {
        ring_full(ctx, state);
    }
}

/// A header and the TCP accounting after it, built on the stack (closes run in softirq too,
/// where the per-CPU scratch slot may be in use by the task they interrupted).
#[repr(C)]
struct WithTcp {
    header: EventHeader,
    tcp: TcpChrono,
}

/// A fork or exec record, which wakes the daemon at once: what it does with one races the
/// process (a `--exe` program found only after it forked its workers leaves them unfollowed;
/// a new worker's OpenSSL uprobes come from the daemon), while data records wait for the
/// drain, which backs off to 50 ms when the targets are quiet. At most one such wakeup per
/// `PROCESS_WAKEUP_GAP_NS`: a server that starts a thread per connection (each a fork
/// record) or a host busy with execs (`--exe` reports them all) must not cost the daemon a
/// context switch each; a drain that handles a process record drains again after 2 ms,
/// so the records in between wait no longer than that.
#[inline(always)]
pub fn emit_process<C: EbpfContext>(ctx: &C, record: &Record) {
    let header = record.header(0, 0);
    let flag = match PROCESS_WOKEN.get_ptr_mut(0) {
        // SAFETY: the map's one u64; racing writers store nearly the same time.
        Some(woken) if header.ts_ns.wrapping_sub(unsafe { *woken }) >= PROCESS_WAKEUP_GAP_NS => {
            unsafe { *woken = header.ts_ns };
            BPF_RB_FORCE_WAKEUP
        }
        _ => wakeup_flag(),
    };
    if EVENTS.output::<EventHeader>(&header, flag).is_err() {
        ring_full(ctx, core::ptr::null_mut());
    }
}

/// See `emit_process`: the daemon's shortest drain interval.
const PROCESS_WAKEUP_GAP_NS: u64 = 2_000_000;

/// Waking the reader for every record costs the daemon a context switch per call at
/// saturation. Records are submitted without a wakeup until `WAKEUP_BYTES` are pending (a
/// sixteenth of the ring; userspace sets it with the ring's size); the daemon also drains
/// on a timer (`DrainPace` in `run.rs`: 2 ms while busy, up to 50 ms when quiet).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = (RING_BYTES / WAKEUP_DIVISOR) as u64;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

#[inline(always)]
pub fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= patched(&WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Counts a dropped record and flags its socket so userspace resyncs that connection.
#[inline(always)]
fn ring_full<C: EbpfContext>(ctx: &C, state: *mut u32) {
    if bump(stat::RING_FULL) == 1 {
        warn!(ctx, "ring buffer full: dropping events (see observer_events_lost_total)");
    }
    if !state.is_null() {
        // SAFETY: a u32 in a map value; a racing writer can only set the same bit.
        unsafe { *state |= FLAG_LOST_BEFORE };
    }
}
