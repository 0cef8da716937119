//! Decoding of ring-buffer records into plain Rust values: the one place that knows the
//! byte layout of `observer_common::EventHeader` and what follows it.

use std::mem::offset_of;

use observer_common::{
    Call, Direction, EventHeader, FLAG_CIPHER, FLAG_FRAMES, FLAG_LOST_BEFORE, FLAG_NEW, FLAG_TCP, HEAD_LEN,
    HEADER_LEN, Kind, Role, TAIL_LEN, TCP_CHRONO_LEN, TcpChrono,
};

/// One record of the kernel programs: bytes a target moved on a connection, or an event about
/// a connection or a process (see `Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub ts_ns: u64,
    pub kind: Kind,
    /// Which call moved the bytes (`Call::None` but for data).
    pub call: Call,
    /// Which side of the connection the process is on.
    pub role: Role,
    /// Bytes moved (`frames`: the wire bytes the record stands for).
    pub ret: i64,
    /// The connection (socket cookie, or tgid and fd): what the daemon's table is keyed by.
    pub conn: u64,
    pub tgid: u32,
    /// The connection's fd in `tgid`, -1 if unknown.
    pub fd: i32,
    /// `Kind::Fork`: the child's pid (0 if unknown: a child in another PID namespace).
    pub child: u32,
    /// `Kind::Listen` / `Unlisten`: the port.
    pub port: u16,
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
    /// A keyed TLS connection's record (`FLAG_CIPHER`): its bytes are TLS records.
    pub cipher: bool,
    /// The first bytes moved.
    pub head: &'a [u8],
    /// The last bytes moved, after the head; what lies between was not captured.
    pub tail: &'a [u8],
    /// TCP's accounting of the connection when the call returned (writes and closes on
    /// followed sockets).
    pub tcp: Option<TcpChrono>,
}

impl Event<'_> {
    /// Which way a data record's bytes went.
    pub fn direction(&self) -> Direction {
        self.call.direction()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("unknown call {0}")]
    Call(u8),
    #[error("unknown role {0}")]
    Role(u8),
    #[error("captured lengths {head}+{tail} exceed the record or the limits")]
    Captured { head: u32, tail: u32 },
    #[error("record of {0} bytes has no room for the TCP accounting it announces")]
    NoTcp(usize),
}

pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    if record.len() < HEADER_LEN {
        return Err(DecodeError::Short(record.len()));
    }
    let u8_at = |off: usize| record[off];
    let u16_at = |off: usize| u16::from_ne_bytes(record[off..off + 2].try_into().expect("2 bytes"));
    let u32_at = |off: usize| u32::from_ne_bytes(record[off..off + 4].try_into().expect("4 bytes"));
    let u64_at = |off: usize| u64::from_ne_bytes(record[off..off + 8].try_into().expect("8 bytes"));
    let kind = Kind::try_from(u8_at(offset_of!(EventHeader, kind))).map_err(DecodeError::Kind)?;
    let call = Call::try_from(u8_at(offset_of!(EventHeader, call))).map_err(DecodeError::Call)?;
    let role = Role::try_from(u8_at(offset_of!(EventHeader, role))).map_err(DecodeError::Role)?;
    let head = u32::from(u16_at(offset_of!(EventHeader, head_len)));
    let tail = u32::from(u16_at(offset_of!(EventHeader, tail_len)));
    let (head_len, tail_len) = (head as usize, tail as usize);
    if head_len > HEAD_LEN || tail_len > TAIL_LEN || HEADER_LEN + head_len + tail_len > record.len() {
        return Err(DecodeError::Captured { head, tail });
    }
    let data = &record[HEADER_LEN..];
    let flags = u32_at(offset_of!(EventHeader, flags));
    let tcp = match flags & FLAG_TCP {
        0 => None,
        _ => Some(
            tcp_chrono(data.get(head_len + tail_len..).unwrap_or_default())
                .ok_or(DecodeError::NoTcp(record.len()))?,
        ),
    };
    Ok(Event {
        ts_ns: u64_at(offset_of!(EventHeader, ts_ns)),
        kind,
        call,
        role,
        ret: u64_at(offset_of!(EventHeader, ret)) as i64,
        conn: u64_at(offset_of!(EventHeader, conn)),
        tgid: u32_at(offset_of!(EventHeader, tgid)),
        fd: u32_at(offset_of!(EventHeader, fd)) as i32,
        child: u32_at(offset_of!(EventHeader, child)),
        port: u16_at(offset_of!(EventHeader, port)),
        lost_before: flags & FLAG_LOST_BEFORE != 0,
        new_conn: flags & FLAG_NEW != 0,
        wait_ns: match u32_at(offset_of!(EventHeader, wait_us)) {
            0 => None,
            us => Some(u64::from(us) * 1000),
        },
        frames: flags & FLAG_FRAMES != 0,
        cipher: flags & FLAG_CIPHER != 0,
        seq: u32_at(offset_of!(EventHeader, seq)),
        head: &data[..head_len],
        tail: &data[head_len..head_len + tail_len],
        tcp,
    })
}

/// The `TcpChrono` at the start of `bytes` (unaligned: it follows the captured bytes).
fn tcp_chrono(bytes: &[u8]) -> Option<TcpChrono> {
    let bytes = bytes.get(..TCP_CHRONO_LEN)?;
    let u32_at = |field: usize| u32::from_ne_bytes(bytes[field..field + 4].try_into().expect("4 bytes"));
    Some(TcpChrono {
        in_flight: u32_at(offset_of!(TcpChrono, in_flight)),
        rwnd_limited: u32_at(offset_of!(TcpChrono, rwnd_limited)),
        sndbuf_limited: u32_at(offset_of!(TcpChrono, sndbuf_limited)),
        retrans: u32_at(offset_of!(TcpChrono, retrans)),
        srtt_us: u32_at(offset_of!(TcpChrono, srtt_us)),
        reserved: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: Kind, call: Call, head: &[u8], tail: &[u8], flags: u32) -> Vec<u8> {
        let header = EventHeader {
            ts_ns: 42,
            ret: -5,
            conn: 99,
            tgid: 7,
            tid: 8,
            fd: 3,
            flags,
            head_len: head.len() as u16,
            tail_len: tail.len() as u16,
            wait_us: 250,
            seq: 4,
            child: 11,
            kind: kind as u8,
            call: call as u8,
            role: Role::Server as u8,
            port: 8080,
            ..EventHeader::default()
        };
        // The header's bytes, as the kernel writes them (repr(C), no padding).
        let fields: [&[u8]; 15] = [
            &header.ts_ns.to_ne_bytes(),
            &header.ret.to_ne_bytes(),
            &header.conn.to_ne_bytes(),
            &header.tgid.to_ne_bytes(),
            &header.tid.to_ne_bytes(),
            &header.fd.to_ne_bytes(),
            &header.flags.to_ne_bytes(),
            &header.wait_us.to_ne_bytes(),
            &header.seq.to_ne_bytes(),
            &header.child.to_ne_bytes(),
            &header.head_len.to_ne_bytes(),
            &header.tail_len.to_ne_bytes(),
            &[header.kind, header.call, header.role, 0],
            &header.port.to_ne_bytes(),
            &[0, 0],
        ];
        let mut r: Vec<u8> = fields.concat();
        assert_eq!(r.len(), HEADER_LEN);
        r.extend_from_slice(head);
        r.extend_from_slice(tail);
        r.resize(r.len().next_multiple_of(8), 0); // the kernel pads records to 8 bytes
        r
    }

    #[test]
    fn decodes_every_field() {
        let r = record(Kind::Data, Call::Recvfrom, b"GET", b"\r\n", FLAG_LOST_BEFORE);
        let e = decode(&r).unwrap();
        assert_eq!(
            e,
            Event {
                ts_ns: 42,
                kind: Kind::Data,
                call: Call::Recvfrom,
                role: Role::Server,
                ret: -5,
                conn: 99,
                tgid: 7,
                fd: 3,
                child: 11,
                port: 8080,
                lost_before: true,
                new_conn: false,
                wait_ns: Some(250_000),
                frames: false,
                cipher: false,
                seq: 4,
                head: b"GET",
                tail: b"\r\n",
                tcp: None,
            }
        );
        assert_eq!(e.direction(), Direction::In);
    }

    #[test]
    fn tcp_accounting_follows_the_captured_bytes() {
        let mut r = record(Kind::Data, Call::Write, b"HTTP/1.1 200", b"ok", FLAG_TCP);
        r.truncate(HEADER_LEN + 14);
        for v in [7u32, 8, 9, 10, 11, 0] {
            r.extend_from_slice(&v.to_ne_bytes());
        }
        let e = decode(&r).unwrap();
        assert_eq!((e.head, e.tail), (&b"HTTP/1.1 200"[..], &b"ok"[..]));
        let tcp = TcpChrono {
            in_flight: 7,
            rwnd_limited: 8,
            sndbuf_limited: 9,
            retrans: 10,
            srtt_us: 11,
            reserved: 0,
        };
        assert_eq!(e.tcp, Some(tcp));
        r.truncate(HEADER_LEN + 14 + 20);
        assert_eq!(decode(&r), Err(DecodeError::NoTcp(HEADER_LEN + 34)), "a cut record is refused");
    }

    #[test]
    fn header_only_records_decode() {
        let r = record(Kind::Close, Call::None, b"", b"", FLAG_NEW);
        let e = decode(&r).unwrap();
        assert_eq!((e.kind, e.head, e.tail, e.lost_before), (Kind::Close, &b""[..], &b""[..], false));
        assert!(e.new_conn);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Short(10)));
        let mut r = record(Kind::Data, Call::Read, b"abc", b"", 0);
        r[offset_of!(EventHeader, kind)] = 77;
        assert_eq!(decode(&r), Err(DecodeError::Kind(77)));
        let mut r = record(Kind::Data, Call::Read, b"abc", b"", 0);
        r[offset_of!(EventHeader, call)] = 99;
        assert_eq!(decode(&r), Err(DecodeError::Call(99)));
        let mut r = record(Kind::Data, Call::Read, b"abc", b"", 0);
        r[offset_of!(EventHeader, role)] = 0;
        assert_eq!(decode(&r), Err(DecodeError::Role(0)));
        let mut r = record(Kind::Data, Call::Read, b"abc", b"", 0);
        r[offset_of!(EventHeader, head_len)..][..2].copy_from_slice(&(HEAD_LEN as u16 + 1).to_ne_bytes());
        assert_eq!(decode(&r), Err(DecodeError::Captured { head: HEAD_LEN as u32 + 1, tail: 0 }));
        r[offset_of!(EventHeader, head_len)..][..2].copy_from_slice(&20u16.to_ne_bytes());
        assert_eq!(decode(&r), Err(DecodeError::Captured { head: 20, tail: 0 }), "past the record's end");
    }
}
