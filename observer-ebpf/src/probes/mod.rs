//! The programs, one file per hook family. What several families need lives here, so that no
//! probe file imports another: the x86-64 syscall numbers and which data call each is (the
//! socket hooks read them from the task's registers, the syscall hooks hook them), the tie of
//! an OpenSSL call to the socket it does I/O on (socket and syscall hooks), an OpenSSL call's
//! plaintext record (at its return, or a write's at its first socket write), a connection's
//! wait (socket hooks, OpenSSL), and accepted sockets (both syscall-hook families).

pub mod process;
pub mod sock;
pub mod sys_exit;
pub mod tls;
pub mod tracepoints;

use observer_common::{
    Call, Direction, FLAG_NEW, FLAG_TCP, Kind, Role, STATE_CLIENT, STATE_TLS, STATE_TLS_KEYS,
    STATE_TLS_RETRY, TIE_NONE, TIE_OUTBOUND, TIE_SERVED, TIE_SERVED_NEW, TcpChrono, TlsCall, TlsConn, TlsOp,
    socket_key, stat, tls_key,
};

use crate::{
    capture::Buffer,
    emit::{Record, advance, bump, emit_control, emit_data},
    maps::{CONNS, SOCKETS, TLS_CALLS, TLS_CONNS},
    scratch::scratch,
    target::{current, now},
};

/// Kernel-side session state: the session's socket is not a served one (the target is a TLS
/// client there, e.g. to an upstream): nothing of it is reported.
pub const STATE_OUTBOUND: u32 = 1 << 19;

/// Kernel-side session state: records of it went out under its `tls_key` (it was not tied to
/// a socket then), so that connection must be ended if it is tied later or freed.
pub const STATE_KEYED: u32 = 1 << 20;

/// 1 with `--tls keys`: only the handshake is hooked; at its end the session's keys go to the
/// daemon and its socket's ciphertext is reported (set by the loader).
#[unsafe(no_mangle)]
pub static TLS_KEYS: u64 = 0;

/// The targets' own connections are followed too (the client role), unless `--no-client`:
/// the loader sets it.
#[unsafe(no_mangle)]
pub static CLIENTS: u64 = 1;

/// Syscall hooks: the state word of `fd` of `tgid` if it is a socket we follow.
#[inline(always)]
fn followed_socket(tgid: u32, fd: i32) -> Option<*mut u32> {
    SOCKETS.get_ptr_mut(&socket_key(tgid, fd))
}

/// x86-64 syscall numbers, shared with the socket hooks.
pub mod x86_64 {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
    /// `struct pt_regs` offsets of r10 (the 4th argument), rdx, rsi, rdi and orig_ax.
    pub const R10: usize = 56;
    pub const DX: usize = 96;
    pub const SI: usize = 104;
    pub const DI: usize = 112;
    pub const ORIG_AX: usize = 120;
}

pub const MSG_PEEK: u64 = 2;

/// Whether a receive only peeked (MSG_PEEK): its bytes are read again by the next call, so
/// they are not reported twice. nginx peeks at the first byte of every connection on a TLS
/// listener to tell TLS from plaintext. `recvfrom` takes its flags as argument 4, `recvmsg`
/// as argument 3.
#[inline(always)]
pub fn peeks(call: Call, arg3: u64, arg4: u64) -> bool {
    match call {
        Call::Recvfrom => arg4 & MSG_PEEK != 0,
        Call::Recvmsg => arg3 & MSG_PEEK != 0,
        _ => false,
    }
}

/// The data syscall an x86-64 syscall number names, if it is one.
#[inline(always)]
pub fn data_call(nr: u64) -> Option<Call> {
    Some(match nr {
        x86_64::READ => Call::Read,
        x86_64::READV => Call::Readv,
        x86_64::RECVFROM => Call::Recvfrom,
        x86_64::RECVMSG => Call::Recvmsg,
        x86_64::WRITE => Call::Write,
        x86_64::WRITEV => Call::Writev,
        x86_64::SENDTO => Call::Sendto,
        x86_64::SENDMSG => Call::Sendmsg,
        x86_64::SENDFILE => Call::Sendfile,
        _ => return None,
    })
}

/// accept/accept4 returned `ret`: a new connection socket to follow.
#[inline(always)]
pub fn accepted<C: aya_ebpf::EbpfContext>(ctx: &C, id: u64, tgid: u32, ret: i64) {
    if ret < 0 {
        return;
    }
    let fd = ret as i32;
    let key = socket_key(tgid, fd);
    if SOCKETS.insert(&key, &0, 0).is_err() {
        bump(stat::SOCKETS_FULL);
        return;
    }
    let record = Record { fd, ..Record::of(Kind::Open, key, id, tgid) };
    emit_control(ctx, &record, followed_socket(tgid, fd).unwrap_or(core::ptr::null_mut()));
}

/// A served connection as the socket hooks see it: its state word, its key, when its
/// handshake completed (0 if unknown).
pub struct Served {
    pub state: *mut u32,
    pub conn: u64,
    pub established_ns: u64,
}

/// Called by the socket and syscall hooks for socket I/O a target's thread does inside an
/// OpenSSL call: ties the call to the served connection (whose own records stop: they are
/// ciphertext; a new connection's `FLAG_NEW` passes to the session), or marks the call as a
/// client's if the socket is not a served one.
///
/// # Safety
/// `call` and `served.state` point into map values.
#[inline(always)]
pub unsafe fn socket_io_inside(call: *mut TlsCall, served: Option<Served>) {
    let Some(served) = served else {
        // SAFETY: per the contract.
        unsafe {
            if (*call).tie == TIE_NONE {
                (*call).tie = TIE_OUTBOUND;
            }
        }
        return;
    };
    // SAFETY: per the contract.
    unsafe {
        let old = *served.state;
        *served.state = (old | STATE_TLS) & !FLAG_NEW;
        let tie = if old & FLAG_NEW != 0 { TIE_SERVED_NEW } else { TIE_SERVED };
        if tie > (*call).tie || (*call).tie == TIE_OUTBOUND {
            (*call).tie = tie;
        }
        (*call).conn = served.conn;
        (*call).established_ns = served.established_ns;
    }
}

/// The plaintext record of OpenSSL call `call` on `session` (keyed `key`): `moved` bytes from
/// its buffer, as the connection the session is tied to (or, not tied: its own key), with
/// TCP's accounting after it if known.
///
/// # Safety
/// `session` points into a map value.
#[inline(always)]
pub unsafe fn emit_plaintext<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    session: *mut TlsConn,
    call: &TlsCall,
    key: u64,
    moved: i32,
    tcp: Option<TcpChrono>,
) {
    let (id, tgid) = current();
    let (data, direction) = if call.op == TlsOp::Read as u32 {
        (Call::TlsRead, Direction::In)
    } else {
        (Call::TlsWrite, Direction::Out)
    };
    // SAFETY: fields of a map value, per the contract.
    let state = unsafe { &raw mut (*session).flags };
    // SAFETY: as above.
    let (tied, established_ns) = unsafe { ((*session).conn, (*session).established_ns) };
    // SAFETY: a field of a map value.
    let socket =
        if tied == 0 { 0 } else { CONNS.get_ptr_mut(&tied).map_or(0, |conn| unsafe { (*conn).flags }) };
    // A keyed socket's records come decrypted from the daemon (a process moved to per-call
    // uprobes after it was keyed: `--tls keys` falling back).
    if socket & STATE_TLS_KEYS != 0 {
        return;
    }
    // A session on a connection the target opened is a client's: it writes the requests; so
    // is one on memory BIOs that wrote first (`keyed_write`).
    // SAFETY: as above.
    let role = if socket & STATE_CLIENT != 0 || (tied == 0 && unsafe { *state } & STATE_CLIENT != 0) {
        // SAFETY: as above.
        unsafe { *state |= STATE_CLIENT };
        Role::Client
    } else {
        Role::Server
    };
    // SAFETY: as above.
    let (mut flags, cap) = unsafe { advance(state, direction) };
    let conn = if tied != 0 {
        tied
    } else {
        // SAFETY: as above.
        unsafe { *state |= STATE_KEYED };
        key
    };
    if let Some(tcp) = tcp
        && let Some(s) = scratch()
    {
        s.tcp = tcp;
        flags |= FLAG_TCP;
    }
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
        role,
        ..Record::of(Kind::Data, conn, id, tgid)
    };
    emit_data(ctx, &record, Buffer::Plain(call.buf), cap, state, true);
}

/// The socket hooks saw an OpenSSL write call of this thread (`call`, `id`) move bytes on a
/// socket (`refused`: EAGAIN; `tcp`: TCP's accounting after a write that moved bytes). Writes
/// have no return probe with the socket hooks: the call's plaintext is reported at its first
/// socket write, unless the call is the retry of one the socket refused (WANT_WRITE: OpenSSL
/// requires the same bytes again, already reported). The call ends here: its later socket
/// writes are ciphertext of a TLS socket, skipped as such. Returns false if the socket is not
/// the session's (a call whose end was not seen: the socket's bytes are not this call's).
///
/// # Safety
/// `call` and `served.state` point into map values.
#[inline(always)]
pub unsafe fn tls_write_inside<C: aya_ebpf::EbpfContext>(
    ctx: &C,
    id: u64,
    call: *mut TlsCall,
    served: &Served,
    refused: bool,
    tcp: Option<TcpChrono>,
) -> bool {
    // SAFETY: per the contract; copied before the entry goes.
    let call = unsafe { *call };
    let _ = TLS_CALLS.remove(&id);
    let (_, tgid) = current();
    let key = tls_key(tgid, call.ssl);
    let Some(session) = TLS_CONNS.get_ptr_mut(&key) else {
        return false;
    };
    // SAFETY: map values.
    unsafe {
        if (*session).conn != served.conn {
            return false;
        }
        let retry = *served.state & STATE_TLS_RETRY != 0;
        if refused {
            *served.state |= STATE_TLS_RETRY;
        } else if retry {
            *served.state &= !STATE_TLS_RETRY;
        }
        if !retry && call.len > 0 {
            emit_plaintext(ctx, session, &call, key, call.len.min(i32::MAX as u64) as i32, tcp);
        }
    }
    true
}

/// Whether OpenSSL call `call` of the current process is on a session tied to `conn`.
#[inline(always)]
pub fn is_session_socket(call: &TlsCall, conn: u64) -> bool {
    let (_, tgid) = current();
    // SAFETY: a field of a map value, copied.
    TLS_CONNS.get_ptr_mut(&tls_key(tgid, call.ssl)).is_some_and(|session| unsafe { (*session).conn } == conn)
}

/// Microseconds since `since_ns`, from 1 up to `u32::MAX` (71 minutes).
#[inline(always)]
pub fn waited_us(since_ns: u64) -> u32 {
    let us = now().saturating_sub(since_ns) / 1000;
    // At least 1: 0 means "no wait reported".
    us.clamp(1, u64::from(u32::MAX)) as u32
}
