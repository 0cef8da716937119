//! OpenSSL: uprobes on `SSL_read`/`SSL_read_ex`, `SSL_write`/`SSL_write_ex` and
//! `SSL_do_handshake`, one uretprobe for all of them, and `SSL_free`. A server that terminates
//! TLS itself moves only ciphertext through its sockets; the plaintext is where the library
//! hands it over.
//!
//! - Entry: what the call was asked (session, buffer, where `_ex` stores its count), per thread.
//! - Inside the call (OpenSSL with a socket BIO, as nginx uses it): the socket hooks see the
//!   call's own socket I/O and tie the session to that socket's cookie (`probes::sock`); the
//!   socket is marked `STATE_TLS` and its ciphertext is no longer reported.
//! - Return: the plaintext the call moved, as a data record of the socket's connection (or,
//!   for a session never seen on a socket, e.g. node's memory BIOs, of its own `tls_key`).
//! - `SSL_free`: the end of a session not tied to a socket (a tied one ends with its socket).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use observer_common::{
    ConnState, Direction, FLAG_NEW, STATE_CLOSE_SENT, STATE_TLS, Syscall, TlsCall, TlsConn, TlsOp, stat,
    tls_key,
};

use crate::{
    capture::Buffer,
    emit::{Record, advance, bump, emit_control, emit_data},
    maps::{TLS_CALLS, TLS_CONNS},
    target::{current, is_target},
};

/// Kernel-side session state: the session's socket is not a served one (the target is a TLS
/// client there, e.g. to an upstream): nothing of it is reported.
const STATE_OUTBOUND: u32 = 1 << 19;

/// `int SSL_read(SSL *ssl, void *buf, int num)`.
#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, TlsOp::Read, false);
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, TlsOp::Read, true);
    0
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, TlsOp::Write, false);
    0
}

/// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, TlsOp::Write, true);
    0
}

/// `int SSL_do_handshake(SSL *ssl)`: no plaintext, but its socket I/O ties the session to
/// its socket before the first byte of ciphertext is reported as data.
#[uprobe]
pub fn ssl_do_handshake(ctx: ProbeContext) -> u32 {
    enter(&ctx, TlsOp::Handshake, false);
    0
}

/// The return of every call above.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    returned(&ctx);
    0
}

/// `void SSL_free(SSL *ssl)`.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    freed(&ctx);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, op: TlsOp, ex: bool) {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let moved_ptr = if ex { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 };
    let call = TlsCall { ssl, buf, moved_ptr, cookie: 0, op: op as u32, outbound: 0 };
    // Overwrites a call whose return was never seen (the thread was killed inside it).
    if TLS_CALLS.insert(&id, &call, 0).is_err() {
        bump(stat::TLS_FULL);
    }
}

/// Called by the socket hooks for socket I/O a target's thread does inside an OpenSSL call:
/// ties the call's session to the socket (the socket's own records stop: they are
/// ciphertext), or marks the call as a client's if the socket is not a served one.
///
/// # Safety
/// `call` and `conn` point into map values.
#[inline(always)]
pub unsafe fn socket_io_inside(call: *mut TlsCall, conn: Option<*mut ConnState>) {
    match conn {
        Some(conn) => unsafe {
            (*conn).flags |= STATE_TLS;
            (*call).cookie = (*conn).cookie;
        },
        None => unsafe { (*call).outbound = 1 },
    }
}

#[inline(always)]
fn returned(ctx: &RetProbeContext) {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return;
    }
    // SAFETY: copied out of the map value before it is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(&id);
    let ret = ctx.ret::<i64>() as i32;
    let moved = moved_bytes(&call, ret);
    let handshake = call.op == TlsOp::Handshake as u32;
    // A session first seen in its handshake (or in a read that only drove it) is new: its
    // first plaintext begins a request. One first seen moving plaintext predates attach.
    let Some(session) = session(tls_key(tgid, call.ssl), tgid, handshake || moved == 0) else {
        return;
    };
    // SAFETY: fields of a map value.
    unsafe {
        if call.outbound != 0 {
            (*session).flags |= STATE_OUTBOUND;
        }
        if call.cookie != 0 && (*session).cookie == 0 {
            (*session).cookie = call.cookie;
        }
        if moved == 0 || handshake || (*session).flags & STATE_OUTBOUND != 0 {
            return;
        }
    }
    let (syscall, direction) = if call.op == TlsOp::Read as u32 {
        (Syscall::TlsRead, Direction::In)
    } else {
        (Syscall::TlsWrite, Direction::Out)
    };
    // SAFETY: fields of a map value.
    let state = unsafe { &raw mut (*session).flags };
    let (flags, cap) = unsafe { advance(state, direction) };
    let cookie = unsafe { (*session).cookie };
    let conn = if cookie != 0 { cookie } else { tls_key(tgid, call.ssl) };
    let record = Record { conn, id, tgid, fd: -1, syscall, flags, ret: i64::from(moved), wait_us: 0 };
    emit_data(ctx, &record, Buffer::Plain(call.buf), cap, state);
}

/// Bytes the call moved: its return value, or for `_ex` (which returns 1 on success) the
/// count it stored. 0 for a failure or a call still waiting on the peer (WANT_READ).
#[inline(always)]
fn moved_bytes(call: &TlsCall, ret: i32) -> i32 {
    if call.moved_ptr == 0 {
        return ret.max(0);
    }
    if ret != 1 {
        return 0;
    }
    // SAFETY: a user pointer the library wrote a size_t to; a fault reads as nothing moved.
    let moved = unsafe { bpf_probe_read_user(call.moved_ptr as *const u64) }.unwrap_or(0);
    moved.min(i32::MAX as u64) as i32
}

/// The session's entry, made at its first call seen; `None` if the table is full (counted).
#[inline(always)]
fn session(key: u64, tgid: u32, new: bool) -> Option<*mut TlsConn> {
    if let Some(session) = TLS_CONNS.get_ptr_mut(&key) {
        return Some(session);
    }
    let flags = if new { FLAG_NEW } else { 0 };
    if TLS_CONNS.insert(&key, &TlsConn { cookie: 0, tgid, flags }, 0).is_err() {
        bump(stat::TLS_FULL);
        return None;
    }
    TLS_CONNS.get_ptr_mut(&key)
}

/// The session ends: one never tied to a socket reports its end (a tied one ends with its
/// socket's close); its entry goes.
#[inline(always)]
fn freed(ctx: &ProbeContext) {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return;
    }
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return;
    };
    let key = tls_key(tgid, ssl);
    // SAFETY: copied out of the map value before it is removed.
    let Some(session) = (unsafe { TLS_CONNS.get(&key) }).copied() else {
        return;
    };
    let _ = TLS_CONNS.remove(&key);
    if session.cookie != 0 || session.flags & (STATE_OUTBOUND | STATE_CLOSE_SENT) != 0 {
        return;
    }
    let record =
        Record { conn: key, id, tgid, fd: -1, syscall: Syscall::Close, flags: 0, ret: 0, wait_us: 0 };
    emit_control(ctx, &record, core::ptr::null_mut());
}
