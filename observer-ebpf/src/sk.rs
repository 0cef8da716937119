//! The running kernel's `struct sock` and `struct tcp_sock`: where the socket programs find
//! their fields (byte offsets the loader patches from the kernel's BTF), and what they read
//! of them.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_skc_to_tcp_sock};
use observer_common::TcpChrono;

use crate::target::patched;

/// Byte offsets in the running kernel's structs, which differ between builds: the loader
/// sets them from the kernel's BTF (aya does no CO-RE for Rust programs). The defaults are
/// Linux 6.18's x86-64 layout, for reading only.
#[unsafe(no_mangle)]
pub static SK_NUM: u64 = 14; // sock.__sk_common.skc_num (u16, host order)
#[unsafe(no_mangle)]
pub static SK_FAMILY: u64 = 16; // sock.__sk_common.skc_family (u16)
#[unsafe(no_mangle)]
pub static SK_DADDR: u64 = 0; // sock.__sk_common.skc_daddr (__be32)
#[unsafe(no_mangle)]
pub static SK_DPORT: u64 = 12; // sock.__sk_common.skc_dport (__be16)
#[unsafe(no_mangle)]
pub static SK_V6_DADDR: u64 = 56; // sock.__sk_common.skc_v6_daddr (struct in6_addr)
#[unsafe(no_mangle)]
pub static SK_ERR: u64 = 284; // sock.sk_err (int): a failed connect's error
#[unsafe(no_mangle)]
pub static SK_COOKIE: u64 = 88; // sock.__sk_common.skc_cookie (atomic64_t)
#[unsafe(no_mangle)]
pub static SK_PROTOCOL: u64 = 532; // sock.sk_protocol (u16)
#[unsafe(no_mangle)]
pub static SK_SOCKET: u64 = 288; // sock.sk_socket (struct socket *)
#[unsafe(no_mangle)]
pub static SOCKET_FILE: u64 = 16; // socket.file (struct file *)
#[unsafe(no_mangle)]
pub static TCP_COPIED_SEQ: u64 = 1464; // tcp_sock.copied_seq (u32): next byte the server reads
#[unsafe(no_mangle)]
pub static TCP_RCV_NXT: u64 = 1664; // tcp_sock.rcv_nxt (u32): next byte expected from the peer
#[unsafe(no_mangle)]
pub static TCP_BYTES_RECEIVED: u64 = 1752; // tcp_sock.bytes_received (u64)
#[unsafe(no_mangle)]
pub static TCP_BYTES_SENT: u64 = 1544; // tcp_sock.bytes_sent (u64)
#[unsafe(no_mangle)]
pub static TCP_LSNDTIME: u64 = 1584; // tcp_sock.lsndtime (u32 jiffies): the child's creation, until it sends data
#[unsafe(no_mangle)]
pub static TCP_CHRONO_TYPE: u64 = 1556; // tcp_sock.chrono_type (u8): what the ongoing interval is
#[unsafe(no_mangle)]
pub static TCP_CHRONO_START: u64 = 1560; // tcp_sock.chrono_start (u32 jiffies)
#[unsafe(no_mangle)]
pub static TCP_CHRONO_STAT: u64 = 1564; // tcp_sock.chrono_stat (u32[3] jiffies: busy, rwnd, sndbuf)
#[unsafe(no_mangle)]
pub static TCP_SRTT_US: u64 = 1680; // tcp_sock.srtt_us (u32, µs << 3)
#[unsafe(no_mangle)]
pub static TCP_TOTAL_RETRANS: u64 = 2200; // tcp_sock.total_retrans (u32)
/// Nanoseconds in a jiffy (the loader sets it from `CLOCK_MONOTONIC_COARSE`'s resolution).
#[unsafe(no_mangle)]
pub static TICK_NS: u64 = 4_000_000;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// `include/net/tcp_states.h`.
pub const TCP_ESTABLISHED: u64 = 1;
pub const TCP_SYN_SENT: u64 = 2;
pub const TCP_SYN_RECV: u64 = 3;
pub const TCP_FIN_WAIT1: u64 = 4;
pub const TCP_CLOSE: u64 = 7; // the socket reached CLOSE (reset, or done)
pub const TCP_LAST_ACK: u64 = 9;
pub const TCP_LISTEN: u64 = 10;

/// A field of a BTF-typed kernel pointer at an offset the loader patched: a plain load, which
/// the verifier checks against the struct's layout (the offset is a known constant to it:
/// the patched globals live in a frozen read-only map).
///
/// # Safety
/// `base` must be a BTF-typed pointer whose struct has a `T` at `offset`.
#[inline(always)]
pub unsafe fn field<T: Copy>(base: *const u8, offset: &'static u64) -> T {
    unsafe { core::ptr::read_volatile(base.add(patched(offset) as usize) as *const T) }
}

/// TCP's accounting of `sk` now, as `tcp_get_info_chrono_stats` computes it for `ss -ti`:
/// the ongoing interval added to the one it is of.
///
/// # Safety
/// `sk` must be a `struct sock *` of a TCP socket (a `struct tcp_sock`).
#[inline(always)]
pub unsafe fn tcp_chrono(sk: *const u8) -> Option<TcpChrono> {
    // SAFETY: the helper takes a socket pointer, which `sk` is; it returns a BTF-typed
    // `struct tcp_sock *` (null for another kind of socket), whose fields are plain loads.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as *const u8;
    if tp.is_null() {
        return None;
    }
    // SAFETY: fields of the `tcp_sock`, at offsets from the kernel's BTF.
    let (kind, start, srtt, retrans): (u8, u32, u32, u32) = unsafe {
        (
            field(tp, &TCP_CHRONO_TYPE),
            field(tp, &TCP_CHRONO_START),
            field(tp, &TCP_SRTT_US),
            field(tp, &TCP_TOTAL_RETRANS),
        )
    };
    // SAFETY: as above; `chrono_stat` is a `u32[3]`.
    let mut stat: [u32; 3] = unsafe {
        [field(tp, &TCP_CHRONO_STAT), field(tp.add(4), &TCP_CHRONO_STAT), field(tp.add(8), &TCP_CHRONO_STAT)]
    };
    // `enum tcp_chrono`: 0 none, 1 busy, 2 receiver window limited, 3 send buffer limited.
    // SAFETY: a helper without arguments.
    let ongoing = (unsafe { bpf_jiffies64() } as u32).wrapping_sub(start);
    // Constant indices: the verifier refuses variable offsets into the stack.
    match kind {
        1 => stat[0] = stat[0].wrapping_add(ongoing),
        2 => stat[1] = stat[1].wrapping_add(ongoing),
        3 => stat[2] = stat[2].wrapping_add(ongoing),
        _ => {}
    }
    Some(TcpChrono {
        in_flight: stat[0],
        rwnd_limited: stat[1],
        sndbuf_limited: stat[2],
        retrans,
        srtt_us: srtt >> 3,
        reserved: 0,
    })
}

/// The remote address of `sk` (IPv4 as an IPv4-mapped IPv6 address) and its port (host
/// order).
///
/// # Safety
/// `sk` must be a BTF-typed `struct sock *` of an AF_INET or AF_INET6 socket.
#[inline(always)]
pub unsafe fn peer(sk: *const u8) -> ([u8; 16], u16) {
    let mut addr = [0u8; 16];
    // SAFETY: fields of the socket, per the contract; a fault leaves zeros.
    unsafe {
        if field::<u16>(sk, &SK_FAMILY) == AF_INET {
            let v4: u32 = field(sk, &SK_DADDR);
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..].copy_from_slice(&v4.to_ne_bytes());
        } else {
            let _ = aya_ebpf::helpers::bpf_probe_read_kernel_buf(
                sk.add(patched(&SK_V6_DADDR) as usize),
                &mut addr,
            );
        }
        (addr, u16::from_be(field(sk, &SK_DPORT)))
    }
}
