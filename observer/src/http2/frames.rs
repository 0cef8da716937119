//! HTTP/2 frames (RFC 9113 §4) out of one direction's records, as the kernel walks them
//! (`observer-ebpf/src/frames.rs`): every frame header, the payloads of the kinds kept (those
//! HPACK and stream state need) up to `KEPT_PAYLOAD`, nothing of DATA. Each record says how
//! many bytes went over the wire, so the reader knows where every frame ends, and in which
//! record, however the calls split them (Go reads a frame's 9-byte header and its payload in
//! separate calls; frames span reads). Pure: records in, frames out.

use observer_common::{KEPT_PAYLOAD, frame_payload_kept};

/// The client connection preface (§3.4), which precedes the client's first frame.
pub const PREFACE: &[u8] = observer_common::H2_PREFACE;

/// Frame header length.
const HEADER_LEN: usize = 9;

/// The most payload kept of one frame; beyond, the frame is `cut`.
pub const MAX_KEPT_PAYLOAD: usize = KEPT_PAYLOAD as usize;

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

/// Frame flags (§6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
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
    #[error("a record's kept bytes and its wire length disagree")]
    Inconsistent,
}

/// One direction's frame reader.
#[derive(Debug)]
pub struct Reader {
    /// Preface bytes still expected (client direction) before the first frame.
    preface_left: usize,
    /// The header being read, and how much of it.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// The frame whose payload is being read, its kept bytes still to come, and the wire
    /// bytes past them (not in the records).
    current: Option<Frame>,
    copy_left: usize,
    skip_left: usize,
}

impl Reader {
    /// The client's direction: the preface first.
    pub fn client() -> Self {
        Reader { preface_left: PREFACE.len(), ..Reader::server() }
    }

    /// The server's direction: frames from the first byte.
    pub fn server() -> Self {
        Reader {
            preface_left: 0,
            header: [0; HEADER_LEN],
            header_len: 0,
            current: None,
            copy_left: 0,
            skip_left: 0,
        }
    }

    /// The connection was joined after its start: no preface comes.
    pub fn skip_preface(&mut self) {
        self.preface_left = 0;
    }

    /// Reads one record: `kept`, standing for `wire` bytes on the wire. Appends each frame
    /// completed to `out`.
    pub fn read(&mut self, mut kept: &[u8], mut wire: u64, out: &mut Vec<Frame>) -> Result<(), FrameError> {
        loop {
            if self.preface_left > 0 {
                let at = PREFACE.len() - self.preface_left;
                let n = self.preface_left.min(kept.len());
                if n == 0 {
                    break;
                }
                if kept[..n] != PREFACE[at..at + n] {
                    return Err(FrameError::NoPreface);
                }
                self.preface_left -= n;
                (kept, wire) = (&kept[n..], take(wire, n)?);
                continue;
            }
            if let Some(frame) = &mut self.current {
                if self.copy_left > 0 {
                    let n = self.copy_left.min(kept.len());
                    if n == 0 {
                        break;
                    }
                    frame.payload.extend_from_slice(&kept[..n]);
                    self.copy_left -= n;
                    (kept, wire) = (&kept[n..], take(wire, n)?);
                } else if self.skip_left > 0 {
                    let n = (self.skip_left as u64).min(wire) as usize;
                    if n == 0 {
                        break;
                    }
                    self.skip_left -= n;
                    wire -= n as u64;
                }
                if self.copy_left == 0 && self.skip_left == 0 {
                    out.extend(self.current.take());
                }
                continue;
            }
            let n = (HEADER_LEN - self.header_len).min(kept.len());
            if n == 0 {
                break;
            }
            self.header[self.header_len..self.header_len + n].copy_from_slice(&kept[..n]);
            self.header_len += n;
            (kept, wire) = (&kept[n..], take(wire, n)?);
            if self.header_len == HEADER_LEN {
                self.header_len = 0;
                self.begin(out);
            }
        }
        if !kept.is_empty() || wire != 0 {
            return Err(FrameError::Inconsistent);
        }
        Ok(())
    }

    /// A frame header was read whole.
    fn begin(&mut self, out: &mut Vec<Frame>) {
        let h = self.header;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let copy = if frame_payload_kept(h[3]) { len.min(MAX_KEPT_PAYLOAD) } else { 0 };
        let frame = Frame {
            kind: h[3],
            flags: h[4],
            stream,
            len,
            payload: Vec::with_capacity(copy),
            cut: copy < len && frame_payload_kept(h[3]),
        };
        if len == 0 {
            out.push(frame);
        } else {
            (self.current, self.copy_left, self.skip_left) = (Some(frame), copy, len - copy);
        }
    }
}

/// `wire - n`, or the record is inconsistent.
fn take(wire: u64, n: usize) -> Result<u64, FrameError> {
    wire.checked_sub(n as u64).ok_or(FrameError::Inconsistent)
}

/// A frame's bytes (RFC 9113 §4.1), for tests and the fuzz targets.
pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut bytes = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// A model of the kernel's walk (`observer-ebpf/src/frames.rs`): one direction's calls in, the
/// records the kernel sends out (kept bytes, wire length). It walks the decrypted calls of
/// keyed h2 sessions (`tls::frames`), and stands for the kernel in tests and fuzz targets.
#[derive(Debug, Default)]
pub struct KernelModel {
    copy: usize,
    skip: usize,
    header: Vec<u8>,
}

impl KernelModel {
    pub fn client() -> Self {
        KernelModel { copy: PREFACE.len(), ..KernelModel::default() }
    }

    pub fn server() -> Self {
        KernelModel::default()
    }

    /// The record of one call that moved `bytes`.
    pub fn call(&mut self, bytes: &[u8]) -> (Vec<u8>, u64) {
        let mut kept = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let n = if self.copy > 0 {
                let n = self.copy.min(rest.len());
                kept.extend_from_slice(&rest[..n]);
                self.copy -= n;
                n
            } else if self.skip > 0 {
                let n = self.skip.min(rest.len());
                self.skip -= n;
                n
            } else {
                let n = (HEADER_LEN - self.header.len()).min(rest.len());
                kept.extend_from_slice(&rest[..n]);
                self.header.extend_from_slice(&rest[..n]);
                if self.header.len() == HEADER_LEN {
                    let h = std::mem::take(&mut self.header);
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.copy = if frame_payload_kept(h[3]) { len.min(MAX_KEPT_PAYLOAD) } else { 0 };
                    self.skip = len - self.copy;
                }
                n
            };
            at += n;
        }
        (kept, bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::{encode as frame, *};

    fn conversation() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(kind::SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
        bytes.extend(frame(kind::HEADERS, 0x4, 1, &[0x82, 0x86, 0x84]));
        bytes.extend(frame(kind::DATA, 0x1, 1, &[7; 100]));
        bytes.extend(frame(kind::SETTINGS, 0x1, 0, &[]));
        bytes.extend(frame(kind::RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        bytes
    }

    /// The frames of `calls`, as the kernel records them.
    fn read_calls(calls: &[&[u8]]) -> Result<Vec<Frame>, FrameError> {
        let (mut kernel, mut reader, mut frames) = (KernelModel::client(), Reader::client(), Vec::new());
        for call in calls {
            let (kept, wire) = kernel.call(call);
            reader.read(&kept, wire, &mut frames)?;
        }
        Ok(frames)
    }

    #[test]
    fn frames_come_out_whole_wherever_the_calls_split_them() {
        let bytes = conversation();
        let whole = read_calls(&[&bytes]).unwrap();
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
            assert_eq!(read_calls(&[&bytes[..split], &bytes[split..]]).unwrap(), whole, "split at {split}");
        }
        let bytes_one_by_one: Vec<&[u8]> = bytes.iter().map(std::slice::from_ref).collect();
        assert_eq!(read_calls(&bytes_one_by_one).unwrap(), whole, "a byte at a time");
    }

    #[test]
    fn a_frame_ends_in_the_record_that_carries_its_last_byte() {
        let data = frame(kind::DATA, 0x1, 1, &[7; 100]);
        let (mut kernel, mut reader, mut frames) = (KernelModel::server(), Reader::server(), Vec::new());
        let (kept, wire) = kernel.call(&data[..50]);
        reader.read(&kept, wire, &mut frames).unwrap();
        assert!(frames.is_empty(), "half the payload is still to be written");
        let (kept, wire) = kernel.call(&data[50..]);
        assert!(kept.is_empty());
        reader.read(&kept, wire, &mut frames).unwrap();
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn a_large_header_block_is_kept_up_to_the_bound_and_said_cut() {
        let bytes = frame(kind::HEADERS, 0x4, 1, &vec![0x82; MAX_KEPT_PAYLOAD + 10]);
        let (kept, wire) = KernelModel::server().call(&bytes);
        let mut frames = Vec::new();
        Reader::server().read(&kept, wire, &mut frames).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(frames[0].cut);
        assert_eq!((frames[0].payload.len(), frames[0].len), (MAX_KEPT_PAYLOAD, MAX_KEPT_PAYLOAD + 10));
    }

    #[test]
    fn bytes_that_are_not_the_preface_or_do_not_add_up_are_refused() {
        let mut frames = Vec::new();
        assert_eq!(Reader::client().read(b"GET / HTTP/1.1\r\n", 16, &mut frames), Err(FrameError::NoPreface));
        let mut reader = Reader::client();
        reader.read(&PREFACE[..10], 10, &mut frames).unwrap();
        assert_eq!(
            reader.read(b"XX", 2, &mut frames),
            Err(FrameError::NoPreface),
            "split inside the preface"
        );
        let settings = frame(kind::SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]);
        assert_eq!(Reader::server().read(&settings, 5, &mut frames), Err(FrameError::Inconsistent));
        assert_eq!(Reader::server().read(&settings, 99, &mut frames), Err(FrameError::Inconsistent));
    }
}
