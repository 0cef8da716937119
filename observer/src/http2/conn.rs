//! One HTTP/2 connection, server side: the kernel's frame records of both directions in,
//! finished exchanges out. Streams are keyed by id, so any number run at once. A stream starts
//! with the client's HEADERS (the record that completed its header block), and ends with the
//! server's END_STREAM (a Trailers-Only HEADERS, the last DATA or the trailers) or a
//! RST_STREAM from either side (then abandoned). 1xx HEADERS do not end a stream.
//!
//! Pure: records in, `Finished` exchanges and anomalies out, like HTTP/1's `HttpConn`.

use rustc_hash::FxHashMap;

use super::{
    frames::{Frame, PREFACE, Reader, flag, kind},
    hpack::{self, Block, Decoder, Text},
};
use observer_common::TcpChrono;

use crate::exchange::{Anomaly, Finished, GrpcEnd, RequestHead, Sink, TcpSpan};

/// Most streams followed at once on one connection (servers allow 100 to 128 by default): a
/// stream beyond is not followed, and counted.
pub const MAX_STREAMS: usize = 1024;

/// Most bytes of one header block gathered across CONTINUATION frames.
const MAX_BLOCK: usize = 64 << 10;

/// SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// Which peer sent a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Server,
}

/// One kernel record of an HTTP/2 connection: `kept` bytes (see `frames`) standing for `wire`
/// bytes that `peer` sent, the record's number `seq` in that direction, at `ts_ns`.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub peer: Peer,
    pub ts_ns: u64,
    pub seq: u32,
    pub kept: &'a [u8],
    pub wire: u64,
    /// TCP's accounting after the call (the server's writes on followed sockets).
    pub tcp: Option<TcpChrono>,
}

/// One direction: its frames, its HPACK state, the header block being gathered.
#[derive(Debug)]
struct Side {
    reader: Reader,
    hpack: Decoder,
    block: Option<Pending>,
    /// The number the next record must have.
    next_seq: u32,
    /// A record of this side came.
    seen: bool,
    frames: Vec<Frame>,
}

/// What a header block belongs to.
#[derive(Debug, Clone, Copy)]
struct BlockHead {
    stream: u32,
    end_stream: bool,
    /// PUSH_PROMISE's block: decoded for the table's sake only.
    promise: bool,
    /// The wire length of the frame that ended it (for the response's bytes).
    len: usize,
}

/// A header block spread over HEADERS (or PUSH_PROMISE) and CONTINUATION frames.
#[derive(Debug)]
struct Pending {
    head: BlockHead,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Stream<T> {
    tag: T,
    start_ns: u64,
    first_byte_ns: Option<u64>,
    /// TCP's accounting at the write of its first byte.
    first_byte_tcp: Option<TcpChrono>,
    status: Option<u16>,
    response_bytes: u64,
    /// `Some` for gRPC (request `content-type: application/grpc*`): its outcome so far.
    grpc: Option<GrpcEnd>,
}

impl<T> Stream<T> {
    fn new(tag: T, start_ns: u64, grpc: Option<GrpcEnd>) -> Self {
        Stream {
            tag,
            start_ns,
            first_byte_ns: None,
            first_byte_tcp: None,
            status: None,
            response_bytes: 0,
            grpc,
        }
    }

    /// A server record at `ts_ns` carried bytes of its response.
    fn wrote(&mut self, ts_ns: u64, tcp: Option<TcpChrono>) {
        if self.first_byte_ns.is_none() {
            self.first_byte_ns = Some(ts_ns);
            self.first_byte_tcp = tcp;
        }
    }
}

#[derive(Debug)]
pub struct H2Conn<T> {
    client: Side,
    server: Side,
    streams: FxHashMap<u32, Stream<T>>,
    /// The highest stream id the client opened.
    last_stream: u32,
    /// The last stream id of the server's GOAWAY: streams above it are not processed (RFC
    /// 9113 §6.8), so not requests of the server.
    goaway: Option<u32>,
    /// Whether the connection is followed from its start (the client preface seen), or was
    /// joined later (an HTTP/2 connection from before attach, whose header tables hold
    /// entries we never saw); `None` until the first client record.
    from_start: Option<bool>,
    /// Frames can no longer be followed (a record lost, bytes that do not add up, a header
    /// block that cannot be decoded): nothing more is reported for this connection.
    broken: bool,
    /// Timestamp of the last record: where streams still open at the end are ended.
    last_ns: u64,
    /// TCP's accounting at the server's last record that reported it.
    last_write_tcp: Option<TcpChrono>,
}

impl<T> Default for H2Conn<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> H2Conn<T> {
    /// A connection whose client preface is the first thing its first client record holds.
    pub fn new() -> Self {
        let side = |reader| Side {
            reader,
            hpack: Decoder::new(),
            block: None,
            next_seq: 0,
            seen: false,
            frames: Vec::new(),
        };
        H2Conn {
            client: side(Reader::client()),
            server: side(Reader::server()),
            streams: FxHashMap::default(),
            last_stream: 0,
            goaway: None,
            from_start: None,
            broken: false,
            last_ns: 0,
            last_write_tcp: None,
        }
    }

    /// A connection switched from HTTP/1.1 by `Upgrade: h2c`: the request that asked is stream 1,
    /// already read (its head came as HTTP/1.1), its response still to come (RFC 7540 §3.2).
    pub fn upgraded(tag: T, start_ns: u64) -> Self {
        let mut conn = Self::new();
        conn.streams.insert(1, Stream::new(tag, start_ns, None));
        conn.last_stream = 1;
        conn
    }

    /// Streams waiting for their end.
    pub fn has_waiting(&self) -> bool {
        !self.streams.is_empty()
    }

    /// One record. `start` labels a new request from its head.
    pub fn on_record<F>(&mut self, record: Record<'_>, sink: &mut Sink<T>, start: &mut F)
    where
        F: FnMut(RequestHead<'_>) -> T,
    {
        let Record { peer, ts_ns, seq, kept, wire, tcp } = record;
        if peer == Peer::Server && tcp.is_some() {
            self.last_write_tcp = tcp;
        }
        if self.broken {
            return;
        }
        self.last_ns = self.last_ns.max(ts_ns);
        let side = self.side(peer);
        if seq != 0 && !side.seen {
            // The rest of a connection whose end was reported already (the server shut its
            // side down: nothing it reads can be answered), or one whose start found the
            // table full (counted there): nothing here can be followed.
            tracing::debug!(?peer, seq, "HTTP/2 records of a connection already ended");
            self.broken = true;
            return;
        }
        side.seen = true;
        if seq != side.next_seq {
            tracing::debug!(?peer, seq, expected = side.next_seq, "HTTP/2 record missing");
            // A record lost in the ring (observer_events_lost_total) or a call the kernel
            // could not walk (observer_http2_calls_unwalked_total).
            return self.break_off(Anomaly::Http2Frames, ts_ns, sink);
        }
        side.next_seq = seq.wrapping_add(1);
        if peer == Peer::Client && self.from_start.is_none() {
            self.join(kept);
        }
        let side = self.side(peer);
        let mut frames = std::mem::take(&mut side.frames);
        let read = side.reader.read(kept, wire, &mut frames);
        for frame in frames.drain(..) {
            if let Err(anomaly) = self.on_frame(peer, ts_ns, &frame, sink, start) {
                self.break_off(anomaly, ts_ns, sink);
                break;
            }
        }
        self.side(peer).frames = frames;
        if read.is_err() && !self.broken {
            self.break_off(Anomaly::Http2Frames, ts_ns, sink);
        }
    }

    /// The first client record: the preface, or (a connection the kernel found mid-stream, at
    /// a read of whole frames) frames at once, and header tables partly unknown.
    fn join(&mut self, kept: &[u8]) {
        let from_start = kept.first() == Some(&PREFACE[0]);
        self.from_start = Some(from_start);
        if !from_start {
            self.client.reader.skip_preface();
            self.client.hpack = Decoder::joined_late();
            self.server.hpack = Decoder::joined_late();
        }
    }

    /// The connection ended: streams still open are abandoned at its last record. A gRPC
    /// call among them was cut by the connection's end, as by a reset: `Canceled` (what the
    /// server's handler sees when its transport goes).
    pub fn on_close(mut self, sink: &mut Sink<T>) {
        for stream in self.streams.values_mut() {
            if stream.grpc == Some(GrpcEnd::Missing) {
                stream.grpc = Some(GrpcEnd::Reset);
            }
        }
        self.abandon_all(Some(self.last_ns), sink);
    }

    fn side(&mut self, peer: Peer) -> &mut Side {
        match peer {
            Peer::Client => &mut self.client,
            Peer::Server => &mut self.server,
        }
    }

    /// Stops following the connection: one anomaly, every open stream abandoned.
    fn break_off(&mut self, anomaly: Anomaly, ts_ns: u64, sink: &mut Sink<T>) {
        self.broken = true;
        tracing::debug!(reason = anomaly.reason(), "HTTP/2 connection given up");
        sink.anomalies.push(anomaly);
        self.abandon_all(Some(ts_ns), sink);
    }

    /// Every open stream leaves unanswered, ending at `end_ns` (not before it started). A
    /// gRPC call given up because we lost track keeps no code (started, never handled).
    fn abandon_all(&mut self, end_ns: Option<u64>, sink: &mut Sink<T>) {
        for (_, stream) in self.streams.drain() {
            let end_ns =
                end_ns.unwrap_or(stream.first_byte_ns.unwrap_or(stream.start_ns)).max(stream.start_ns);
            sink.finished.push(finish(stream, None, end_ns, None));
        }
    }

    fn on_frame<F>(
        &mut self,
        peer: Peer,
        ts_ns: u64,
        frame: &Frame,
        sink: &mut Sink<T>,
        start: &mut F,
    ) -> Result<(), Anomaly>
    where
        F: FnMut(RequestHead<'_>) -> T,
    {
        if self.side(peer).block.is_some() && frame.kind != kind::CONTINUATION {
            return Err(Anomaly::Http2Frames); // §6.10: nothing may interleave a header block
        }
        match frame.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                if frame.cut {
                    return Err(Anomaly::Http2Hpack);
                }
                let fragment = fragment(frame).ok_or(Anomaly::Http2Frames)?;
                let head = BlockHead {
                    stream: frame.stream,
                    end_stream: frame.kind == kind::HEADERS && frame.flags & flag::END_STREAM != 0,
                    promise: frame.kind == kind::PUSH_PROMISE,
                    len: frame.len,
                };
                if frame.flags & flag::END_HEADERS != 0 {
                    return self.header_block(peer, head, fragment, ts_ns, sink, start);
                }
                self.side(peer).block = Some(Pending { head, bytes: fragment.to_vec() });
                Ok(())
            }
            kind::CONTINUATION => {
                let Some(pending) = self.side(peer).block.as_mut() else {
                    return Err(Anomaly::Http2Frames);
                };
                if pending.head.stream != frame.stream {
                    return Err(Anomaly::Http2Frames);
                }
                if frame.cut {
                    return Err(Anomaly::Http2Hpack);
                }
                if pending.bytes.len() + frame.payload.len() > MAX_BLOCK {
                    return Err(Anomaly::HeadTooLarge);
                }
                pending.bytes.extend_from_slice(&frame.payload);
                if frame.flags & flag::END_HEADERS == 0 {
                    return Ok(());
                }
                let Pending { head, bytes } = self.side(peer).block.take().expect("checked above");
                self.header_block(peer, BlockHead { len: frame.len, ..head }, &bytes, ts_ns, sink, start)
            }
            kind::DATA => {
                if peer == Peer::Server
                    && let Some(stream) = self.streams.get_mut(&frame.stream)
                {
                    stream.response_bytes += 9 + frame.len as u64;
                    stream.wrote(ts_ns, self.last_write_tcp);
                    if frame.flags & flag::END_STREAM != 0 {
                        self.end(frame.stream, ts_ns, sink);
                    }
                }
                Ok(())
            }
            kind::RST_STREAM => {
                if let Some(mut stream) = self.streams.remove(&frame.stream) {
                    if stream.grpc.is_some() {
                        stream.grpc = Some(GrpcEnd::Reset);
                    }
                    sink.finished.push(finish(stream, None, ts_ns, None));
                }
                Ok(())
            }
            kind::GOAWAY if peer == Peer::Server => {
                if let Some(last) = frame.payload.first_chunk::<4>() {
                    let last = u32::from_be_bytes(*last) & 0x7fff_ffff;
                    self.goaway = Some(self.goaway.map_or(last, |old| old.min(last)));
                }
                Ok(())
            }
            kind::SETTINGS if frame.flags & flag::ACK == 0 => {
                // A peer's table size bounds what the other peer's encoder may use.
                let other = match peer {
                    Peer::Client => &mut self.server,
                    Peer::Server => &mut self.client,
                };
                for setting in frame.payload.chunks_exact(6) {
                    if u16::from_be_bytes([setting[0], setting[1]]) == SETTINGS_HEADER_TABLE_SIZE {
                        let size = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                        other.hpack.set_limit(size as usize);
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A whole header block: decoded (the table must stay in step whatever it holds), then a
    /// request's or a response's head, or trailers.
    fn header_block<F>(
        &mut self,
        peer: Peer,
        head: BlockHead,
        bytes: &[u8],
        ts_ns: u64,
        sink: &mut Sink<T>,
        start: &mut F,
    ) -> Result<(), Anomaly>
    where
        F: FnMut(RequestHead<'_>) -> T,
    {
        let hpack = &mut self.side(peer).hpack;
        let block = hpack.decode_only(bytes, &wanted).map_err(|_: hpack::Error| Anomaly::Http2Hpack)?;
        if head.promise {
            return Ok(()); // a pushed response's request: not one the client made
        }
        match peer {
            Peer::Client => self.request_headers(head.stream, &block, ts_ns, sink, start),
            Peer::Server => {
                self.response_headers(head, &block, ts_ns, sink);
                Ok(())
            }
        }
    }

    /// A client header block: a new request, or its trailers.
    fn request_headers<F>(
        &mut self,
        id: u32,
        block: &Block,
        ts_ns: u64,
        sink: &mut Sink<T>,
        start: &mut F,
    ) -> Result<(), Anomaly>
    where
        F: FnMut(RequestHead<'_>) -> T,
    {
        if self.streams.contains_key(&id) {
            return Ok(()); // request trailers
        }
        if id.is_multiple_of(2) || id <= self.last_stream {
            return Err(Anomaly::Http2Streams); // §5.1.1: client streams are odd and only grow
        }
        self.last_stream = id;
        if self.goaway.is_some_and(|last| id > last) {
            return Ok(()); // refused by the server's GOAWAY: the client retries it elsewhere
        }
        if self.streams.len() >= MAX_STREAMS {
            return Err(Anomaly::Http2Streams);
        }
        // On a connection joined late, a field held by a table entry from before has its name
        // unknown too: a pseudo-header not found may be one of those.
        let unresolved = block.unresolved > 0;
        let method = match field(block, b":method") {
            Some(method) => text(method).unwrap_or(""),
            None if unresolved => "",
            None => return Err(Anomaly::NotHttpRequest),
        };
        let target = match field(block, b":path") {
            Some(Text::Known(path)) => Some(std::str::from_utf8(path).map_err(|_| Anomaly::NotHttpRequest)?),
            None if method == "CONNECT" => Some(""),
            Some(Text::Unknown) | None if unresolved => {
                sink.anomalies.push(Anomaly::Http2PathUnknown);
                None
            }
            _ => return Err(Anomaly::NotHttpRequest),
        };
        let grpc = pseudo(block, b"content-type")
            .is_some_and(|ct| ct.starts_with("application/grpc"))
            .then_some(GrpcEnd::Missing);
        let tag = start(RequestHead { method, target, grpc: grpc.is_some() });
        self.streams.insert(id, Stream::new(tag, ts_ns, grpc));
        Ok(())
    }

    /// A server header block: the response's head (1xx ones included), or its trailers.
    fn response_headers(&mut self, head: BlockHead, block: &Block, ts_ns: u64, sink: &mut Sink<T>) {
        let BlockHead { stream: id, end_stream, len, .. } = head;
        let Some(stream) = self.streams.get_mut(&id) else {
            return; // a stream we never saw start (pushed, or refused)
        };
        stream.response_bytes += 9 + len as u64;
        stream.wrote(ts_ns, self.last_write_tcp);
        if stream.status.is_none()
            && let Some(status) = pseudo(block, b":status").and_then(|s| s.parse::<u16>().ok())
            && status >= 200
        {
            stream.status = Some(status);
        }
        if stream.grpc.is_some() {
            if let Some(code) = pseudo(block, b"grpc-status").and_then(|s| s.parse::<u8>().ok()) {
                stream.grpc = Some(GrpcEnd::Status(code));
            } else if pseudo(block, b"grpc-message").is_some() && stream.grpc == Some(GrpcEnd::Missing) {
                stream.grpc = Some(GrpcEnd::Unknown);
            }
        }
        if end_stream {
            self.end(id, ts_ns, sink);
        }
    }

    /// The server's END_STREAM: the exchange is complete if it had a final status.
    fn end(&mut self, id: u32, ts_ns: u64, sink: &mut Sink<T>) {
        if let Some(stream) = self.streams.remove(&id) {
            let status = stream.status;
            sink.finished.push(finish(stream, status, ts_ns, self.last_write_tcp));
        }
    }
}

fn finish<T>(stream: Stream<T>, status: Option<u16>, end_ns: u64, last: Option<TcpChrono>) -> Finished<T> {
    Finished {
        tcp: TcpSpan::of(stream.first_byte_tcp, last),
        tag: stream.tag,
        status,
        start_ns: stream.start_ns,
        first_byte_ns: stream.first_byte_ns,
        end_ns,
        response_bytes: stream.response_bytes,
        grpc: stream.grpc,
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE frame: its payload less padding,
/// priority fields and the promised stream id (§6.2, §6.6).
fn fragment(frame: &Frame) -> Option<&[u8]> {
    let mut payload = &frame.payload[..];
    let mut pad = 0;
    if frame.flags & flag::PADDED != 0 {
        let (&len, rest) = payload.split_first()?;
        (pad, payload) = (usize::from(len), rest);
    }
    let skip = match frame.kind {
        kind::HEADERS if frame.flags & flag::PRIORITY != 0 => 5,
        kind::PUSH_PROMISE => 4,
        _ => 0,
    };
    payload.get(skip..payload.len().checked_sub(pad)?)
}

/// The fields streams are followed by; the rest of a header block is only decoded as far as
/// the header table needs.
fn wanted(name: &[u8]) -> bool {
    matches!(name, b":method" | b":path" | b":status" | b"content-type" | b"grpc-status" | b"grpc-message")
}

/// A field's value, when its name and value are known and the value is UTF-8.
fn pseudo<'b>(block: &'b Block, name: &[u8]) -> Option<&'b str> {
    text(field(block, name)?)
}

/// The value of the first field named `name` (its value possibly unknown).
fn field<'b>(block: &'b Block, name: &[u8]) -> Option<&'b Text> {
    block.fields.iter().find(|f| f.name.as_bytes() == Some(name)).map(|f| &f.value)
}

fn text(value: &Text) -> Option<&str> {
    std::str::from_utf8(value.as_bytes()?).ok()
}
