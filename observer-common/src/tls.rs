//! OpenSSL's side of the ABI: the calls and sessions the uprobes follow, and what a
//! handshake hands over for the daemon to decrypt (`--tls keys`).

/// OpenSSL calls in progress at once, one per thread inside `SSL_read`/`SSL_write`/
/// `SSL_do_handshake` (the kernel's `TLS_CALLS` table); a call that does not fit is counted
/// under `observer_kernel_map_full_total{map="tls"}`.
pub const MAX_TLS_CALLS: u32 = 4096;

/// Bytes of a session's memory a `Kind::Keys` record carries while a process's layout is
/// learned (OpenSSL 3.0.19 keeps the application traffic secrets at 1860 and 1924).
pub const KEYS_DUMP_LEN: usize = 4096;
/// `TLS_SECRETS_AT` value of a process whose sessions are followed by per-call uprobes
/// (`--tls keys` fell back): its handshakes hand over nothing.
pub const TLS_CALLS_ONLY: [u32; SECRETS_AT_LEN] = [u32::MAX; SECRETS_AT_LEN];

/// Offsets in a `TLS_SECRETS_AT` value: TLS 1.3's client and server application traffic
/// secrets, the `SSL_SESSION *`, the master key in the session, the client and server
/// randoms, the selected ALPN protocol (a pointer, its length after it).
pub const SECRETS_AT_LEN: usize = 7;

/// Bytes of a `Kind::Keys` record that carries the secrets.
pub const KEYS_SECRETS_LEN: usize = 208;

/// Set in the connection key of a TLS session not tied to a socket (see [`tls_key`]);
/// socket cookies and `socket_key`s never have it (cookies count up from 1, tgids < 2^22).
pub const TLS_KEY_BIT: u64 = 1 << 63;

/// Connection key of OpenSSL session `ssl` (an `SSL *`) of process `tgid`, for a session whose
/// socket is not known (a memory BIO, as node uses, or syscall hooks). Forked workers share
/// heap addresses, so the pointer alone is not unique: it is mixed with the tgid (collisions
/// of the 63-bit mix are as likely as a random 63-bit clash).
pub const fn tls_key(tgid: u32, ssl: u64) -> u64 {
    let mixed = ssl.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (tgid as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    TLS_KEY_BIT | (mixed >> 1)
}

/// What an OpenSSL call of a target was asked to do, and which socket it was seen moving
/// bytes on, from its uprobe to its uretprobe: the kernel's `TLS_CALLS` value, keyed by
/// pid_tgid (one call per thread at a time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the call stores the bytes it moved; 0 otherwise
    /// (the return value is the count).
    pub moved_ptr: u64,
    /// The bytes a write call was given (a write's plaintext is reported without its return).
    pub len: u64,
    /// The served connection (socket cookie, or `socket_key`) the call moved bytes on.
    pub conn: u64,
    /// When that connection's handshake completed (`--hooks sock`), for its wait; 0 if unknown.
    pub established_ns: u64,
    /// A [`TlsOp`] discriminant.
    pub op: u32,
    /// `TIE_*`: what the call was seen doing on a socket.
    pub tie: u32,
}

/// [`TlsCall::tie`]: no socket I/O seen inside the call (a memory BIO, or data buffered).
pub const TIE_NONE: u32 = 0;
/// Socket I/O on a socket that is not a served one: the target is a TLS client there.
pub const TIE_OUTBOUND: u32 = 1;
/// Socket I/O on a served connection already in progress.
pub const TIE_SERVED: u32 = 2;
/// Socket I/O on a served connection the kernel saw open, whose first bytes were these.
pub const TIE_SERVED_NEW: u32 = 3;

/// Which OpenSSL call a [`TlsCall`] is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsOp {
    Read = 1,
    Write = 2,
    /// `SSL_do_handshake`: moves no plaintext, but ties the session to its socket early.
    Handshake = 3,
}

/// Value of the kernel's `TLS_CONNS` table: an OpenSSL session of a target, keyed by
/// [`tls_key`], from its first call to `SSL_free`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsConn {
    /// The served connection the session was seen on (then its plaintext is reported as that
    /// connection's); 0 before, or never (memory BIOs).
    pub conn: u64,
    /// When that connection's handshake completed, if the kernel saw it; else 0.
    pub established_ns: u64,
    /// The process, to forget its sessions when it exits without freeing them.
    pub tgid: u32,
    /// `FLAG_*` and `STATE_*` bits, as a socket's.
    pub flags: u32,
}
