//! Every map the programs share with each other and with userspace.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{
    ConnState, FrameCursors, MAX_CONNECTIONS, MAX_TLS_CALLS, PORT_WORDS, PendingCall, RING_BYTES,
    SECRETS_AT_LEN, TARGET_WORDS, TlsCall, TlsConn, stat,
};

/// Target tgids, one bit each. Every program run on every hooked call of every process starts
/// by testing a bit here: an array lookup the verifier inlines, where a hash map lookup cost
/// ~33 ns a run. Userspace sets and clears bits with atomic operations on its mmap of the
/// map; the fork hook sets a child's with an atomic OR, so neither loses the other's bits.
#[map]
pub static TARGETS: Array<u64> = Array::with_max_entries(TARGET_WORDS, BPF_F_MMAPABLE);

/// `--hooks sock`: the local ports the targets listen on, one bit each. A connection is the
/// server side of a target when its local port is one of them (in one network namespace an
/// outbound connection is never given a port a listener holds). Set by userspace at attach
/// (from /proc) and by the LISTEN transition of a target's socket.
#[map]
pub static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, BPF_F_MMAPABLE);

/// When a process record last woke the daemon (`emit::emit_process`), in `bpf_ktime_get_ns`.
#[map]
pub static PROCESS_WOKEN: Array<u64> = Array::with_max_entries(1, 0);

/// `--hooks sock`: followed connections by socket cookie (never reused within a boot, unlike
/// a `struct sock *` or an fd). Entries come from the passive open's ESTABLISHED transition
/// or the first data record, and go at the CLOSE transition or `tcp_destroy_sock`, which the
/// kernel runs for every TCP socket, so nothing is left behind. A plain hash map, not an LRU:
/// an LRU evicts live connections without a word (tried: 3 of 10 requests lost uncounted
/// with a small table); this one refuses a connection when full, and says so
/// (`stat::SOCKETS_FULL`). Userspace sets its size (`--max-connections`).
#[map]
pub static CONNS: HashMap<u64, ConnState> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Syscall hooks: known sockets of targets, `socket_key(tgid, fd)` → `FLAG_*`/`STATE_*` bits.
/// Learned from accept and, at attach time, from /proc/PID/fd; forgotten at close.
/// Userspace sets its size (`--max-connections`).
#[map]
pub static SOCKETS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// `--hooks tracepoints`: arguments of syscalls in progress, keyed by pid_tgid (one syscall
/// per thread at a time).
#[map]
pub static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

/// OpenSSL calls of targets in progress (`probes::tls`), keyed by pid_tgid: one per thread.
#[map]
pub static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(MAX_TLS_CALLS, 0);

/// OpenSSL sessions of targets by `tls_key`, from their first call seen to `SSL_free`; those
/// of a process that exits without freeing them are removed by userspace. A plain hash map
/// for the reason CONNS is one. Userspace sets its size (`--max-connections`).
#[map]
pub static TLS_CONNS: HashMap<u64, TlsConn> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// HTTP/2 connections (`frames`): where each direction is inside its frames, keyed like
/// records (socket cookie, or `tls_key`). Made when a client preface is read; gone with the
/// socket (`tcp_destroy_sock`) or the session (`SSL_free`). Userspace sets its size
/// (`--max-connections`).
#[map]
pub static FRAME_CURSORS: HashMap<u64, FrameCursors> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-CPU counters, indexed by `observer_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Children of targets forked in a child PID namespace, by their pid in the initial namespace
/// (the only one the fork record gives): each becomes a target, under its namespaced tgid, at
/// its first hooked call. LRU: entries of threads (which never match) age out.
#[map]
pub static FORKED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// `--tls keys`: where each target process's OpenSSL keeps a session's secrets, learned by
/// the daemon (offsets from the `SSL *`: TLS 1.3's client and server application traffic
/// secrets, the `SSL_SESSION *`, the master key in the session, the client and server
/// randoms, the selected ALPN; `u32::MAX` where unknown). Without an entry, a handshake hands
/// over the session's memory, where the daemon looks for the TLS 1.3 secrets.
#[map]
pub static TLS_SECRETS_AT: HashMap<u32, [u32; SECRETS_AT_LEN]> = HashMap::with_max_entries(4096, 0);
