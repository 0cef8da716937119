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
use core::ffi::c_void;

use aya_ebpf::helpers::generated;
use observer_common::{
    FLAG_CIPHER, FLAG_FRAMES, FLAG_NEW, H2_PREFACE, HEADER_LEN, KEYS_DUMP_LEN, KEYS_SECRETS_LEN, Kind, Role,
    SECRETS_AT_LEN, STATE_CLIENT, STATE_MIDSTREAM, STATE_TLS_KEYS, TIE_NONE, TIE_OUTBOUND, TIE_SERVED,
    TIE_SERVED_NEW, TLS_CALLS_ONLY, TlsCall, TlsConn, TlsOp, stat, tls_key,
};

use super::{CLIENTS, STATE_KEYED, STATE_OUTBOUND, TLS_KEYS, emit_plaintext, waited_us};
use crate::{
    emit::{Record, bump, emit_control, output},
    frames,
    maps::{CONNS, TLS_CALLS, TLS_CONNS, TLS_SECRETS_AT},
    scratch::scratch,
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
        if (*session).conn != 0 {
            return false;
        }
        // A session that moved no socket bytes inside its calls is on memory BIOs (one on a
        // socket nobody follows is flagged outbound); if its first plaintext writes the
        // HTTP/2 client preface, it is a client's (its socket is not known: peer unknown).
        if (*session).flags & STATE_KEYED == 0 {
            let unknown = (*session).flags & (STATE_OUTBOUND | STATE_MIDSTREAM) != 0;
            if unknown || patched(&CLIENTS) == 0 || !writes_preface(call) {
                return false;
            }
            (*session).flags |= STATE_CLIENT;
        }
        if call.len > 0 {
            emit_plaintext(ctx, session, call, key, call.len.min(i32::MAX as u64) as i32, None);
        }
    }
    true
}

/// Whether this write starts with the HTTP/2 client preface, which only a client writes. (An
/// HTTP/1 request line would say so too, but node retries a write refused during the
/// handshake with the same bytes: both would count.)
#[inline(always)]
fn writes_preface(call: &TlsCall) -> bool {
    let mut head = [0u8; 24];
    // SAFETY: a read of the target's buffer into a local; a fault leaves it unread.
    call.len >= 24 && unsafe { read_user(head.as_mut_ptr(), 24, call.buf) } && head == *H2_PREFACE
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
        if handshake && call.tie >= TIE_SERVED && ctx.ret::<i64>() as i32 == 1 && patched(&TLS_KEYS) != 0 {
            hand_over_keys(session, &call, id, tgid);
            return;
        }
        if moved == 0 || handshake || (*session).flags & STATE_OUTBOUND != 0 {
            return;
        }
    }
    // SAFETY: a map value.
    unsafe { emit_plaintext(ctx, session, &call, key, moved, None) };
}

/// `--tls keys`: the handshake of `session` on served socket `call.conn` completed. Its keys go
/// to the daemon (the two secrets where the process keeps them, or while that is not known
/// the session's memory, where the daemon finds them), and the socket's ciphertext is
/// reported from now on; a new connection's first record is flagged new again.
///
/// # Safety
/// `session` points into a map value.
#[inline(always)]
unsafe fn hand_over_keys(session: *mut TlsConn, call: &TlsCall, id: u64, tgid: u32) {
    let Some(conn) = CONNS.get_ptr_mut(&call.conn) else {
        return; // not a socket-hooks connection
    };
    // SAFETY: a field of a map value.
    if unsafe { (*conn).flags } & STATE_TLS_KEYS != 0 {
        return; // a second handshake on the connection: its records are numbered already
    }
    let Some(s) = scratch() else {
        return;
    };
    let data = s.data.as_mut_ptr();
    // SAFETY: a map value, copied.
    let at = unsafe { TLS_SECRETS_AT.get(&tgid) }.copied();
    if at == Some(TLS_CALLS_ONLY) {
        return; // the process's calls are hooked instead
    }
    // SAFETY: a field of a map value.
    let client = unsafe { (*conn).flags } & STATE_CLIENT != 0;
    let len = match at {
        Some(at) => {
            // SAFETY: `data` is the scratch data area, larger than KEYS_SECRETS_LEN.
            unsafe { secrets(data, call.ssl, &at) };
            KEYS_SECRETS_LEN
        }
        // SAFETY: as above, larger than KEYS_DUMP_LEN.
        // A client's session is keyed only where the secrets' place is known (its records
        // would not teach it: the daemon learns it from served sessions).
        None if client => return,
        None if unsafe { read_user(data, KEYS_DUMP_LEN as u32, call.ssl) } => KEYS_DUMP_LEN,
        None => return,
    };
    let role = if client { Role::Client } else { Role::Server };
    let mut record = Record { role, ..Record::of(Kind::Keys, call.conn, id, tgid) };
    // SAFETY: fields of map values, per the contract.
    unsafe {
        // HTTP/2 (ALPN h2): every byte is copied, for the daemon to walk the frames after
        // decrypting; the records say so. Without room for its cursors (counted) the
        // connection is not keyed: losing it beats taking its HTTP/2 for a layout failure,
        // which would put the whole process on per-call uprobes.
        if let Some(at) = at
            && alpn_is_h2(call.ssl, at[6])
        {
            if !frames::start_cipher(call.conn, &raw mut (*conn).flags) {
                return;
            }
            record.flags = FLAG_FRAMES | FLAG_CIPHER;
        }
        (*conn).flags |= STATE_TLS_KEYS;
        // A new connection's wait ends here: its first request may have been read with the
        // handshake's last record.
        if (*session).flags & FLAG_NEW != 0 {
            (*session).flags &= !FLAG_NEW;
            record.flags |= FLAG_NEW;
            if (*conn).established_ns != 0 {
                record.wait_us = waited_us((*conn).established_ns);
            }
        }
    }
    s.header = record.header(len as u64, 0);
    output((HEADER_LEN + len) as u64);
}

/// `len` bytes of the target's memory at `from` into `to`; false on a fault.
///
/// # Safety
/// `to..to + len` must be writable (the scratch data area, or a local).
#[inline(always)]
unsafe fn read_user(to: *mut u8, len: u32, from: u64) -> bool {
    unsafe { generated::bpf_probe_read_user(to as *mut c_void, len, from as *const c_void) == 0 }
}

/// The secrets of session `ssl` where `at` says they are (see `TLS_SECRETS_AT`), into `data`:
/// TLS 1.3's two, TLS 1.2's master key (through the session pointer) and randoms. What is
/// unknown or unreadable is zeros.
///
/// # Safety
/// `data` must be the scratch data area (at least `KEYS_SECRETS_LEN` bytes).
#[inline(always)]
unsafe fn secrets(data: *mut u8, ssl: u64, at: &[u32; SECRETS_AT_LEN]) {
    const UNKNOWN: u32 = u32::MAX;
    // SAFETY: stores inside the first KEYS_SECRETS_LEN bytes of `data`, per the contract.
    unsafe {
        core::ptr::write_bytes(data, 0, KEYS_SECRETS_LEN);
        let fields: [(usize, u32, u32); 4] =
            [(0, at[0], 48), (48, at[1], 48), (144, at[4], 32), (176, at[5], 32)];
        for (to, offset, len) in fields {
            if offset != UNKNOWN && !read_user(data.add(to), len, ssl + u64::from(offset)) {
                core::ptr::write_bytes(data.add(to), 0, len as usize); // half-read
            }
        }
        if at[2] == UNKNOWN || at[3] == UNKNOWN {
            return;
        }
        let mut session = 0u64;
        let ok = generated::bpf_probe_read_user(
            &mut session as *mut u64 as *mut c_void,
            8,
            (ssl + u64::from(at[2])) as *const c_void,
        ) == 0;
        if ok && session != 0 && !read_user(data.add(96), 48, session + u64::from(at[3])) {
            core::ptr::write_bytes(data.add(96), 0, 48);
        }
    }
}

/// Whether session `ssl` selected ALPN protocol `h2`: its pointer at `at`, the length after.
#[inline(always)]
fn alpn_is_h2(ssl: u64, at: u32) -> bool {
    if at == u32::MAX {
        return false;
    }
    let mut selected = [0u64; 2];
    let mut name = [0u8; 2];
    // SAFETY: reads of the target's memory into locals; a fault leaves them zero.
    unsafe {
        read_user(selected.as_mut_ptr() as *mut u8, 16, ssl + u64::from(at))
            && selected[1] == 2
            && read_user(name.as_mut_ptr(), 2, selected[0])
            && name == *b"h2"
    }
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
            (*session).flags &= !(STATE_KEYED | STATE_MIDSTREAM | STATE_CLIENT);
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
