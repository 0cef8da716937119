//! `--hooks sock` (the default): BTF tracepoints that fire only for socket I/O and TCP state
//! changes, so no syscall tracepoint is enabled and the rest of the host pays nothing.
//!
//! - `sock_recv_length` / `sock_send_length` (`sock_recvmsg_nosec` / `sock_sendmsg_nosec`,
//!   Linux ≥ 6.3): every read, write, recv*, send*, sendfile and splice chunk on a socket,
//!   after the bytes moved. Which syscall it was, and its buffer, come from the task's saved
//!   user registers.
//! - `inet_sock_set_state`: a passive open completing (the connection is new), a target's
//!   connect starting (SYN_SENT) and ending (ESTABLISHED, or CLOSE with the socket's error),
//!   the server closing (FIN_WAIT1 / LAST_ACK), a target's listener appearing or closing.
//! - `tcp_destroy_sock`: the end of every other connection (a reset among them), once the
//!   server has let go of the socket.
//!
//! Connections are keyed by socket cookie. A target's TCP connections are followed on the
//! server side (their local port is one a target listens on) and, unless `--no-client`, on
//! the client side from their connect (`STATE_CLIENT`: what the target writes are requests).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_get_socket_cookie, bpf_jiffies64, bpf_task_pt_regs},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use observer_common::{
    CONNECT_ABANDONED, Call, ConnState, Direction, EventHeader, FLAG_CIPHER, FLAG_NEW, FLAG_TCP, Kind,
    PEER_ADDR_LEN, READ_HEAD_LEN, Role, STATE_CLIENT, STATE_CLOSE_SENT, STATE_H2, STATE_MIDSTREAM, STATE_TLS,
    STATE_TLS_KEYS, STATE_TLS_RETRY, TlsCall, TlsOp, stat,
};

use super::{
    CLIENTS, MSG_PEEK, Served, TLS_KEYS, data_call, is_session_socket, socket_io_inside, tls_write_inside,
    waited_us,
};
use crate::{
    capture::Buffer,
    emit::{Record, advance, bump, emit_control, emit_control_tcp, emit_data, wakeup_flag},
    frames,
    maps::{CONNS, EVENTS, TLS_CALLS},
    scratch::scratch,
    sk::{
        AF_INET, AF_INET6, IPPROTO_TCP, SK_COOKIE, SK_ERR, SK_FAMILY, SK_NUM, SK_PROTOCOL, SK_SOCKET,
        SOCKET_FILE, TCP_BYTES_RECEIVED, TCP_BYTES_SENT, TCP_CLOSE, TCP_COPIED_SEQ, TCP_ESTABLISHED,
        TCP_FIN_WAIT1, TCP_LAST_ACK, TCP_LISTEN, TCP_LSNDTIME, TCP_RCV_NXT, TCP_SYN_RECV, TCP_SYN_SENT,
        TICK_NS, field, peer, tcp_chrono,
    },
    target::{add_listened, current, is_listened, is_target, now, patched},
};

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    socket_io(&ctx, Direction::In);
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    socket_io(&ctx, Direction::Out);
    0
}

/// `(struct sock *sk, int ret, int flags)`: `ret` bytes moved on `sk`.
#[inline(always)]
fn socket_io(ctx: &BtfTracePointContext, direction: Direction) {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return;
    }
    let sk: *const u8 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    if direction == Direction::In && ctx.arg::<u64>(2) & MSG_PEEK != 0 {
        return; // a peek's bytes are read again
    }
    if ret <= 0 {
        if ret == -EAGAIN && direction == Direction::Out {
            refused_write(ctx, id, sk);
        }
        return; // EAGAIN, EOF and errors move no bytes
    }
    let read = if direction == Direction::In { ret as u64 } else { 0 };
    // Socket I/O inside an OpenSSL call is ciphertext: it only ties the call to its socket,
    // or (a write call) reports the call's plaintext.
    if let Some(call) = TLS_CALLS.get_ptr_mut(&id) {
        // SAFETY: `sk` is the tracepoint's `struct sock *`; the pointers are map values.
        // A target's own connection (the client role) is tied to its session like a served
        // one: its plaintext, or its keys, are that connection's.
        let served = unsafe { followed_connection(sk, read) }.map(|conn| unsafe {
            Served {
                state: &raw mut (*conn).flags,
                conn: (*conn).cookie,
                established_ns: (*conn).established_ns,
            }
        });
        // A keyed socket (`--tls keys`) reports its ciphertext below, inside a call or not
        // (its process moved to per-call uprobes after it was keyed).
        // SAFETY: a field of a map value.
        let keyed = served.as_ref().is_some_and(|s| unsafe { *s.state } & STATE_TLS_KEYS != 0);
        // SAFETY: `call` and the state in `served` are map values.
        if !keyed && unsafe { in_tls_call(ctx, id, tgid, call, served, direction, ret, sk) } {
            return;
        }
    }
    socket_data(ctx, sk, direction, ret, read);
}

/// Socket I/O of a thread inside an OpenSSL call: ties the call to its socket, reports a
/// write call's plaintext at its first socket write, or (`--tls keys`) a handshake's reads as
/// ciphertext. False if the bytes are not the call's (another socket's: the call's end was
/// not seen), which then count as that socket's own.
///
/// # Safety
/// `call` and `served.state` point into map values; `sk` is the tracepoint's `struct sock *`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn in_tls_call(
    ctx: &BtfTracePointContext,
    id: u64,
    tgid: u32,
    call: *mut TlsCall,
    served: Option<Served>,
    direction: Direction,
    ret: i32,
    sk: *const u8,
) -> bool {
    // SAFETY: as above.
    if unsafe { (*call).op } != TlsOp::Write as u32 {
        // `--tls keys`: what a handshake reads is reported, ciphertext as it is: a server
        // that reads ahead (nginx) takes the first request with the handshake's last
        // record.
        if let Some(served) = &served
            && direction == Direction::In
            // SAFETY: as above.
            && unsafe { (*call).op } == TlsOp::Handshake as u32
            && patched(&TLS_KEYS) != 0
            // (A client's handshake reads are the server's records: nothing of its requests.)
            && unsafe { *served.state } & STATE_CLIENT == 0
        {
            let (call, fd, buffer) = the_call(direction);
            let record = Record {
                call,
                fd,
                flags: FLAG_CIPHER,
                ret: i64::from(ret),
                ..Record::of(Kind::Data, served.conn, id, tgid)
            };
            emit_data(ctx, &record, buffer, READ_HEAD_LEN as u64, served.state, false);
        }
        // SAFETY: as above.
        unsafe { socket_io_inside(call, served) };
        return true;
    }
    // A write call (no return probe): its first write on the session's socket reports
    // its plaintext and ends it; a read there is ciphertext inside it. Bytes of another
    // socket are that socket's own: the call's end was not seen.
    if let Some(served) = &served {
        if direction == Direction::Out {
            // SAFETY: as above; `sk` is a TCP socket.
            let tcp = unsafe { tcp_chrono(sk) };
            // SAFETY: as above.
            if unsafe { tls_write_inside(ctx, id, call, served, false, tcp) } {
                return true;
            }
        // SAFETY: as above.
        } else if is_session_socket(unsafe { &*call }, served.conn) {
            return true;
        }
    }
    let _ = TLS_CALLS.remove(&id);
    false
}

/// Bytes moved on a socket outside an OpenSSL call (or a keyed one's ciphertext): a data
/// record of its connection, if it is a served one.
#[inline(always)]
fn socket_data(ctx: &BtfTracePointContext, sk: *const u8, direction: Direction, ret: i32, read: u64) {
    let (id, tgid) = current();
    // SAFETY: `sk` is the tracepoint's `struct sock *`.
    let Some(conn) = (unsafe { followed_connection(sk, read) }) else {
        return;
    };
    // SAFETY: a field of a map value.
    let keyed = unsafe { (*conn).flags } & STATE_TLS_KEYS != 0;
    // SAFETY: a field of a map value.
    if !keyed && unsafe { (*conn).flags } & STATE_TLS != 0 {
        return; // ciphertext outside the calls (SSL_shutdown's close_notify)
    }
    // SAFETY: a field of a map value.
    let cookie = unsafe { (*conn).cookie };
    // SAFETY: a field of a map value.
    let state = unsafe { &raw mut (*conn).flags };
    // SAFETY: as above.
    let (mut flags, cap) = unsafe { advance(state, direction) };
    // A write carries TCP's accounting, which a response's first and last writes bracket.
    if direction == Direction::Out
        && let Some(s) = scratch()
        // SAFETY: `sk` is the tracepoint's `struct sock *`, of a TCP socket.
        && let Some(tcp) = unsafe { tcp_chrono(sk) }
    {
        s.tcp = tcp;
        flags |= FLAG_TCP;
    }
    let wait_us = if flags & FLAG_NEW != 0 && direction == Direction::In {
        // SAFETY: a field of a map value.
        waited_us(unsafe { (*conn).established_ns })
    } else {
        0
    };
    if keyed {
        flags |= FLAG_CIPHER;
    }
    let (call, fd, buffer) = the_call(direction);
    // SAFETY: a field of a map value.
    let role = if unsafe { *state } & STATE_CLIENT != 0 { Role::Client } else { Role::Server };
    let record = Record {
        call,
        fd,
        flags,
        ret: i64::from(ret),
        wait_us,
        role,
        ..Record::of(Kind::Data, cookie, id, tgid)
    };
    // TLS records are not walked as frames: the daemon decrypts them, and walks the frames of
    // an h2 session (`STATE_H2` since its handshake: every byte copied).
    // SAFETY: a field of a map value.
    let h2 = !keyed || unsafe { *state } & STATE_H2 != 0;
    emit_data(ctx, &record, buffer, cap, state, h2);
}

/// `EAGAIN` as the socket tracepoints report it: a non-blocking socket with a full buffer.
const EAGAIN: i32 = 11;

/// The socket refused a write (EAGAIN). On a TLS socket that is OpenSSL's (WANT_WRITE): the
/// write call fails and is retried with the same bytes, which must not count again.
#[inline(always)]
fn refused_write(ctx: &BtfTracePointContext, id: u64, sk: *const u8) {
    // SAFETY: `sk` is the tracepoint's `struct sock *`; the cookie is its atomic64_t counter.
    let cookie: u64 = unsafe { field(sk, &SK_COOKIE) };
    // Only a socket already followed: a refused write moves nothing to start following.
    let Some(conn) = CONNS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: fields of a map value.
    let served = unsafe {
        Served { state: &raw mut (*conn).flags, conn: (*conn).cookie, established_ns: (*conn).established_ns }
    };
    if let Some(call) = TLS_CALLS.get_ptr_mut(&id)
        // SAFETY: a map value.
        && unsafe { (*call).op } == TlsOp::Write as u32
        // SAFETY: as above.
        && unsafe { tls_write_inside(ctx, id, call, &served, true, None) }
    {
        return;
    }
    // SAFETY: as above.
    unsafe {
        if *served.state & STATE_TLS != 0 {
            *served.state |= STATE_TLS_RETRY; // refused after the call's first write
        }
    }
}

/// The entry of `sk` if it is a followed connection of a target: the server side of one (a
/// user-space TCP socket, owned by a file, on a port a target listens on), one a target
/// opened (`connecting`), or one already followed whose port is gone (a reset processed
/// inside the server's own send unhashes the socket and zeroes its port before that send's
/// tracepoint fires: seen ~25 in 12,000 responses when wrk closed its connections). `read`:
/// the bytes this call read (0 for a write).
///
/// # Safety
/// `sk` must be a BTF-typed `struct sock *`.
#[inline(always)]
unsafe fn followed_connection(sk: *const u8, read: u64) -> Option<*mut ConnState> {
    let family: u16 = unsafe { field(sk, &SK_FAMILY) };
    let protocol: u16 = unsafe { field(sk, &SK_PROTOCOL) };
    if (family != AF_INET && family != AF_INET6) || protocol != IPPROTO_TCP {
        return None;
    }
    if !is_listened(unsafe { field(sk, &SK_NUM) }) {
        // Only a socket with a cookie can have an entry; none is made for it here.
        let cookie: u64 = unsafe { field(sk, &SK_COOKIE) };
        return if cookie == 0 { None } else { CONNS.get_ptr_mut(&cookie) };
    }
    let socket: *const u8 = unsafe { field(sk, &SK_SOCKET) };
    if socket.is_null() || unsafe { field::<*const u8>(socket, &SOCKET_FILE) }.is_null() {
        return None;
    }
    // SAFETY: the helper takes a socket pointer, which `sk` is.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    unsafe { conn_state(sk, cookie, read) }
}

/// The connection's entry, made on its first record if its open was not seen. A connection
/// whose first bytes this read took is new all the same (see `unseen_open`); any other one
/// predates attach and is picked up mid-stream. One that does not fit is not followed; a new
/// one is counted then (one from before attach is not: its every record would count again).
///
/// # Safety
/// `sk` must be a BTF-typed `struct sock *` of a TCP socket.
#[inline(always)]
unsafe fn conn_state(sk: *const u8, cookie: u64, read: u64) -> Option<*mut ConnState> {
    if let Some(conn) = CONNS.get_ptr_mut(&cookie) {
        return Some(conn);
    }
    let conn = match unsafe { unseen_open(sk, read) } {
        Some(established_ns) => ConnState { established_ns, cookie, flags: FLAG_NEW, tgid: 0 },
        None => ConnState { cookie, flags: STATE_MIDSTREAM, ..ConnState::default() },
    };
    let _ = CONNS.insert(&cookie, &conn, u64::from(BPF_NOEXIST));
    let entry = CONNS.get_ptr_mut(&cookie);
    if conn.flags & FLAG_NEW != 0 {
        bump(if entry.is_some() { stat::OPENS_UNSEEN } else { stat::SOCKETS_FULL });
    }
    entry
}

/// When the handshake of `sk` completed, if `sk` is a connection whose open `opened` did not
/// record and whose first bytes this read of `read` bytes took: nothing read before, nothing
/// sent (a connection accepted before attach but not yet read, or one whose ESTABLISHED
/// transition the state program did not run for). The time is the socket's own: `lsndtime`,
/// set when the kernel made the socket at the handshake's end and unchanged until it sends
/// data, in jiffies, so at the tick's resolution (4 ms at HZ=250; a lower bound).
///
/// # Safety
/// `sk` must be a `struct sock *` of a TCP socket (a `struct tcp_sock`).
#[inline(always)]
unsafe fn unseen_open(sk: *const u8, read: u64) -> Option<u64> {
    if read == 0 {
        return None;
    }
    // SAFETY: fields of the `tcp_sock` that `sk` is, at offsets from the kernel's BTF.
    let at = |offset: &'static u64| unsafe { sk.add(patched(offset) as usize) };
    let sent: u64 = unsafe { bpf_probe_read_kernel(at(&TCP_BYTES_SENT) as *const u64) }.ok()?;
    let received: u64 = unsafe { bpf_probe_read_kernel(at(&TCP_BYTES_RECEIVED) as *const u64) }.ok()?;
    let rcv_nxt: u32 = unsafe { bpf_probe_read_kernel(at(&TCP_RCV_NXT) as *const u32) }.ok()?;
    let copied: u32 = unsafe { bpf_probe_read_kernel(at(&TCP_COPIED_SEQ) as *const u32) }.ok()?;
    // Bytes read so far (this read included): received, less what still waits to be read.
    let read_so_far = received.wrapping_sub(u64::from(rcv_nxt.wrapping_sub(copied)));
    if sent != 0 || read_so_far != read {
        return None;
    }
    let created: u32 = unsafe { bpf_probe_read_kernel(at(&TCP_LSNDTIME) as *const u32) }.ok()?;
    // SAFETY: a helper without arguments.
    let ticks = (unsafe { bpf_jiffies64() } as u32).wrapping_sub(created);
    let ago = u64::from(ticks) * patched(&TICK_NS);
    Some(now().saturating_sub(ago).max(1))
}

/// Which call moved the bytes, on which fd, from which buffer: read from the syscall's saved
/// registers. A call we do not know (splice, recvmmsg, io_uring, ...) counts bytes only.
#[inline(always)]
fn the_call(direction: Direction) -> (Call, i32, Buffer) {
    let unknown = if direction == Direction::In { Call::Recv } else { Call::Send };
    // SAFETY: helpers without arguments beyond the current task.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return (unknown, -1, Buffer::None);
    }
    // SAFETY: a BTF-typed pointer to the task's saved user registers.
    let (nr, di, si, dx) = unsafe { ((*regs).orig_rax, (*regs).rdi, (*regs).rsi, (*regs).rdx) };
    match data_call(nr) {
        Some(call) if call.direction() == direction => (call, di as i32, Buffer::of(call, si, dx)),
        _ => (unknown, -1, Buffer::None),
    }
}

/// `(const struct sock *sk, const int oldstate, const int newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) & 0xffff_ffff;
    let new = ctx.arg::<u64>(2) & 0xffff_ffff;
    match new {
        TCP_ESTABLISHED if old == TCP_SYN_RECV => opened(sk),
        TCP_SYN_SENT if old == TCP_CLOSE => connecting(sk),
        TCP_ESTABLISHED if old == TCP_SYN_SENT => connected(sk, true),
        TCP_CLOSE if old == TCP_SYN_SENT => connected(sk, false),
        TCP_CLOSE if old == TCP_LISTEN => listener(&ctx, sk, Kind::Unlisten),
        // The server closed (or shut down writing), in its own context, after its last
        // write: close-delimited responses end here.
        TCP_FIN_WAIT1 | TCP_LAST_ACK => ended(&ctx, sk, false),
        // A reset (CLOSE) is not an end yet: on loopback it is processed inside the
        // server's own send, before that send's record (seen: ~50 answered requests of
        // 12,000 taken for abandoned when wrk closed its connections). The server's
        // next write fails, it closes, and `tcp_destroy_sock` ends the connection then.
        TCP_LISTEN => listener(&ctx, sk, Kind::Listen),
        _ => {}
    }
    0
}

/// `(struct sock *sk)`: the socket is being destroyed (the kernel does this for every TCP
/// socket, once no fd holds it): its entry goes, and its end is reported if it was not.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    ended(&ctx, ctx.arg(0), true);
    0
}

/// A passive open on a port a target listens on completed (in softirq, no task to test):
/// the connection is new, its first bytes begin a request.
#[inline(always)]
fn opened(sk: *const u8) {
    // SAFETY: `sk` is the tracepoint's `struct sock *`.
    if !is_listened(unsafe { field(sk, &SK_NUM) }) {
        return;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let conn = ConnState { established_ns: now(), cookie, flags: FLAG_NEW, tgid: 0 };
    // A full table refuses it. Not counted here but at its first read (`conn_state`), which
    // finds it new, tries again (a slot may have come free) and counts it once if it still
    // does not fit: a connection refused here and one whose open went unseen are one case.
    let _ = CONNS.insert(&cookie, &conn, 0);
}

/// A target connects (in its own `connect()`): the connection is followed from its SYN, in
/// the client role, unless `--no-client`. A full table leaves it unfollowed (counted).
#[inline(always)]
fn connecting(sk: *const u8) {
    let (_, tgid) = current();
    if patched(&CLIENTS) == 0 || !is_target(tgid) {
        return;
    }
    // SAFETY: `sk` is the tracepoint's `struct sock *`.
    let (family, protocol): (u16, u16) = unsafe { (field(sk, &SK_FAMILY), field(sk, &SK_PROTOCOL)) };
    if (family != AF_INET && family != AF_INET6) || protocol != IPPROTO_TCP {
        return;
    }
    // SAFETY: the helper takes a socket pointer, which `sk` is.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let conn = ConnState { established_ns: now(), cookie, flags: FLAG_NEW | STATE_CLIENT, tgid };
    if CONNS.insert(&cookie, &conn, 0).is_err() {
        bump(stat::SOCKETS_FULL);
    }
}

/// A target's connect ended (`established`, or the socket closed from SYN_SENT: refused,
/// timed out, unreachable, or closed by the process): reported with its time and the peer.
/// A failed one is forgotten. Runs in softirq as often as not: the record is built on the
/// stack, and is the opening process's.
#[inline(always)]
fn connected(sk: *const u8, established: bool) {
    // SAFETY: `sk` is the tracepoint's `struct sock *`; the cookie is its atomic64_t counter.
    let cookie: u64 = unsafe { field(sk, &SK_COOKIE) };
    if cookie == 0 {
        return;
    }
    let Some(conn) = CONNS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: fields of a map value.
    let (started, flags, tgid) = unsafe { ((*conn).established_ns, (*conn).flags, (*conn).tgid) };
    if flags & STATE_CLIENT == 0 {
        return;
    }
    let ret = match established {
        true => 0,
        // SAFETY: as above; `sk_err` is an int.
        false => match unsafe { field::<i32>(sk, &SK_ERR) } {
            0 => CONNECT_ABANDONED,
            err => -i64::from(err),
        },
    };
    // SAFETY: as above.
    let (addr, port) = unsafe { peer(sk) };
    let took = now().saturating_sub(started) / 1000;
    let record = Record {
        ret,
        port,
        role: Role::Client,
        wait_us: if took > u64::from(u32::MAX) { u32::MAX } else { took as u32 },
        ..Record::of(Kind::Open, cookie, u64::from(tgid), tgid)
    };
    let opened = WithPeer { header: record.header(PEER_ADDR_LEN as u64, 0), addr };
    if EVENTS.output::<WithPeer>(&opened, wakeup_flag()).is_err() {
        bump(stat::RING_FULL);
    }
    if !established {
        let _ = CONNS.remove(&cookie);
    }
}

/// A client `Kind::Open` record: the header, then the peer's address.
#[repr(C)]
struct WithPeer {
    header: EventHeader,
    addr: [u8; PEER_ADDR_LEN],
}

/// The server closed (`last` false: FIN_WAIT1 / LAST_ACK) or the socket is destroyed
/// (`last`): the end is reported once; the entry goes with the socket. A socket that never
/// had a cookie was never followed, and none is made for it here.
#[inline(always)]
fn ended<C: EbpfContext>(ctx: &C, sk: *const u8, last: bool) {
    // SAFETY: `sk` is the tracepoint's `struct sock *`; the cookie is its atomic64_t counter.
    let cookie: u64 = unsafe { field(sk, &SK_COOKIE) };
    if cookie == 0 {
        return;
    }
    let Some(conn) = CONNS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: a field of a map value.
    let state = unsafe { &raw mut (*conn).flags };
    // SAFETY: as above.
    if unsafe { *state } & STATE_CLOSE_SENT == 0 {
        // SAFETY: as above.
        unsafe { *state |= STATE_CLOSE_SENT };
        let (mut id, mut tgid) = current();
        // SAFETY: a field of a map value.
        let opener = unsafe { (*conn).tgid };
        if opener != 0 {
            (id, tgid) = (u64::from(opener), opener); // a client connection's, from softirq too
        }
        // SAFETY: a field of a map value.
        let role = if unsafe { *state } & STATE_CLIENT != 0 { Role::Client } else { Role::Server };
        let record = Record { role, ..Record::of(Kind::Close, cookie, id, tgid) };
        // SAFETY: `sk` is the tracepoint's `struct sock *`, of a followed TCP socket.
        match unsafe { tcp_chrono(sk) } {
            // What the last response's bytes cost after its last write (its retransmits).
            Some(tcp) => emit_control_tcp(ctx, &record, tcp, state),
            None => emit_control(ctx, &record, state),
        }
    }
    if last {
        let _ = CONNS.remove(&cookie);
        frames::forget(cookie);
    }
}

/// A target's socket started listening (in the target's own `listen()`), or its listener
/// closed: the port is followed from now on, and userspace is told.
#[inline(always)]
fn listener<C: EbpfContext>(ctx: &C, sk: *const u8, kind: Kind) {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return;
    }
    // SAFETY: `sk` is the tracepoint's `struct sock *`.
    let port: u16 = unsafe { field(sk, &SK_NUM) };
    if kind == Kind::Listen {
        add_listened(port);
    }
    let record = Record { port, ..Record::of(kind, 0, id, tgid) };
    emit_control(ctx, &record, core::ptr::null_mut());
}
