//! Decoding of ring-buffer records into plain Rust values: the one place that knows the
//! byte layout of `observer_common::EventHeader` and what follows it.

use std::mem::offset_of;

use observer_common::{
    EventHeader, FLAG_FRAMES, FLAG_LOST_BEFORE, FLAG_NEW, HEAD_LEN, HEADER_LEN, Syscall, TAIL_LEN,
};

/// One syscall of a target on one of its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallEvent<'a> {
    pub ts_ns: u64,
    /// Bytes moved, or the accepted fd.
    pub ret: i64,
    /// The connection (socket cookie, or tgid and fd): what the daemon's table is keyed by.
    pub conn: u64,
    pub tgid: u32,
    pub fd: i32,
    pub syscall: Syscall,
    /// Events of this socket were dropped before this one.
    pub lost_before: bool,
    /// The kernel saw this connection open: its first bytes read begin a request.
    pub new_conn: bool,
    /// On the first read of a connection the kernel saw open: how long it waited, from the
    /// handshake's completion to this read.
    pub wait_ns: Option<u64>,
    /// An HTTP/2 connection's record: `head` is the call's frames as the kernel walked them
    /// (`FLAG_FRAMES`), `ret` the wire bytes they stand for, `seq` the record's number in its
    /// direction.
    pub frames: bool,
    pub seq: u32,
    /// The first bytes moved.
    pub head: &'a [u8],
    /// The last bytes moved, after the head; what lies between was not captured.
    pub tail: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown syscall kind {0}")]
    Syscall(u32),
    #[error("captured lengths {head}+{tail} exceed the record or the limits")]
    Captured { head: u32, tail: u32 },
}

pub fn decode(record: &[u8]) -> Result<SyscallEvent<'_>, DecodeError> {
    if record.len() < HEADER_LEN {
        return Err(DecodeError::Short(record.len()));
    }
    let u32_at = |off: usize| u32::from_ne_bytes(record[off..off + 4].try_into().expect("4 bytes"));
    let u64_at = |off: usize| u64::from_ne_bytes(record[off..off + 8].try_into().expect("8 bytes"));
    let syscall = u32_at(offset_of!(EventHeader, syscall));
    let syscall = Syscall::try_from(syscall).map_err(DecodeError::Syscall)?;
    let head = u32_at(offset_of!(EventHeader, head_len));
    let tail = u32_at(offset_of!(EventHeader, tail_len));
    let (head_len, tail_len) = (head as usize, tail as usize);
    if head_len > HEAD_LEN || tail_len > TAIL_LEN || HEADER_LEN + head_len + tail_len > record.len() {
        return Err(DecodeError::Captured { head, tail });
    }
    let data = &record[HEADER_LEN..];
    Ok(SyscallEvent {
        ts_ns: u64_at(offset_of!(EventHeader, ts_ns)),
        ret: u64_at(offset_of!(EventHeader, ret)) as i64,
        conn: u64_at(offset_of!(EventHeader, conn)),
        tgid: u32_at(offset_of!(EventHeader, tgid)),
        fd: u32_at(offset_of!(EventHeader, fd)) as i32,
        syscall,
        lost_before: u32_at(offset_of!(EventHeader, flags)) & FLAG_LOST_BEFORE != 0,
        new_conn: u32_at(offset_of!(EventHeader, flags)) & FLAG_NEW != 0,
        wait_ns: match u32_at(offset_of!(EventHeader, wait_us)) {
            0 => None,
            us => Some(u64::from(us) * 1000),
        },
        frames: u32_at(offset_of!(EventHeader, flags)) & FLAG_FRAMES != 0,
        seq: u32_at(offset_of!(EventHeader, seq)),
        head: &data[..head_len],
        tail: &data[head_len..head_len + tail_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(syscall: u32, head: &[u8], tail: &[u8], flags: u32) -> Vec<u8> {
        let header = [
            42u64.to_ne_bytes().to_vec(),
            (-5i64).to_ne_bytes().to_vec(),
            99u64.to_ne_bytes().to_vec(),
            7u32.to_ne_bytes().to_vec(),
            8u32.to_ne_bytes().to_vec(),
            3i32.to_ne_bytes().to_vec(),
            syscall.to_ne_bytes().to_vec(),
            flags.to_ne_bytes().to_vec(),
            (head.len() as u32).to_ne_bytes().to_vec(),
            (tail.len() as u32).to_ne_bytes().to_vec(),
            250u32.to_ne_bytes().to_vec(),
            4u32.to_ne_bytes().to_vec(),
            1u32.to_ne_bytes().to_vec(),
        ];
        let mut r: Vec<u8> = header.concat();
        assert_eq!(r.len(), HEADER_LEN);
        r.extend_from_slice(head);
        r.extend_from_slice(tail);
        r.resize(r.len().next_multiple_of(8), 0); // the kernel pads records to 8 bytes
        r
    }

    #[test]
    fn decodes_every_field() {
        let r = record(Syscall::Recvfrom as u32, b"GET", b"\r\n", FLAG_LOST_BEFORE);
        let e = decode(&r).unwrap();
        assert_eq!(
            e,
            SyscallEvent {
                ts_ns: 42,
                ret: -5,
                conn: 99,
                tgid: 7,
                fd: 3,
                syscall: Syscall::Recvfrom,
                lost_before: true,
                new_conn: false,
                wait_ns: Some(250_000),
                frames: false,
                seq: 4,
                head: b"GET",
                tail: b"\r\n"
            }
        );
    }

    #[test]
    fn header_only_records_decode() {
        let r = record(Syscall::Close as u32, b"", b"", FLAG_NEW);
        let e = decode(&r).unwrap();
        assert_eq!((e.syscall, e.head, e.tail, e.lost_before), (Syscall::Close, &b""[..], &b""[..], false));
        assert!(e.new_conn);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Short(10)));
        assert_eq!(decode(&record(77, b"", b"", 0)), Err(DecodeError::Syscall(77)));
        let mut r = record(1, b"abc", b"", 0);
        r[offset_of!(EventHeader, head_len)..][..4].copy_from_slice(&600u32.to_ne_bytes());
        assert_eq!(decode(&r), Err(DecodeError::Captured { head: 600, tail: 0 }));
        r[offset_of!(EventHeader, head_len)..][..4].copy_from_slice(&20u32.to_ne_bytes());
        assert_eq!(decode(&r), Err(DecodeError::Captured { head: 20, tail: 0 }), "past the record's end");
    }
}
