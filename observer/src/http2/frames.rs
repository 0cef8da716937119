//! HTTP/2 frames (RFC 9113 §4) out of one direction's bytes, delivered in chunks split
//! anywhere (Go reads a frame's 9-byte header and its payload in separate calls; frames span
//! reads). The position inside a frame carries across chunks. Payloads that HPACK and stream
//! state need (HEADERS, CONTINUATION, PUSH_PROMISE, SETTINGS, RST_STREAM, GOAWAY) are kept up
//! to `MAX_KEPT_PAYLOAD`; DATA and the rest only by length. Pure: bytes in, frames out.

/// The client connection preface (§3.4), which precedes the client's first frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame header length.
const HEADER_LEN: usize = 9;

/// The most payload kept of one frame: a header block fragment larger than this is reported
/// `Frame::cut` (its connection's HPACK state can no longer be trusted). SETTINGS_MAX_FRAME_SIZE
/// starts at 16 KiB; servers rarely raise it for headers.
pub const MAX_KEPT_PAYLOAD: usize = 16 << 10;

/// Frame types (§6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
}

/// Whether a frame's payload is kept.
fn kept(kind: u8) -> bool {
    matches!(
        kind,
        kind::HEADERS
            | kind::CONTINUATION
            | kind::PUSH_PROMISE
            | kind::SETTINGS
            | kind::RST_STREAM
            | kind::GOAWAY
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// The payload's length on the wire.
    pub len: usize,
    /// The payload, for the kinds kept and up to `MAX_KEPT_PAYLOAD`; empty otherwise.
    pub payload: Vec<u8>,
    /// The payload was longer than what was kept.
    pub cut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the client preface is not there")]
    NoPreface,
}

/// One direction's frame reader.
#[derive(Debug)]
pub struct Reader {
    /// Preface bytes still expected (client direction) before the first frame.
    preface_left: usize,
    /// The header being read, and how much of it.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// The frame whose payload is being read, and the payload bytes still to come.
    current: Option<Frame>,
    left: usize,
}

impl Reader {
    /// The client's direction: the preface first.
    pub fn client() -> Self {
        Reader { preface_left: PREFACE.len(), ..Reader::server() }
    }

    /// The server's direction: frames from the first byte.
    pub fn server() -> Self {
        Reader { preface_left: 0, header: [0; HEADER_LEN], header_len: 0, current: None, left: 0 }
    }

    /// Reads `bytes`, appending each frame completed to `out`.
    pub fn read(&mut self, mut bytes: &[u8], out: &mut Vec<Frame>) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let at = PREFACE.len() - self.preface_left;
                let n = self.preface_left.min(bytes.len());
                if bytes[..n] != PREFACE[at..at + n] {
                    return Err(FrameError::NoPreface);
                }
                self.preface_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            if let Some(frame) = &mut self.current {
                let n = self.left.min(bytes.len());
                if kept(frame.kind) {
                    let room = MAX_KEPT_PAYLOAD.saturating_sub(frame.payload.len());
                    frame.payload.extend_from_slice(&bytes[..n.min(room)]);
                    frame.cut |= n > room;
                }
                self.left -= n;
                bytes = &bytes[n..];
                if self.left == 0 {
                    out.extend(self.current.take());
                }
                continue;
            }
            let n = (HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == HEADER_LEN {
                self.header_len = 0;
                let h = self.header;
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                let capacity = if kept(h[3]) { len.min(MAX_KEPT_PAYLOAD) } else { 0 };
                let frame = Frame {
                    kind: h[3],
                    flags: h[4],
                    stream,
                    len,
                    payload: Vec::with_capacity(capacity),
                    cut: false,
                };
                if len == 0 {
                    out.push(frame);
                } else {
                    (self.current, self.left) = (Some(frame), len);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut bytes = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        bytes.extend(stream.to_be_bytes());
        bytes.extend(payload);
        bytes
    }

    fn conversation() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(kind::SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
        bytes.extend(frame(kind::HEADERS, 0x4, 1, &[0x82, 0x86, 0x84]));
        bytes.extend(frame(kind::DATA, 0x1, 1, &[7; 100]));
        bytes.extend(frame(kind::SETTINGS, 0x1, 0, &[]));
        bytes.extend(frame(kind::RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        bytes
    }

    #[test]
    fn frames_come_out_whole_wherever_the_reads_split_them() {
        let bytes = conversation();
        let mut whole = Vec::new();
        Reader::client().read(&bytes, &mut whole).unwrap();
        let kinds: Vec<(u8, u32, usize)> =
            whole.iter().map(|f| (f.kind, f.stream, f.payload.len())).collect();
        assert_eq!(
            kinds,
            [
                (kind::SETTINGS, 0, 6),
                (kind::HEADERS, 1, 3),
                (kind::DATA, 1, 0),
                (kind::SETTINGS, 0, 0),
                (kind::RST_STREAM, 3, 4)
            ]
        );
        assert_eq!(whole[2].len, 100, "DATA: its length, not its bytes");
        for split in 1..bytes.len() {
            let (mut reader, mut frames) = (Reader::client(), Vec::new());
            reader.read(&bytes[..split], &mut frames).unwrap();
            reader.read(&bytes[split..], &mut frames).unwrap();
            assert_eq!(frames, whole, "split at {split}");
        }
        let (mut reader, mut frames) = (Reader::client(), Vec::new());
        for byte in &bytes {
            reader.read(std::slice::from_ref(byte), &mut frames).unwrap();
        }
        assert_eq!(frames, whole, "a byte at a time");
    }

    #[test]
    fn a_large_header_block_is_kept_up_to_the_bound_and_said_cut() {
        let bytes = frame(kind::HEADERS, 0x4, 1, &vec![0x82; MAX_KEPT_PAYLOAD + 10]);
        let mut frames = Vec::new();
        Reader::server().read(&bytes, &mut frames).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(frames[0].cut);
        assert_eq!((frames[0].payload.len(), frames[0].len), (MAX_KEPT_PAYLOAD, MAX_KEPT_PAYLOAD + 10));
    }

    #[test]
    fn bytes_that_are_not_the_preface_are_refused() {
        let mut frames = Vec::new();
        assert_eq!(Reader::client().read(b"GET / HTTP/1.1\r\n", &mut frames), Err(FrameError::NoPreface));
        let mut reader = Reader::client();
        reader.read(&PREFACE[..10], &mut frames).unwrap();
        assert_eq!(reader.read(b"XX", &mut frames), Err(FrameError::NoPreface), "split inside the preface");
    }
}
