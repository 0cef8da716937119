//! The per-CPU work area where a record is assembled (far larger than the 512-byte BPF
//! stack), and the state of the walks that fill it (`capture`'s iovec walks, `frames`' frame
//! walks): kept in the map value, where the verifier treats it as opaque, so each `bpf_loop`
//! body is checked once.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use observer_common::{EventHeader, FrameCursor, HEAD_LEN, MAX_IOV, TcpChrono};

/// Room the verifier can see: head copies start below `HEAD_LEN` and are at most `HEAD_LEN`
/// long, tail copies start below `HEAD_LEN + TAIL_LEN`; twice the largest head bounds both.
pub const DATA_CAP: usize = 2 * HEAD_LEN;

/// Per-CPU work area where a record is assembled (far larger than the 512-byte BPF stack).
#[repr(C)]
pub struct Scratch {
    pub header: EventHeader,
    pub data: [u8; DATA_CAP],
    pub iov: [Iovec; MAX_IOV],
    pub walk: Walk,
    pub frames: FrameWalk,
    /// The connection's TCP accounting, appended to the record when its header has `FLAG_TCP`.
    pub tcp: TcpChrono,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Iovec {
    pub base: u64,
    pub len: u64,
}

/// State of the iovec walks, which the `bpf_loop` callbacks update. An unrolled walk over 16
/// iovecs, or a `bpf_loop` over state on the stack (whose values the verifier tracks per
/// iteration), made the verifier explore over a million states ("BPF program is too large").
/// Kept in the scratch map value, the state is opaque to the verifier and each body is
/// checked once; every offset is re-bounded with explicit clamps instead.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct Walk {
    pub count: u64,
    /// Bytes not yet walked (head walk), or not yet located (end walk).
    pub left: u64,
    /// Head bytes gathered so far.
    pub off: u64,
    /// The last iovec the syscall reached, and how many of its bytes it used.
    pub last: u64,
    pub last_used: u64,
    /// Tail bytes still to gather, filled backwards from `head_len + remaining`.
    pub remaining: u64,
    pub head_len: u64,
    pub failed: u64,
    /// Most head bytes to gather for this syscall.
    pub cap: u64,
}

/// State of one frame walk (`frames`), opaque to the verifier like `Walk`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FrameWalk {
    pub cursor: FrameCursor,
    /// The header being gathered (its first `cursor.header_len` bytes).
    pub header: [u8; 24],
    /// The caller's iovec array (0: one plain buffer, already in slot 0), how many, the one
    /// being walked, and the first of the batch in `scratch.iov`.
    pub iov_user: u64,
    pub count: u64,
    pub index: u64,
    pub batch: u64,
    /// Offset inside the current iovec.
    pub off: u64,
    /// Bytes of the call not walked yet.
    pub left: u64,
    /// Bytes kept in `scratch.data`, and the wire bytes walked since the last record.
    pub out: u64,
    pub wire: u64,
    pub failed: u64,
}

/// Per-CPU work area where a record is assembled.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the per-CPU scratch slot is only used by the program running on this CPU.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
