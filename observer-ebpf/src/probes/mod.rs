//! The programs, one file per hook family. What several families need lives here, so that no
//! probe file imports another: the x86-64 syscall numbers and which data call each is (the
//! socket hooks read them from the task's registers, the syscall hooks hook them), the tie of
//! an OpenSSL call to the socket it does I/O on (socket and syscall hooks), a connection's
//! wait (socket hooks, OpenSSL), and accepted sockets (both syscall-hook families).

pub mod process;
pub mod sock;
pub mod sys_exit;
pub mod tls;
pub mod tracepoints;

use observer_common::{
    Call, FLAG_NEW, Kind, STATE_TLS, TIE_NONE, TIE_OUTBOUND, TIE_SERVED, TIE_SERVED_NEW, TlsCall, socket_key,
    stat,
};

use crate::{
    emit::{Record, bump, emit_control},
    maps::SOCKETS,
    target::now,
};

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

/// Microseconds since `since_ns`, from 1 up to `u32::MAX` (71 minutes).
#[inline(always)]
pub fn waited_us(since_ns: u64) -> u32 {
    let us = now().saturating_sub(since_ns) / 1000;
    // At least 1: 0 means "no wait reported".
    us.clamp(1, u64::from(u32::MAX)) as u32
}
