//! HTTP/2's side of the ABI: how the kernel walks a connection's frames between calls.

/// A `FrameCursor`'s `copy` that never runs out: every byte is copied (a keyed TLS socket
/// speaking HTTP/2, whose frames only the daemon can see, after decrypting).
pub const COPY_ALL: u32 = u32::MAX;

/// The client connection preface (RFC 9113 §3.4): the first bytes an HTTP/2 server reads.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most payload bytes of one frame copied. SETTINGS_MAX_FRAME_SIZE starts at 16 KiB; a
/// larger header block fragment (a peer that raised it) is cut, and the daemon stops
/// trusting that direction's HPACK state.
pub const KEPT_PAYLOAD: u32 = 16 << 10;

/// Whether a frame kind's payload is copied: what HPACK and stream state need (HEADERS,
/// RST_STREAM, SETTINGS, PUSH_PROMISE, GOAWAY, CONTINUATION). DATA and the rest go by length.
pub const fn frame_payload_kept(kind: u8) -> bool {
    matches!(kind, 0x1 | 0x3 | 0x4 | 0x5 | 0x7 | 0x9)
}

/// Where one direction of an HTTP/2 connection is inside its frames, kept between calls: Go
/// reads a frame's header and its payload in separate calls, and frames span reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCursor {
    /// Bytes of the current frame (or of the preface) still to copy.
    pub copy: u32,
    /// Bytes of it still to pass over after those.
    pub skip: u32,
    /// The next frame header's first bytes, when a call ended inside it.
    pub header: [u8; 8],
    /// How many of them (0 to 8).
    pub header_len: u32,
    /// The number the direction's next record gets: a gap is a lost record.
    pub seq: u32,
}

/// Value of the kernel's `FRAME_CURSORS` table, keyed like records (`conn`): reads, writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCursors {
    pub read: FrameCursor,
    pub write: FrameCursor,
}
