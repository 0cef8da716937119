//! Decoding of ring-buffer records into plain Rust values: the one place that knows the
//! byte layout of `observer_common::Event`.

use std::mem::{offset_of, size_of};

use observer_common::{Event, FLAG_LOST_BEFORE, HEAD_LEN, Syscall};

/// One syscall of a target on one of its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallEvent<'a> {
    pub ts_ns: u64,
    /// Bytes moved, or the accepted fd.
    pub ret: i64,
    pub tgid: u32,
    pub fd: i32,
    pub syscall: Syscall,
    /// Events of this socket were dropped before this one.
    pub lost_before: bool,
    /// The captured prefix of the bytes moved.
    pub head: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {expected}", expected = size_of::<Event>())]
    Size(usize),
    #[error("unknown syscall kind {0}")]
    Syscall(u32),
    #[error("captured length {0} exceeds the head")]
    Captured(u32),
}

pub fn decode(record: &[u8]) -> Result<SyscallEvent<'_>, DecodeError> {
    if record.len() < size_of::<Event>() {
        return Err(DecodeError::Size(record.len()));
    }
    let u32_at = |off: usize| u32::from_ne_bytes(record[off..off + 4].try_into().expect("4 bytes"));
    let u64_at = |off: usize| u64::from_ne_bytes(record[off..off + 8].try_into().expect("8 bytes"));
    let syscall = u32_at(offset_of!(Event, syscall));
    let syscall = Syscall::try_from(syscall).map_err(DecodeError::Syscall)?;
    let captured = u32_at(offset_of!(Event, captured));
    if captured as usize > HEAD_LEN {
        return Err(DecodeError::Captured(captured));
    }
    let head_at = offset_of!(Event, head);
    Ok(SyscallEvent {
        ts_ns: u64_at(offset_of!(Event, ts_ns)),
        ret: u64_at(offset_of!(Event, ret)) as i64,
        tgid: u32_at(offset_of!(Event, tgid)),
        fd: u32_at(offset_of!(Event, fd)) as i32,
        syscall,
        lost_before: u32_at(offset_of!(Event, flags)) & FLAG_LOST_BEFORE != 0,
        head: &record[head_at..head_at + captured as usize],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(syscall: u32, captured: u32, flags: u32) -> Vec<u8> {
        let mut r = vec![0u8; size_of::<Event>()];
        r[offset_of!(Event, ts_ns)..][..8].copy_from_slice(&42u64.to_ne_bytes());
        r[offset_of!(Event, ret)..][..8].copy_from_slice(&(-5i64).to_ne_bytes());
        r[offset_of!(Event, tgid)..][..4].copy_from_slice(&7u32.to_ne_bytes());
        r[offset_of!(Event, fd)..][..4].copy_from_slice(&3i32.to_ne_bytes());
        r[offset_of!(Event, syscall)..][..4].copy_from_slice(&syscall.to_ne_bytes());
        r[offset_of!(Event, flags)..][..4].copy_from_slice(&flags.to_ne_bytes());
        r[offset_of!(Event, captured)..][..4].copy_from_slice(&captured.to_ne_bytes());
        r[offset_of!(Event, head)..][..3].copy_from_slice(b"GET");
        r
    }

    #[test]
    fn decodes_every_field() {
        let r = record(Syscall::Recvfrom as u32, 3, FLAG_LOST_BEFORE);
        let e = decode(&r).unwrap();
        assert_eq!(
            e,
            SyscallEvent {
                ts_ns: 42,
                ret: -5,
                tgid: 7,
                fd: 3,
                syscall: Syscall::Recvfrom,
                lost_before: true,
                head: b"GET"
            }
        );
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Size(10)));
        assert_eq!(decode(&record(77, 0, 0)), Err(DecodeError::Syscall(77)));
        assert_eq!(
            decode(&record(1, HEAD_LEN as u32 + 1, 0)),
            Err(DecodeError::Captured(HEAD_LEN as u32 + 1))
        );
    }
}
