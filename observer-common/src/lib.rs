//! The kernel ↔ userspace ABI: every type that crosses the ring buffer or a map.
//!
//! `#[repr(C)]`, fixed-width integers only and no implicit padding, so both sides agree on
//! the layout byte for byte. Enums travel as `u32` and are decoded with `TryFrom`.
#![no_std]

mod frames;
mod tls;

pub use frames::*;
pub use tls::*;

/// Most bytes from the start of a read copied into a data event. Requests are small and
/// clients pipeline them: 100 pipelined GETs in one read must all be seen to be counted.
pub const READ_HEAD_LEN: usize = 8192;

/// Most bytes from the start of a write copied into a data event when the write is not the
/// first of a response (body writes): chunk-size lines sit at the start or the end.
pub const WRITE_HEAD_LEN: usize = 512;

/// Most bytes copied from the start of the first write after a read, which is where a
/// response's head begins: heads with many headers (CSP, Set-Cookie, CORS) run to several KiB.
/// What it costs, measured with the kernel's accounting (axum demo server, wrk -c8, two runs
/// each): a small response (`/api/status`, ~130 bytes) copies what it copied with 512, 2.7
/// vs 2.4–2.6 µs of program time a request, within noise; a response whose first write
/// carries 64 KiB of body after its head (`/images/…`) copies 7.7 KiB more into a record
/// 7.7 KiB longer: 5.3–5.5 vs 3.8–3.9 µs a request. Later writes of a response keep
/// `WRITE_HEAD_LEN`, so bodies written on their own stay cheap.
pub const RESPONSE_HEAD_LEN: usize = READ_HEAD_LEN;

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

/// Words of the `PORTS` bitmap, one bit per TCP port: the ports the targets listen on.
pub const PORT_WORDS: u32 = 65_536 / 64;

/// Word and bit of `port` in the `PORTS` bitmap.
pub const fn port_bit(port: u16) -> (u32, u64) {
    (port as u32 / 64, 1 << (port % 64))
}

/// The daemon drains the ring on a timer and is woken early only once this fraction of the
/// ring is pending (1/16: `WAKEUP_BYTES` in the kernel programs).
pub const WAKEUP_DIVISOR: u32 = 16;

/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const RING_BYTES: u32 = 8 << 20;

/// What a record is about. Explicit discriminants: this is wire format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Bytes a target moved on a connection; `call` says which call, and so which way.
    Data = 1,
    /// A connection the target accepted (the syscall hooks: accept returned `fd`), or
    /// (`Role::Client`, the socket hooks) one it opened whose handshake ended: `ret` 0 if it
    /// was established, else minus the socket's error (`ECONNREFUSED`, `ETIMEDOUT`,
    /// `EHOSTUNREACH`, ...; [`CONNECT_ABANDONED`] when the process closed it while it was
    /// connecting); `wait_us` the time from SYN sent to that end; `port` the peer's port and
    /// the head its address ([`PEER_ADDR_LEN`] bytes).
    Open = 2,
    /// A connection ended.
    Close = 3,
    /// A target forked a child (`child`).
    Fork = 4,
    /// A process (any) executed a new program (`tgid` is that process).
    Exec = 5,
    /// A target started listening on `port`.
    Listen = 6,
    /// A target's listener on `port` closed.
    Unlisten = 7,
    /// An OpenSSL session's handshake completed on served connection `conn` (`--tls keys`):
    /// the head is the session's memory (`KEYS_DUMP_LEN` bytes from its `SSL *`, while the
    /// process's layout is being learned) or its secrets (`KEYS_SECRETS_LEN`: TLS 1.3's
    /// client and server application traffic secrets, 48 bytes each, then TLS 1.2's master
    /// secret, 48, and the client and server randoms, 32 each; what the session does not
    /// have, or could not be read, is zeros).
    Keys = 8,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Data,
        Kind::Open,
        Kind::Close,
        Kind::Fork,
        Kind::Exec,
        Kind::Listen,
        Kind::Unlisten,
        Kind::Keys,
    ];
}

impl TryFrom<u8> for Kind {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        Kind::ALL.iter().copied().find(|k| *k as u8 == value).ok_or(value)
    }
}

/// Which call moved a data record's bytes. Explicit discriminants: this is wire format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// Not a data record.
    None = 0,
    Read = 1,
    Readv = 2,
    Recvfrom = 3,
    Recvmsg = 4,
    Write = 5,
    Writev = 6,
    Sendto = 7,
    Sendmsg = 8,
    Sendfile = 9,
    /// `--hooks sock`: bytes read by a call without a user buffer we follow (splice,
    /// recvmmsg, io_uring, ...): counted, not captured.
    Recv = 10,
    /// `--hooks sock`: bytes written the same way (sendmmsg, splice, io_uring, ...).
    Send = 11,
    /// Plaintext an OpenSSL `SSL_read`/`SSL_read_ex` of a target returned (uretprobe).
    TlsRead = 12,
    /// Plaintext a target handed to `SSL_write`/`SSL_write_ex` and the call took.
    TlsWrite = 13,
}

impl Call {
    /// Every call, for tables that map calls to hooks.
    pub const ALL: [Call; 14] = [
        Call::None,
        Call::Read,
        Call::Readv,
        Call::Recvfrom,
        Call::Recvmsg,
        Call::Write,
        Call::Writev,
        Call::Sendto,
        Call::Sendmsg,
        Call::Sendfile,
        Call::Recv,
        Call::Send,
        Call::TlsRead,
        Call::TlsWrite,
    ];

    /// Which way the call moved bytes, seen from the observed process.
    pub const fn direction(self) -> Direction {
        match self {
            Call::Read | Call::Readv | Call::Recvfrom | Call::Recvmsg | Call::Recv | Call::TlsRead => {
                Direction::In
            }
            Call::None
            | Call::Write
            | Call::Writev
            | Call::Sendto
            | Call::Sendmsg
            | Call::Sendfile
            | Call::Send
            | Call::TlsWrite => Direction::Out,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Call::None => "none",
            Call::Read => "read",
            Call::Readv => "readv",
            Call::Recvfrom => "recvfrom",
            Call::Recvmsg => "recvmsg",
            Call::Write => "write",
            Call::Writev => "writev",
            Call::Sendto => "sendto",
            Call::Sendmsg => "sendmsg",
            Call::Sendfile => "sendfile",
            Call::Recv => "recv",
            Call::Send => "send",
            Call::TlsRead => "SSL_read",
            Call::TlsWrite => "SSL_write",
        }
    }
}

impl TryFrom<u8> for Call {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        Call::ALL.iter().copied().find(|c| *c as u8 == value).ok_or(value)
    }
}

/// Which way a data record's bytes went, seen from the observed process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Bytes it read (a server's requests).
    In,
    /// Bytes it wrote (a server's responses).
    Out,
}

/// Set on the first event of a socket after events of it were dropped (ring buffer full):
/// userspace must resynchronise that connection.
pub const FLAG_LOST_BEFORE: u32 = 1;

/// Set on the first event of a new connection: the kernel saw it open, or found nothing read
/// or sent on it before this read (`stat::OPENS_UNSEEN`). Its first bytes read begin a
/// request; without it a connection new to userspace is picked up mid-stream.
pub const FLAG_NEW: u32 = 2;

/// Set on the records of an HTTP/2 connection (sock and OpenSSL paths): the data is the
/// direction's bytes walked frame by frame (see [`FrameCursor`]), not a head and a tail: every
/// 9-byte frame header, the payloads of the kinds [`frame_payload_kept`] says up to
/// [`KEPT_PAYLOAD`] bytes each, nothing of the rest (DATA). `ret` is the wire bytes the record
/// covers, `seq` its number in its direction.
pub const FLAG_FRAMES: u32 = 4;

/// Set on a record followed by a [`TcpChrono`] (after its head and tail): TCP's own accounting
/// of the connection when the call returned. Writes on followed sockets (`--hooks sock`) and
/// the close a server makes carry one.
pub const FLAG_TCP: u32 = 8;

/// A data record of a keyed TLS session's socket (`--tls keys`): its bytes are TLS records,
/// decrypted by the daemon with the secrets of the connection's `Kind::Keys` record. With
/// `FLAG_FRAMES` (a session whose ALPN is `h2`; on its `Kind::Keys` record too) the records
/// are the ciphertext whole, numbered like frame records.
pub const FLAG_CIPHER: u32 = 16;

/// A client `Kind::Open`'s `ret` (minus `ECANCELED`, which TCP never sets) when the process
/// closed the socket while it was connecting: its own connect timeout, or a race it dropped.
pub const CONNECT_ABANDONED: i64 = -125;

/// Bytes of a client `Kind::Open` record's head: the peer's IPv6 address (IPv4 mapped).
pub const PEER_ADDR_LEN: usize = 16;

/// The `FLAG_*` bits that travel in records; higher bits of a socket's state are the kernel's own.
pub const REPORTED_FLAGS: u32 = 0xffff;

/// Kernel-side socket state: the last data record of the socket went the requests' way (a
/// server's read, a client's write), so the next one the other way starts a response (and
/// gets the larger head capture).
pub const STATE_LAST_REQUEST: u32 = 1 << 16;

/// Socket state (`--hooks sock`): a target opened the connection (the client role): what it
/// writes are requests. Set at its connect (SYN_SENT), unless `--no-client`.
pub const STATE_CLIENT: u32 = 1 << 26;

/// Kernel-side socket state (`--hooks sock`): its close was reported already.
pub const STATE_CLOSE_SENT: u32 = 1 << 17;

/// Kernel-side socket state (`--hooks sock`): the socket carries TLS records for a hooked
/// TLS library, whose plaintext is reported instead (its own records are not sent).
pub const STATE_TLS: u32 = 1 << 18;

/// Kernel-side socket state (`--hooks sock`): a TLS socket refused a write inside an OpenSSL
/// write call (EAGAIN): the call failed with WANT_WRITE, and the target's next write call on
/// it is the retry OpenSSL requires, with the same bytes, already reported.
pub const STATE_TLS_RETRY: u32 = 1 << 24;

/// Socket state (`--tls keys`): the socket's OpenSSL session completed its handshake and its
/// keys went to the daemon (`Kind::Keys`): its ciphertext is reported (`FLAG_CIPHER`).
pub const STATE_TLS_KEYS: u32 = 1 << 25;

/// Kernel-side socket or session state: the connection is HTTP/2 (its client preface was
/// read): its records follow frames, with each direction's [`FrameCursor`] in `FRAME_CURSORS`.
pub const STATE_H2: u32 = 1 << 21;

/// Kernel-side socket or session state: the connection was first seen mid-stream (it carried
/// bytes before attach). Only such a connection is tested for HTTP/2 frames without a preface
/// (`frames::whole_frames`): one seen opening is HTTP/2 only by its preface.
pub const STATE_MIDSTREAM: u32 = 1 << 22;

/// Kernel-side socket or session state: the server's last write started with an HTTP/1.1
/// `101` status line (an `Upgrade`, h2c among them): a SETTINGS frame at the start of its next
/// write makes the connection HTTP/2, as a new connection's would (RFC 9113 §3.2: the server
/// sends its preface right after the 101, and may answer stream 1 before it reads the client's).
pub const STATE_UPGRADE: u32 = 1 << 23;

/// The side of a connection the observed process is on. Explicit discriminants: wire format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The process accepted the connection: what it reads are requests.
    Server = 1,
    /// The process opened the connection: what it writes are requests.
    Client = 2,
}

impl TryFrom<u8> for Role {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            1 => Ok(Role::Server),
            2 => Ok(Role::Client),
            other => Err(other),
        }
    }
}

/// Value of the kernel's `CONNS` table (`--hooks sock`), keyed by socket cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnState {
    /// `bpf_ktime_get_ns` when the passive open completed (ESTABLISHED); 0 if before attach.
    pub established_ns: u64,
    /// The key, kept in the value so a program holding the entry need not ask for it again.
    pub cookie: u64,
    /// `FLAG_*` and `STATE_*` bits.
    pub flags: u32,
    /// A client connection's process (its records are reported as that process's even when
    /// made in softirq); 0 for a served one.
    pub tgid: u32,
}

/// One record: a call of a target on one of its connections (`Kind::Data`), or an event
/// about a connection or a process. A data record is this header, then `head_len` bytes from
/// the start of what the call moved, then `tail_len` bytes from its end: records are only as
/// long as what they carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the call returned, or when the event happened.
    pub ts_ns: u64,
    /// Data: bytes the call moved (`FLAG_FRAMES`: the wire bytes the record covers). 0 else.
    pub ret: i64,
    /// The connection: the socket cookie (`--hooks sock`, never reused within a boot), or
    /// `socket_key(tgid, fd)` (the syscall hooks); 0 for process and listener events.
    pub conn: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The connection's fd in `tgid`, where known; -1 otherwise.
    pub fd: i32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// On a `FLAG_NEW` read: microseconds from the completion of the connection's handshake
    /// (the kernel's ESTABLISHED transition) to this read, saturating; else 0.
    pub wait_us: u32,
    /// `FLAG_FRAMES` records: the record's number in its direction (see `FrameCursor::seq`).
    pub seq: u32,
    /// `Kind::Fork`: the child's pid.
    pub child: u32,
    /// Bytes of the head that follow the header (≤ `HEAD_LEN`).
    pub head_len: u16,
    /// Bytes of the tail that follow the head (≤ `TAIL_LEN`). The bytes between head and tail
    /// (`ret - head_len - tail_len`) were not captured.
    pub tail_len: u16,
    /// A [`Kind`] discriminant.
    pub kind: u8,
    /// A [`Call`] discriminant (`Call::None` but for data).
    pub call: u8,
    /// A [`Role`] discriminant: which side of the connection the process is on.
    pub role: u8,
    pub reserved: u8,
    /// `Kind::Listen` / `Kind::Unlisten`: the port; a client `Kind::Open`: the peer's port.
    pub port: u16,
    pub reserved2: u16,
}

// `EventHeader::head_len` and `tail_len` are u16.
const _: () = assert!(HEAD_LEN <= u16::MAX as usize && TAIL_LEN <= HEAD_LEN);

/// Size of [`EventHeader`] on the wire.
pub const HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// TCP's accounting of a connection (`struct tcp_sock`) when a record's call returned, as
/// `tcp_get_info_chrono_stats` reports it (`ss -ti`): cumulative time in kernel ticks (jiffies)
/// with the ongoing interval added, so the difference of two is what TCP did in between.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpChrono {
    /// Busy with data sent and not yet acknowledged, neither window nor buffer limited
    /// (`chrono_stat[TCP_CHRONO_BUSY]`; `ss` counts all three in `busy`).
    pub in_flight: u32,
    /// Sending stopped by the receiver's window (`rwnd_limited`).
    pub rwnd_limited: u32,
    /// Sending stopped by our socket's send buffer (`sndbuf_limited`).
    pub sndbuf_limited: u32,
    /// Segments retransmitted so far (`total_retrans`).
    pub retrans: u32,
    /// Smoothed round-trip time in µs (`srtt_us >> 3`).
    pub srtt_us: u32,
    pub reserved: u32,
}

/// Size of [`TcpChrono`] on the wire.
pub const TCP_CHRONO_LEN: usize = core::mem::size_of::<TcpChrono>();

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
    /// OpenSSL calls or sessions not followed because their table was full.
    pub const TLS_FULL: u32 = 3;
    /// New connections whose open the state program did not record (before attach, or a
    /// skipped run), found new at their first read.
    pub const OPENS_UNSEEN: u32 = 4;
    /// HTTP/2 connections not followed frame by frame because `FRAME_CURSORS` was full.
    pub const FRAMES_FULL: u32 = 5;
    /// HTTP/2 calls whose frames could not be walked (bytes without a user buffer, too many
    /// iovecs or frames in one call): that direction's record numbers skip one.
    pub const FRAMES_UNWALKED: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Syscall arguments remembered between a syscall's entry and its exit, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    /// User pointer: the buffer, the iovec array, or the msghdr, by `call`.
    pub buf: u64,
    /// Iovec count for readv/writev (msghdr calls read theirs at exit).
    pub count: u64,
    pub fd: i32,
    /// A [`Call`] discriminant (a `u32` here: map values keep their alignment).
    pub call: u32,
    /// `FLAG_*` bits taken from the socket table at entry.
    pub flags: u32,
    /// Most bytes to copy from the start of what the call moves.
    pub head_cap: u32,
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
        assert_eq!(HEADER_LEN, 3 * 8 + 5 * 8, "64 bytes: every record carries one");
        assert_eq!(core::mem::size_of::<FrameCursors>(), 48);
        assert_eq!(core::mem::size_of::<ConnState>(), 24);
        assert_eq!(HEADER_LEN % 8, 0, "records stay 8-byte aligned");
        assert_eq!(core::mem::size_of::<PendingCall>(), 32);
        assert_eq!(core::mem::size_of::<TlsCall>(), 56);
        assert_eq!(core::mem::size_of::<TlsConn>(), 24);
        assert_eq!(TCP_CHRONO_LEN, 24);
    }

    #[test]
    fn kinds_and_calls_round_trip_through_u8() {
        for k in Kind::ALL {
            assert_eq!(Kind::try_from(k as u8), Ok(k));
        }
        for c in Call::ALL {
            assert_eq!(Call::try_from(c as u8), Ok(c));
        }
        assert_eq!(Kind::try_from(0), Err(0));
        assert_eq!(Call::try_from(99), Err(99));
    }

    #[test]
    fn tls_keys_differ_by_process_and_never_look_like_sockets() {
        let ssl = 0x5555_5555_a000;
        assert_ne!(tls_key(100, ssl), tls_key(101, ssl), "forked workers share heap addresses");
        assert_ne!(tls_key(100, ssl), tls_key(100, ssl + 16));
        assert_ne!(tls_key(100, ssl) & TLS_KEY_BIT, 0);
        assert_eq!(socket_key(4_194_303, -1) & TLS_KEY_BIT, 0);
    }

    #[test]
    fn socket_key_keeps_fd_and_tgid_apart() {
        assert_eq!(socket_key(1, 2), (1 << 32) | 2);
        assert_ne!(socket_key(1, 2), socket_key(2, 1));
    }
}
