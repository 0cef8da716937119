//! The kernel ↔ userspace ABI: every type that crosses the ring buffer or a map.
//!
//! `#[repr(C)]`, fixed-width integers only and no implicit padding, so both sides agree on
//! the layout byte for byte. Enums travel as `u32` and are decoded with `TryFrom`.
#![no_std]

/// Bytes of a read/write buffer copied into each data event. A request line plus the usual
/// headers fits; longer heads are handled (and counted) as truncated captures in userspace.
pub const HEAD_LEN: usize = 512;

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
}

impl Syscall {
    /// Every kind, for tables that map kinds to tracepoints.
    pub const ALL: [Syscall; 11] = [
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
    ];

    /// What the event means for the connection.
    pub const fn direction(self) -> Direction {
        match self {
            Syscall::Read | Syscall::Readv | Syscall::Recvfrom | Syscall::Recvmsg => Direction::In,
            Syscall::Write
            | Syscall::Writev
            | Syscall::Sendto
            | Syscall::Sendmsg
            | Syscall::Sendfile => Direction::Out,
            Syscall::Accept => Direction::Open,
            Syscall::Close => Direction::Closed,
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
        }
    }
}

impl TryFrom<u32> for Syscall {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        Syscall::ALL
            .iter()
            .copied()
            .find(|s| *s as u32 == value)
            .ok_or(value)
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
}

/// Set on the first event of a socket after events of it were dropped (ring buffer full):
/// userspace must resynchronise that connection.
pub const FLAG_LOST_BEFORE: u32 = 1;

/// One syscall on a socket of a target process, as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
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
    /// How many bytes of `head` are valid (≤ `HEAD_LEN`, ≤ `ret`).
    pub captured: u32,
    pub head: [u8; HEAD_LEN],
}

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
    pub fd: i32,
    pub syscall: u32,
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
        assert_eq!(core::mem::size_of::<Event>(), 8 + 8 + 4 * 6 + HEAD_LEN);
        assert_eq!(core::mem::size_of::<PendingCall>(), 16);
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
