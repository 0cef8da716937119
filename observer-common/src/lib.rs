//! The kernel ↔ userspace ABI: every type that crosses the ring buffer or a map.
//!
//! `#[repr(C)]`, fixed-width integers only and no implicit padding, so both sides agree on
//! the layout byte for byte. Enums travel as `u32` and are decoded with `TryFrom`.
#![no_std]

/// Most bytes from the start of a read copied into a data event. Requests are small and
/// clients pipeline them: 100 pipelined GETs in one read must all be seen to be counted.
pub const READ_HEAD_LEN: usize = 8192;

/// Most bytes from the start of a write copied into a data event: a status line and the usual
/// headers fit; longer heads are handled (and counted) as truncated captures.
pub const WRITE_HEAD_LEN: usize = 512;

/// The larger of the two head limits (a power of two).
pub const HEAD_LEN: usize = READ_HEAD_LEN;

/// Most bytes from the end of a read/write copied into a data event (not overlapping the
/// head). Enough to see the last chunk-size line and the `0\r\n\r\n` terminator of a
/// chunked body written in one syscall with a large chunk before them.
pub const TAIL_LEN: usize = 32;

/// Iovecs followed per vector syscall (readv/writev/recvmsg/sendmsg). Node writes a chunked
/// response as one writev of ~13 iovecs.
pub const MAX_IOV: usize = 16;

/// Words of the `TARGETS` bitmap, one bit per possible tgid: `PID_MAX_LIMIT` (4,194,304, the
/// kernel's hard limit on 64-bit) bits, 512 KiB. Fixed, so no pid is ever out of range.
pub const TARGET_WORDS: u32 = 4_194_304 / 64;

/// Word and bit of `tgid` in the `TARGETS` bitmap.
pub const fn target_bit(tgid: u32) -> (u32, u64) {
    (tgid / 64, 1 << (tgid % 64))
}

/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const RING_BYTES: u32 = 8 << 20;

/// Which syscall produced an event. Explicit discriminants: this is wire format.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Syscall {
    Read = 1,
    Readv = 2,
    Recvfrom = 3,
    Recvmsg = 4,
    Write = 5,
    Writev = 6,
    Sendto = 7,
    Sendmsg = 8,
    Sendfile = 9,
    Accept = 10,
    Close = 11,
    /// A target forked a child (the event's `fd` carries the child's pid).
    Fork = 12,
    /// A process (any) executed a new program (the event's `tgid` is that process).
    Exec = 13,
}

impl Syscall {
    /// Every kind, for tables that map kinds to tracepoints.
    pub const ALL: [Syscall; 13] = [
        Syscall::Read,
        Syscall::Readv,
        Syscall::Recvfrom,
        Syscall::Recvmsg,
        Syscall::Write,
        Syscall::Writev,
        Syscall::Sendto,
        Syscall::Sendmsg,
        Syscall::Sendfile,
        Syscall::Accept,
        Syscall::Close,
        Syscall::Fork,
        Syscall::Exec,
    ];

    /// What the event means for the connection.
    pub const fn direction(self) -> Direction {
        match self {
            Syscall::Read | Syscall::Readv | Syscall::Recvfrom | Syscall::Recvmsg => Direction::In,
            Syscall::Write | Syscall::Writev | Syscall::Sendto | Syscall::Sendmsg | Syscall::Sendfile => {
                Direction::Out
            }
            Syscall::Accept => Direction::Open,
            Syscall::Close => Direction::Closed,
            Syscall::Fork | Syscall::Exec => Direction::Process,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Syscall::Read => "read",
            Syscall::Readv => "readv",
            Syscall::Recvfrom => "recvfrom",
            Syscall::Recvmsg => "recvmsg",
            Syscall::Write => "write",
            Syscall::Writev => "writev",
            Syscall::Sendto => "sendto",
            Syscall::Sendmsg => "sendmsg",
            Syscall::Sendfile => "sendfile",
            Syscall::Accept => "accept",
            Syscall::Close => "close",
            Syscall::Fork => "fork",
            Syscall::Exec => "exec",
        }
    }
}

impl TryFrom<u32> for Syscall {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        Syscall::ALL.iter().copied().find(|s| *s as u32 == value).ok_or(value)
    }
}

/// Data flow on a socket, seen from the observed server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Bytes the server read (requests).
    In,
    /// Bytes the server wrote (responses).
    Out,
    /// A new connection (accept returned a fd).
    Open,
    /// The server closed the fd.
    Closed,
    /// Not about a socket: the target's process tree changed.
    Process,
}

/// Set on the first event of a socket after events of it were dropped (ring buffer full):
/// userspace must resynchronise that connection.
pub const FLAG_LOST_BEFORE: u32 = 1;

/// One syscall on a socket of a target process. A ring-buffer record is this header, then
/// `head_len` bytes from the start of what the syscall moved, then `tail_len` bytes from its
/// end: records are only as long as what they carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at syscall exit, or entry for `close`.
    pub ts_ns: u64,
    /// Syscall return value: bytes moved, or the new fd for accept.
    pub ret: i64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    /// A [`Syscall`] discriminant.
    pub syscall: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Bytes of the head that follow the header (≤ `HEAD_LEN`).
    pub head_len: u32,
    /// Bytes of the tail that follow the head (≤ `TAIL_LEN`). The bytes between head and tail
    /// (`ret - head_len - tail_len`) were not captured.
    pub tail_len: u32,
    pub reserved: u32,
}

/// Size of [`EventHeader`] on the wire.
pub const HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// Default size of the kernel's table of followed sockets and of the daemon's connection
/// table (`--max-connections`).
pub const MAX_CONNECTIONS: u32 = 65_536;

/// Indices of the per-CPU counters in the `STATS` map.
pub mod stat {
    /// Events dropped because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// Syscalls not followed because the in-flight syscall table was full.
    pub const PENDING_FULL: u32 = 1;
    /// Sockets not followed because the socket table was full.
    pub const SOCKETS_FULL: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Syscall arguments remembered between a syscall's entry and its exit, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// User pointer: the buffer, the iovec array, or the msghdr, by `syscall`.
    pub buf: u64,
    /// Iovec count for readv/writev (msghdr calls read theirs at exit).
    pub count: u64,
    pub fd: i32,
    pub syscall: u32,
    /// `FLAG_*` bits taken from the socket table at entry.
    pub flags: u32,
    pub reserved: u32,
}

/// Key of the socket table: `(tgid << 32) | fd`.
pub const fn socket_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn event_has_no_padding() {
        assert_eq!(HEADER_LEN, 8 + 8 + 4 * 8);
        assert_eq!(HEADER_LEN % 8, 0, "records stay 8-byte aligned");
        assert_eq!(core::mem::size_of::<PendingCall>(), 32);
    }

    #[test]
    fn syscall_round_trips_through_u32() {
        for s in Syscall::ALL {
            assert_eq!(Syscall::try_from(s as u32), Ok(s));
        }
        assert_eq!(Syscall::try_from(0), Err(0));
        assert_eq!(Syscall::try_from(99), Err(99));
    }

    #[test]
    fn socket_key_keeps_fd_and_tgid_apart() {
        assert_eq!(socket_key(1, 2), (1 << 32) | 2);
        assert_ne!(socket_key(1, 2), socket_key(2, 1));
    }
}
