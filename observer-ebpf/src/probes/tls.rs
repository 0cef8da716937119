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
//!   With the socket hooks, writes have no return probe: a write's plaintext goes out at its
//!   first socket write (`probes::tls_write_inside`), or at entry for a memory-BIO session.
//! - `SSL_free`: the end of a session not tied to a socket (a tied one ends with its socket).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use observer_common::{
    FLAG_NEW, Kind, STATE_MIDSTREAM, TIE_NONE, TIE_OUTBOUND, TIE_SERVED, TIE_SERVED_NEW, TlsCall, TlsConn,
    TlsOp, stat, tls_key,
};

use super::{STATE_KEYED, STATE_OUTBOUND, emit_plaintext};
use crate::{
    emit::{Record, bump, emit_control},
    frames,
    maps::{TLS_CALLS, TLS_CONNS},
    target::{current, is_target, patched},
};

/// 1 when the write calls have a return probe (the syscall hooks, which cannot see a socket
/// write inside the call the way the socket hooks do); set by the loader.
#[unsafe(no_mangle)]
static TLS_WRITE_RETURNS: u64 = 1;

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
    let len = match ctx.arg::<u64>(2) {
        Some(num) if ex => num,
        Some(num) => (num as i32).max(0) as u64, // SSL_write's `int num`
        None => 0,
    };
    let call = TlsCall { ssl, buf, moved_ptr, len, op: op as u32, tie: TIE_NONE, ..TlsCall::default() };
    if op == TlsOp::Write && patched(&TLS_WRITE_RETURNS) == 0 && keyed_write(ctx, &call, tgid) {
        return;
    }
    // Overwrites a call whose return was never seen (the thread was killed inside it).
    if TLS_CALLS.insert(&id, &call, 0).is_err() {
        bump(stat::TLS_FULL);
    }
}

/// Without a return probe on writes: the write of a session that has no socket (a memory
/// BIO, as node uses: it always takes every byte) is reported at its entry. True if it was.
#[inline(always)]
fn keyed_write(ctx: &ProbeContext, call: &TlsCall, tgid: u32) -> bool {
    let key = tls_key(tgid, call.ssl);
    let Some(session) = TLS_CONNS.get_ptr_mut(&key) else {
        return false;
    };
    // SAFETY: fields of a map value.
    unsafe {
        if (*session).conn != 0 || (*session).flags & STATE_KEYED == 0 {
            return false;
        }
        if call.len > 0 {
            emit_plaintext(ctx, session, call, key, call.len.min(i32::MAX as u64) as i32, None);
        }
    }
    true
}

#[inline(always)]
fn returned(ctx: &RetProbeContext) {
    let (id, tgid) = current();
    // No target test first: the uprobes are attached per target process, and an entry made
    // before a target stopped being one must still go.
    // SAFETY: copied out of the map value before it is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(&id);
    let moved = moved_bytes(&call, ctx.ret::<i64>() as i32);
    let handshake = call.op == TlsOp::Handshake as u32;
    let key = tls_key(tgid, call.ssl);
    // New: seen opening on its socket, or (without a socket: memory BIOs) first seen in its
    // handshake or in a call that only drove it. One first seen moving plaintext predates
    // attach and is picked up mid-stream.
    let new = match call.tie {
        TIE_SERVED_NEW => true,
        TIE_SERVED => false,
        _ => handshake || moved == 0,
    };
    let Some(session) = session(key, tgid, new) else {
        return;
    };
    // SAFETY: fields of a map value.
    unsafe {
        if call.tie == TIE_OUTBOUND {
            (*session).flags |= STATE_OUTBOUND;
        }
        if call.tie >= TIE_SERVED && (*session).conn != call.conn {
            tie(ctx, session, &call, key, new);
        }
        if moved == 0 || handshake || (*session).flags & STATE_OUTBOUND != 0 {
            return;
        }
    }
    // SAFETY: a map value.
    unsafe { emit_plaintext(ctx, session, &call, key, moved, None) };
}

/// The session is (now) carried by `call.conn`: what went out under its key ends, and a
/// session whose `SSL *` was reused for another connection without a free we saw starts over.
///
/// # Safety
/// `session` points into a map value.
#[inline(always)]
unsafe fn tie(ctx: &RetProbeContext, session: *mut TlsConn, call: &TlsCall, key: u64, new: bool) {
    // SAFETY: per the contract.
    unsafe {
        if (*session).flags & STATE_KEYED != 0 {
            close_key(ctx, key, (*session).tgid);
        }
        if (*session).conn != 0 {
            (*session).flags = if new { FLAG_NEW } else { STATE_MIDSTREAM };
        } else {
            (*session).flags &= !(STATE_KEYED | STATE_MIDSTREAM);
            (*session).flags |= if new { FLAG_NEW } else { STATE_MIDSTREAM };
        }
        (*session).conn = call.conn;
        (*session).established_ns = call.established_ns;
    }
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
    let flags = if new { FLAG_NEW } else { STATE_MIDSTREAM };
    let session = TlsConn { conn: 0, established_ns: 0, tgid, flags };
    if TLS_CONNS.insert(&key, &session, 0).is_err() {
        bump(stat::TLS_FULL);
        return None;
    }
    TLS_CONNS.get_ptr_mut(&key)
}

/// The end of the connection reported under a session's own key.
#[inline(always)]
fn close_key<C: aya_ebpf::EbpfContext>(ctx: &C, key: u64, tgid: u32) {
    let (id, _) = current();
    let record = Record::of(Kind::Close, key, id, tgid);
    emit_control(ctx, &record, core::ptr::null_mut());
}

/// The session ends: one reported under its own key reports its end (a tied one ends with
/// its socket's close); its entry goes.
#[inline(always)]
fn freed(ctx: &ProbeContext) {
    let (_, tgid) = current();
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
    if session.flags & STATE_KEYED != 0 {
        close_key(ctx, key, tgid);
        frames::forget(key);
    }
}
