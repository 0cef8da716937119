//! HTTP/1.x framing of one connection: bytes the server read and wrote in, requests out.
//!
//! Pure and synchronous: no kernel, no clock. Each call carries what one syscall moved
//! ([`Moved`]): how many bytes, and the captured first and last of them. Lengths always come
//! from the byte count, so bodies larger than the capture are followed exactly; only heads and
//! chunk-size lines need to be seen, and those sit at the start or the end of a syscall.

use std::{collections::VecDeque, mem::MaybeUninit};

/// Largest request or response head we buffer before declaring the connection out of sync.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// Room for a head's headers. Left uninitialised: filling 64 empty headers (2 KiB) before
/// every parse was most of the parse's cost; httparse writes those it returns.
fn header_room<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// The head bytes to parse: those already buffered plus the new ones, or, when nothing is
/// buffered (a head that arrives in one syscall, the usual case), the new ones where they
/// lie, without a copy.
fn head_bytes<'d>(buf: &'d mut Vec<u8>, seen: &'d [u8]) -> &'d [u8] {
    if buf.is_empty() {
        return seen;
    }
    buf.extend_from_slice(seen);
    buf
}

/// The parts of a request head that callers may label it by.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub target: &'a str,
}

/// What one read or write moved: `len` bytes, of which the first (`head`) and the last
/// (`tail`, after the head) were captured.
#[derive(Debug, Clone, Copy)]
pub struct Moved<'a> {
    pub head: &'a [u8],
    pub tail: &'a [u8],
    pub len: u64,
}

/// A request that left the connection: answered, or abandoned.
#[derive(Debug, PartialEq)]
pub struct Finished<T> {
    pub tag: T,
    /// Final status code; `None` when the request was abandoned without a complete response.
    pub status: Option<u16>,
    /// Timestamp of the read that delivered the request's first byte.
    pub start_ns: u64,
    /// Timestamp of the write that carried the response's first byte, if any was written.
    pub first_byte_ns: Option<u64>,
    /// Timestamp of the write that carried the response's last byte (or the last one seen).
    pub end_ns: u64,
    /// Response bytes written, head and body.
    pub response_bytes: u64,
}

/// Why bytes could not be followed; the `reason` label of `observer_parse_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// Bytes that are not an HTTP/1.x request where one must start.
    NotHttpRequest,
    /// Bytes that are not an HTTP/1.x response where one must start.
    NotHttpResponse,
    /// A head larger than `MAX_HEAD`.
    HeadTooLarge,
    /// A head or chunk-size line went past the captured bytes; framing was guessed.
    TruncatedCapture,
    /// The server wrote a response with no request waiting for it.
    UnexpectedResponse,
    /// Events of this connection were lost in the kernel (ring buffer full).
    LostEvents,
    /// The connection switched protocols (101, CONNECT); it is no longer followed.
    Upgraded,
    /// HTTP/2 (the client preface, after ALPN `h2` or with prior knowledge): not followed.
    Http2,
}

impl Anomaly {
    pub const fn reason(self) -> &'static str {
        match self {
            Anomaly::NotHttpRequest => "not_http_request",
            Anomaly::NotHttpResponse => "not_http_response",
            Anomaly::HeadTooLarge => "head_too_large",
            Anomaly::TruncatedCapture => "truncated_capture",
            Anomaly::UnexpectedResponse => "unexpected_response",
            Anomaly::LostEvents => "lost_events",
            Anomaly::Upgraded => "upgraded",
            Anomaly::Http2 => "http2",
        }
    }
}

/// Where a call's results go; reused across calls so the hot path does not allocate.
#[derive(Debug)]
pub struct Sink<T> {
    pub finished: Vec<Finished<T>>,
    pub anomalies: Vec<Anomaly>,
    /// Connections found to carry TLS records (ciphertext, not an error: the plaintext is
    /// followed where the server's TLS library is hooked).
    pub encrypted: u64,
}

impl<T> Default for Sink<T> {
    fn default() -> Self {
        Sink { finished: Vec::new(), anomalies: Vec::new(), encrypted: 0 }
    }
}

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Eof,
}

/// Bytes of a message the connection is in the middle of.
#[derive(Debug)]
enum Framing {
    /// At a message boundary or inside a head: buffered head bytes so far.
    Head(Vec<u8>),
    Length(u64),
    Chunked(Chunked),
    Eof,
    /// Lost track; waiting for something that starts a message.
    OutOfSync,
    /// Protocol switched: nothing more is HTTP.
    Upgraded,
}

/// A request waiting for (the rest of) its response.
#[derive(Debug)]
struct Outstanding<T> {
    tag: T,
    start_ns: u64,
    /// HEAD and CONNECT responses have no body whatever their headers say.
    no_body: bool,
    status: Option<u16>,
}

/// One connection's request/response state.
#[derive(Debug)]
pub struct HttpConn<T> {
    inbound: Framing,
    /// Timestamp of the first byte of the request head being buffered.
    inbound_start_ns: u64,
    outbound: Framing,
    /// Requests in arrival order; responses answer them in the same order (RFC 9112 §9.3.2).
    waiting: VecDeque<Outstanding<T>>,
    last_write_ns: u64,
    /// The response being written (to the front of `waiting`): when its first byte went out,
    /// and how many bytes so far.
    response_first_ns: Option<u64>,
    response_bytes: u64,
}

impl<T> Default for HttpConn<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> HttpConn<T> {
    /// A connection seen from its start (accept): the first bytes read begin a request.
    pub fn new() -> Self {
        HttpConn {
            inbound: Framing::Head(Vec::new()),
            inbound_start_ns: 0,
            outbound: Framing::Head(Vec::new()),
            waiting: VecDeque::new(),
            last_write_ns: 0,
            response_first_ns: None,
            response_bytes: 0,
        }
    }

    /// A connection first seen mid-stream (opened before we attached, or after lost events):
    /// nothing is trusted until a read starts a request.
    pub fn mid_stream() -> Self {
        HttpConn { inbound: Framing::OutOfSync, outbound: Framing::OutOfSync, ..Self::new() }
    }

    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// The server read bytes.
    pub fn on_read<F>(&mut self, ts_ns: u64, moved: Moved<'_>, sink: &mut Sink<T>, start: &mut F)
    where
        F: FnMut(RequestHead<'_>) -> T,
    {
        let mut rest = Bytes::new(moved);
        if matches!(self.inbound, Framing::OutOfSync) && looks_like_request(rest.seen) {
            self.inbound = Framing::Head(Vec::new());
        }
        if self.waiting.is_empty()
            && matches!(&self.inbound, Framing::Head(buf) if buf.is_empty())
            && let Some(other) = Other::starting(rest.seen)
        {
            match other {
                Other::Tls => sink.encrypted += 1,
                Other::Http2 => sink.anomalies.push(Anomaly::Http2),
            }
            self.inbound = Framing::Upgraded;
            self.outbound = Framing::Upgraded;
            return;
        }
        while !rest.is_empty() {
            match &mut self.inbound {
                Framing::Head(buf) => {
                    if buf.is_empty() {
                        self.inbound_start_ns = ts_ns;
                    }
                    match self.read_request_head(&mut rest, sink, start) {
                        Step::Continue => {}
                        Step::Stop => return,
                    }
                }
                Framing::Length(remaining) => {
                    *remaining -= rest.skip(*remaining);
                    if *remaining == 0 {
                        self.inbound = Framing::Head(Vec::new());
                    }
                }
                Framing::Chunked(chunked) => match chunked.advance(&mut rest) {
                    Ok(true) => self.inbound = Framing::Head(Vec::new()),
                    Ok(false) => {}
                    Err(anomaly) => {
                        sink.anomalies.push(anomaly);
                        self.inbound = Framing::OutOfSync;
                        return;
                    }
                },
                Framing::Eof | Framing::OutOfSync | Framing::Upgraded => return,
            }
        }
    }

    fn read_request_head<F>(&mut self, rest: &mut Bytes<'_>, sink: &mut Sink<T>, start: &mut F) -> Step
    where
        F: FnMut(RequestHead<'_>) -> T,
    {
        let Framing::Head(buf) = &mut self.inbound else {
            return Step::Stop;
        };
        let before = buf.len();
        let data = head_bytes(buf, rest.seen);
        let mut headers = header_room();
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(data, &mut headers);
        let (head_len, truncated) = match parsed {
            Ok(httparse::Status::Complete(n)) => (n, false),
            Ok(httparse::Status::Partial)
                if rest.unseen > 0 && req.method.is_some() && req.path.is_some() =>
            {
                // The head goes on past the capture: the uncaptured bytes are taken as the
                // rest of this head, with no body.
                (data.len(), true)
            }
            // The head goes on into bytes we cannot see, and not even its request line is
            // known: nothing to count; resync at the next request.
            Ok(httparse::Status::Partial) if rest.unseen > 0 => {
                return self.inbound_lost(sink, Anomaly::TruncatedCapture);
            }
            Ok(httparse::Status::Partial) if data.len() <= MAX_HEAD => {
                // Wait for more bytes: the captured tail, or the next read.
                if before == 0 {
                    buf.extend_from_slice(rest.seen);
                }
                rest.skip(rest.seen.len() as u64);
                return if rest.is_empty() { Step::Stop } else { Step::Continue };
            }
            Ok(httparse::Status::Partial) => return self.inbound_lost(sink, Anomaly::HeadTooLarge),
            Err(_) => return self.inbound_lost(sink, Anomaly::NotHttpRequest),
        };
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return self.inbound_lost(sink, Anomaly::NotHttpRequest);
        };
        let body = if truncated {
            sink.anomalies.push(Anomaly::TruncatedCapture);
            BodyKind::Length(0)
        } else {
            match request_body(req.headers) {
                Some(body) => body,
                None => return self.inbound_lost(sink, Anomaly::NotHttpRequest),
            }
        };
        let no_body = method == "HEAD" || method == "CONNECT";
        let upgrade = method == "CONNECT";
        let tag = start(RequestHead { method, target });
        // A close-delimited response still being written ends where the next request begins.
        if matches!(self.outbound, Framing::Eof) {
            self.finish_front(self.last_write_ns, sink);
            self.outbound = Framing::Head(Vec::new());
        }
        self.waiting.push_back(Outstanding { tag, start_ns: self.inbound_start_ns, no_body, status: None });
        rest.skip(if truncated { rest.len() } else { (head_len - before) as u64 });
        self.inbound = if upgrade {
            Framing::Upgraded
        } else {
            match body {
                BodyKind::Length(0) => Framing::Head(Vec::new()),
                BodyKind::Length(n) => Framing::Length(n),
                BodyKind::Chunked => Framing::Chunked(Chunked::default()),
                BodyKind::Eof => Framing::Head(Vec::new()),
            }
        };
        Step::Continue
    }

    fn inbound_lost(&mut self, sink: &mut Sink<T>, anomaly: Anomaly) -> Step {
        sink.anomalies.push(anomaly);
        self.inbound = Framing::OutOfSync;
        Step::Stop
    }

    /// The server wrote bytes (write family or sendfile).
    pub fn on_write(&mut self, ts_ns: u64, moved: Moved<'_>, sink: &mut Sink<T>) {
        self.last_write_ns = ts_ns;
        let mut rest = Bytes::new(moved);
        if matches!(self.outbound, Framing::OutOfSync)
            && !self.waiting.is_empty()
            && rest.seen.starts_with(b"HTTP/1.")
        {
            self.outbound = Framing::Head(Vec::new());
        }
        // An HTTP/2 server speaks first: its SETTINGS frame, before the client's preface.
        if self.waiting.is_empty()
            && matches!(&self.outbound, Framing::Head(buf) if buf.is_empty())
            && is_http2_settings(rest.seen)
        {
            sink.anomalies.push(Anomaly::Http2);
            self.inbound = Framing::Upgraded;
            self.outbound = Framing::Upgraded;
            return;
        }
        while !rest.is_empty() {
            match &mut self.outbound {
                Framing::Head(_) => match self.write_response_head(ts_ns, &mut rest, sink) {
                    Step::Continue => {}
                    Step::Stop => return,
                },
                Framing::Length(remaining) => {
                    let n = rest.skip(*remaining);
                    *remaining -= n;
                    self.response_bytes += n;
                    if *remaining == 0 {
                        self.finish_front(ts_ns, sink);
                        self.outbound = Framing::Head(Vec::new());
                    }
                }
                Framing::Chunked(chunked) => {
                    match counted(&mut self.response_bytes, &mut rest, |r| chunked.advance(r)) {
                        Ok(true) => {
                            self.finish_front(ts_ns, sink);
                            self.outbound = Framing::Head(Vec::new());
                        }
                        Ok(false) => {}
                        Err(anomaly) => {
                            sink.anomalies.push(anomaly);
                            // The response ends at close or at the next request, whichever first.
                            self.outbound = Framing::Eof;
                            return;
                        }
                    }
                }
                Framing::Eof => {
                    self.response_bytes += rest.len();
                    return;
                }
                Framing::OutOfSync | Framing::Upgraded => return,
            }
        }
    }

    fn write_response_head(&mut self, ts_ns: u64, rest: &mut Bytes<'_>, sink: &mut Sink<T>) -> Step {
        let Framing::Head(buf) = &mut self.outbound else {
            return Step::Stop;
        };
        if self.waiting.is_empty() {
            sink.anomalies.push(Anomaly::UnexpectedResponse);
            self.outbound = Framing::OutOfSync;
            return Step::Stop;
        }
        let before = buf.len();
        let data = head_bytes(buf, rest.seen);
        let mut headers = header_room();
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            data,
            &mut headers,
        );
        let (head_len, truncated) = match parsed {
            Ok(httparse::Status::Complete(n)) => (n, false),
            Ok(httparse::Status::Partial) if rest.unseen > 0 && resp.code.is_some() => (data.len(), true),
            Ok(httparse::Status::Partial) if rest.unseen > 0 => {
                return self.outbound_lost(sink, Anomaly::TruncatedCapture);
            }
            Ok(httparse::Status::Partial) if data.len() <= MAX_HEAD => {
                if before == 0 {
                    buf.extend_from_slice(rest.seen);
                }
                self.response_first_ns.get_or_insert(ts_ns);
                self.response_bytes += rest.skip(rest.seen.len() as u64);
                return if rest.is_empty() { Step::Stop } else { Step::Continue };
            }
            Ok(httparse::Status::Partial) => {
                return self.outbound_lost(sink, Anomaly::HeadTooLarge);
            }
            Err(_) => return self.outbound_lost(sink, Anomaly::NotHttpResponse),
        };
        let Some(code) = resp.code else {
            return self.outbound_lost(sink, Anomaly::NotHttpResponse);
        };
        let framing = if truncated { Some(BodyKind::Eof) } else { response_body(resp.headers) };
        self.response_first_ns.get_or_insert(ts_ns);
        self.response_bytes += rest.skip(if truncated { rest.len() } else { (head_len - before) as u64 });
        if truncated {
            sink.anomalies.push(Anomaly::TruncatedCapture);
        }
        if code == 101 {
            self.set_front_status(code);
            self.finish_front(ts_ns, sink);
            sink.anomalies.push(Anomaly::Upgraded);
            self.inbound = Framing::Upgraded;
            self.outbound = Framing::Upgraded;
            return Step::Stop;
        }
        if (100..200).contains(&code) {
            // Interim response: the final one follows.
            self.outbound = Framing::Head(Vec::new());
            return Step::Continue;
        }
        self.set_front_status(code);
        let no_body = self.waiting.front().is_some_and(|w| w.no_body) || code == 204 || code == 304;
        let body = if no_body {
            BodyKind::Length(0)
        } else {
            match framing {
                Some(body) => body,
                None => return self.outbound_lost(sink, Anomaly::NotHttpResponse),
            }
        };
        self.outbound = match body {
            BodyKind::Length(0) => {
                self.finish_front(ts_ns, sink);
                Framing::Head(Vec::new())
            }
            BodyKind::Length(n) => Framing::Length(n),
            BodyKind::Chunked => Framing::Chunked(Chunked::default()),
            BodyKind::Eof => Framing::Eof,
        };
        Step::Continue
    }

    fn outbound_lost(&mut self, sink: &mut Sink<T>, anomaly: Anomaly) -> Step {
        sink.anomalies.push(anomaly);
        self.outbound = Framing::OutOfSync;
        Step::Stop
    }

    fn set_front_status(&mut self, code: u16) {
        if let Some(front) = self.waiting.front_mut() {
            front.status = Some(code);
        }
    }

    fn finish_front(&mut self, end_ns: u64, sink: &mut Sink<T>) {
        if let Some(w) = self.waiting.pop_front() {
            sink.finished.push(Finished {
                tag: w.tag,
                status: w.status,
                start_ns: w.start_ns,
                first_byte_ns: self.response_first_ns.take(),
                end_ns,
                response_bytes: std::mem::take(&mut self.response_bytes),
            });
        }
    }

    /// The connection is gone (closed, fd reused, or dropped from the table): a close-delimited
    /// response ends with its last write; every other waiting request is abandoned.
    pub fn on_close(mut self, sink: &mut Sink<T>) {
        if matches!(self.outbound, Framing::Eof) {
            self.finish_front(self.last_write_ns, sink);
        }
        self.abandon_all(sink);
    }

    /// Events of this connection were lost: abandon what is waiting and resync at the next
    /// request.
    pub fn on_lost_events(&mut self, sink: &mut Sink<T>) {
        sink.anomalies.push(Anomaly::LostEvents);
        self.abandon_all(sink);
        self.inbound = Framing::OutOfSync;
        self.outbound = Framing::OutOfSync;
    }

    fn abandon_all(&mut self, sink: &mut Sink<T>) {
        let end_ns = self.last_write_ns;
        // Only the front request can have had response bytes written.
        let mut first_ns = self.response_first_ns.take();
        let mut bytes = std::mem::take(&mut self.response_bytes);
        sink.finished.extend(self.waiting.drain(..).map(|w| Finished {
            tag: w.tag,
            status: None,
            start_ns: w.start_ns,
            first_byte_ns: first_ns.take(),
            end_ns: end_ns.max(w.start_ns),
            response_bytes: std::mem::take(&mut bytes),
        }));
    }

    /// The connection has been quiet for the idle timeout: a response whose end could not be
    /// seen (close-delimited, or framing lost) is taken to have ended with its last write.
    pub fn on_idle(&mut self, sink: &mut Sink<T>) {
        if matches!(self.outbound, Framing::Eof) {
            self.finish_front(self.last_write_ns, sink);
            self.outbound = Framing::Head(Vec::new());
        }
    }
}

enum Step {
    Continue,
    Stop,
}

/// Runs `step` and adds the bytes it consumed from `rest` to `counter`.
fn counted<R>(counter: &mut u64, rest: &mut Bytes<'_>, step: impl FnOnce(&mut Bytes<'_>) -> R) -> R {
    let before = rest.len();
    let result = step(rest);
    *counter += before - rest.len();
    result
}

/// The rest of one syscall's bytes: a captured prefix (`seen`), bytes known only by count
/// (`unseen`), then the captured tail. Once the prefix and the gap are consumed, the tail
/// becomes `seen`.
struct Bytes<'a> {
    seen: &'a [u8],
    unseen: u64,
    tail: &'a [u8],
}

impl<'a> Bytes<'a> {
    fn new(moved: Moved<'a>) -> Self {
        let limit =
            |data: &'a [u8], max: u64| &data[..data.len().min(usize::try_from(max).unwrap_or(usize::MAX))];
        let seen = limit(moved.head, moved.len);
        let tail = limit(moved.tail, moved.len - seen.len() as u64);
        let unseen = moved.len - seen.len() as u64 - tail.len() as u64;
        let mut bytes = Bytes { seen, unseen, tail };
        bytes.promote_tail();
        bytes
    }

    fn len(&self) -> u64 {
        (self.seen.len() + self.tail.len()) as u64 + self.unseen
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn promote_tail(&mut self) {
        if self.seen.is_empty() && self.unseen == 0 {
            self.seen = std::mem::take(&mut self.tail);
        }
    }

    /// Drops up to `n` bytes from the front; returns how many were dropped.
    fn skip(&mut self, n: u64) -> u64 {
        let mut dropped = 0;
        while dropped < n && !self.is_empty() {
            let want = n - dropped;
            let from_seen = want.min(self.seen.len() as u64);
            self.seen = &self.seen[from_seen as usize..];
            let from_unseen = if self.seen.is_empty() { (want - from_seen).min(self.unseen) } else { 0 };
            self.unseen -= from_unseen;
            dropped += from_seen + from_unseen;
            self.promote_tail();
        }
        dropped
    }
}

/// Protocols a connection may speak instead of HTTP/1.x, told by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Other {
    /// A TLS record: handshake (22), version 3.x (SSL 3.0 to TLS 1.3 all say 3.0–3.4).
    Tls,
    /// The HTTP/2 client connection preface (RFC 9113 §3.4).
    Http2,
}

impl Other {
    fn starting(data: &[u8]) -> Option<Other> {
        match data {
            [0x16, 0x03, minor, ..] if *minor <= 0x04 => Some(Other::Tls),
            _ if data.starts_with(b"PRI * HTTP/2.0") => Some(Other::Http2),
            _ => None,
        }
    }
}

/// Whether `data` begins with an HTTP/2 SETTINGS frame on stream 0 (RFC 9113 §6.5): a
/// 24-bit length that is a multiple of 6, type 4, flags 0, stream id 0. A response head
/// starts with `HTTP/`, so the two are never confused.
fn is_http2_settings(data: &[u8]) -> bool {
    match data {
        [l0, l1, l2, 0x04, 0x00, 0, 0, 0, 0, ..] => {
            (u32::from_be_bytes([0, *l0, *l1, *l2])).is_multiple_of(6)
        }
        _ => false,
    }
}

/// Whether `data` begins like a request line (at least `TOKEN SP`, with nothing invalid
/// after it), to resync a connection we lost track of. Clients may send the method alone
/// in a first segment, so the whole request line is not required.
fn looks_like_request(data: &[u8]) -> bool {
    let mut headers = header_room();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(data, &mut headers) {
        Ok(httparse::Status::Complete(_)) => true,
        Ok(httparse::Status::Partial) => req.method.is_some(),
        Err(_) => false,
    }
}

/// RFC 9112 §6.3 for requests: chunked if it is the final coding, else Content-Length, else
/// no body. `None` for a malformed or conflicting framing.
fn request_body(headers: &[httparse::Header<'_>]) -> Option<BodyKind> {
    match message_body(headers)? {
        BodyKind::Eof => Some(BodyKind::Length(0)),
        body => Some(body),
    }
}

/// RFC 9112 §6.3 for responses: as for requests, but with neither header the body runs to
/// the connection's close.
fn response_body(headers: &[httparse::Header<'_>]) -> Option<BodyKind> {
    message_body(headers)
}

fn message_body(headers: &[httparse::Header<'_>]) -> Option<BodyKind> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value).ok()?;
            chunked = value.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value).ok()?.trim().parse::<u64>().ok()?;
            if length.is_some_and(|old| old != n) {
                return None;
            }
            length = Some(n);
        }
    }
    Some(match (chunked, length) {
        (true, _) => BodyKind::Chunked,
        (false, Some(n)) => BodyKind::Length(n),
        (false, None) => BodyKind::Eof,
    })
}

/// Chunked transfer coding (RFC 9112 §7.1), followed by count where bytes were not captured.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    /// Partial size or trailer line carried over from the previous syscall.
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk data still to come, then its CRLF.
    Data(u64),
    /// Trailer section after the last chunk, line by line; ends at an empty line.
    Trailer,
}

impl Chunked {
    /// Consumes bytes; `Ok(true)` once the message's last byte was consumed.
    fn advance(&mut self, rest: &mut Bytes<'_>) -> Result<bool, Anomaly> {
        while !rest.is_empty() {
            match self.state {
                ChunkState::Data(remaining) => {
                    let left = remaining - rest.skip(remaining);
                    self.state = if left == 0 { ChunkState::Size } else { ChunkState::Data(left) };
                }
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(line) = self.take_line(rest)? else {
                        return Ok(false);
                    };
                    match self.state {
                        ChunkState::Size => {
                            let size = parse_chunk_size(&line).ok_or(Anomaly::NotHttpResponse)?;
                            // The data's CRLF is skipped by count, like the data.
                            self.state =
                                if size == 0 { ChunkState::Trailer } else { ChunkState::Data(size + 2) };
                        }
                        _ if line.is_empty() => return Ok(true),
                        _ => {} // a trailer field
                    }
                }
            }
        }
        Ok(false)
    }

    /// The next CRLF-terminated line without its CRLF, or `None` if it is not complete yet.
    fn take_line(&mut self, rest: &mut Bytes<'_>) -> Result<Option<Vec<u8>>, Anomaly> {
        match rest.seen.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.line.extend_from_slice(&rest.seen[..i]);
                rest.skip(i as u64 + 1);
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            None if rest.unseen > 0 => Err(Anomaly::TruncatedCapture),
            None if self.line.len() + rest.seen.len() > 4096 => Err(Anomaly::HeadTooLarge),
            None => {
                self.line.extend_from_slice(rest.seen);
                rest.skip(rest.seen.len() as u64);
                Ok(None)
            }
        }
    }
}

/// `1*HEXDIG [ chunk-ext ]`.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|&b| b == b';').next()?;
    let hex = std::str::from_utf8(hex).ok()?.trim();
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests;
