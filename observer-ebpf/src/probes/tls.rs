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
    Call, Direction, FLAG_NEW, FLAG_TCP, Kind, STATE_MIDSTREAM, TIE_NONE, TIE_OUTBOUND, TIE_SERVED,
    TIE_SERVED_NEW, TlsCall, TlsConn, TlsOp, stat, tls_key,
};

use super::waited_us;
use crate::{
    capture::Buffer,
    emit::{Record, advance, bump, emit_control, emit_data},
    frames,
    maps::{TLS_CALLS, TLS_CONNS},
    scratch::scratch,
    target::{current, is_target},
};

/// Kernel-side session state: the session's socket is not a served one (the target is a TLS
/// client there, e.g. to an upstream): nothing of it is reported.
const STATE_OUTBOUND: u32 = 1 << 19;

/// Kernel-side session state: records of it went out under its `tls_key` (it was not tied to
/// a socket then), so that connection must be ended if it is tied later or freed.
const STATE_KEYED: u32 = 1 << 20;

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
    let call = TlsCall { ssl, buf, moved_ptr, op: op as u32, tie: TIE_NONE, ..TlsCall::default() };
    // Overwrites a call whose return was never seen (the thread was killed inside it).
    if TLS_CALLS.insert(&id, &call, 0).is_err() {
        bump(stat::TLS_FULL);
    }
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
    emit_plaintext(ctx, session, &call, key, moved);
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

#[inline(always)]
fn emit_plaintext(ctx: &RetProbeContext, session: *mut TlsConn, call: &TlsCall, key: u64, moved: i32) {
    let (id, tgid) = current();
    let (data, direction) = if call.op == TlsOp::Read as u32 {
        (Call::TlsRead, Direction::In)
    } else {
        (Call::TlsWrite, Direction::Out)
    };
    // SAFETY: fields of a map value.
    let state = unsafe { &raw mut (*session).flags };
    // SAFETY: as above.
    let (mut flags, cap) = unsafe { advance(state, direction) };
    // SAFETY: as above.
    let (tied, established_ns) = unsafe { ((*session).conn, (*session).established_ns) };
    // A write that reached its socket carries TCP's accounting after it, as a plain one does.
    if call.has_tcp != 0
        && tied == call.conn
        && let Some(s) = scratch()
    {
        s.tcp = call.tcp;
        flags |= FLAG_TCP;
    }
    let conn = if tied != 0 {
        tied
    } else {
        // SAFETY: as above.
        unsafe { *state |= STATE_KEYED };
        key
    };
    let wait_us = if flags & FLAG_NEW != 0 && direction == Direction::In && established_ns != 0 {
        waited_us(established_ns)
    } else {
        0
    };
    let record = Record {
        call: data,
        flags,
        ret: i64::from(moved),
        wait_us,
        ..Record::of(Kind::Data, conn, id, tgid)
    };
    emit_data(ctx, &record, Buffer::Plain(call.buf), cap, state, true);
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
