//! HTTP/1.x framing of one connection: bytes the server read and wrote in, requests out.
//!
//! Pure and synchronous: no kernel, no clock. Each call carries what one syscall moved
//! ([`Moved`]): how many bytes, and the captured first and last of them. Lengths always come
//! from the byte count, so bodies larger than the capture are followed exactly; only heads and
//! chunk-size lines need to be seen, and those sit at the start or the end of a syscall.
//!
//! `head` parses heads (requests and responses alike), `body` decodes bodies (one decoder
//! for both directions), `bytes` is the cursor over one call's bytes; this module keeps the
//! queue of requests waiting for their responses, and the timings.

mod body;
mod bytes;
mod head;

use std::collections::VecDeque;

use observer_common::TcpChrono;

use crate::exchange::{Anomaly, Finished, RequestHead, Sink, TcpSpan};

use self::{
    body::{BodyError, BodyKind, Decoder, request_body, response_body},
    bytes::{Bytes, counted},
    head::{HeadLoss, Outcome, asks_h2c, head_bytes, header_room, looks_like_request},
};

/// What one read or write moved: `len` bytes, of which the first (`head`) and the last
/// (`tail`, after the head) were captured; and TCP's accounting after a write, if reported.
#[derive(Debug, Clone, Copy)]
pub struct Moved<'a> {
    pub head: &'a [u8],
    pub tail: &'a [u8],
    pub len: u64,
    pub tcp: Option<TcpChrono>,
}

/// Which side of the exchange bytes belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn not_http(self) -> Anomaly {
        match self {
            Side::Request => Anomaly::NotHttpRequest,
            Side::Response => Anomaly::NotHttpResponse,
        }
    }

    fn head_lost(self, loss: HeadLoss) -> Anomaly {
        match loss {
            HeadLoss::NotHttp => self.not_http(),
            HeadLoss::TooLarge => Anomaly::HeadTooLarge,
            HeadLoss::Truncated => Anomaly::TruncatedCapture,
        }
    }

    fn body_lost(self, error: BodyError) -> Anomaly {
        match error {
            BodyError::BadChunkSize => self.not_http(),
            BodyError::Truncated => Anomaly::TruncatedCapture,
            BodyError::LineTooLong => Anomaly::HeadTooLarge,
        }
    }
}

/// Where one direction of the connection is.
#[derive(Debug)]
enum Framing {
    /// At a message boundary or inside a head: buffered head bytes so far.
    Head(Vec<u8>),
    /// Inside a message's body.
    Body(Decoder),
    /// Lost track; waiting for something that starts a message.
    OutOfSync,
    /// Protocol switched (or never was HTTP/1.x): nothing more is followed.
    Upgraded,
}

impl Framing {
    /// What follows a head whose body is `kind`.
    fn after_head(kind: BodyKind) -> Framing {
        match kind {
            BodyKind::Length(0) => Framing::Head(Vec::new()),
            kind => Framing::Body(Decoder::new(kind)),
        }
    }

    fn is_close_delimited(&self) -> bool {
        matches!(self, Framing::Body(Decoder::Eof))
    }
}

/// A request waiting for (the rest of) its response.
#[derive(Debug)]
struct Outstanding<T> {
    tag: T,
    start_ns: u64,
    /// HEAD and CONNECT responses have no body whatever their headers say.
    no_body: bool,
    status: Option<u16>,
    /// It asked for `Upgrade: h2c`.
    h2c: bool,
}

/// A request that the server answered with `101` to `Upgrade: h2c`: it goes on as HTTP/2
/// stream 1 (RFC 7540 §3.2), whose response ends it.
#[derive(Debug, PartialEq)]
pub struct H2cUpgrade<T> {
    pub tag: T,
    pub start_ns: u64,
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
    /// The request switched to HTTP/2 by a `101`, until the HTTP/2 side takes it over.
    h2c: Option<Outstanding<T>>,
    last_write_ns: u64,
    last_write_tcp: Option<TcpChrono>,
    /// The response being written (to the front of `waiting`): when its first byte went out
    /// (and TCP's accounting then), and how many bytes so far.
    response_first_ns: Option<u64>,
    response_first_tcp: Option<TcpChrono>,
    response_bytes: u64,
}

impl<T> Default for HttpConn<T> {
    fn default() -> Self {
        Self::new()
    }
}

enum Step {
    Continue,
    Stop,
}

impl<T> HttpConn<T> {
    /// A connection seen from its start (accept): the first bytes read begin a request.
    pub fn new() -> Self {
        HttpConn {
            inbound: Framing::Head(Vec::new()),
            inbound_start_ns: 0,
            outbound: Framing::Head(Vec::new()),
            waiting: VecDeque::new(),
            h2c: None,
            last_write_ns: 0,
            last_write_tcp: None,
            response_first_ns: None,
            response_first_tcp: None,
            response_bytes: 0,
        }
    }

    /// A connection first seen mid-stream (opened before we attached, or after lost events):
    /// nothing is trusted until a read starts a request.
    pub fn mid_stream() -> Self {
        HttpConn { inbound: Framing::OutOfSync, outbound: Framing::OutOfSync, ..Self::new() }
    }

    /// The request that switched the connection to HTTP/2 (`Upgrade: h2c`, answered `101`):
    /// handed over to the HTTP/2 side, which sees its response on stream 1.
    pub fn take_h2c(&mut self) -> Option<H2cUpgrade<T>> {
        self.h2c.take().map(|w| H2cUpgrade { tag: w.tag, start_ns: w.start_ns })
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
                Framing::Body(decoder) => match decoder.decode(&mut rest) {
                    Ok(true) => self.inbound = Framing::Head(Vec::new()),
                    Ok(false) => {}
                    Err(error) => {
                        sink.anomalies.push(Side::Request.body_lost(error));
                        self.inbound = Framing::OutOfSync;
                        return;
                    }
                },
                Framing::OutOfSync | Framing::Upgraded => return,
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
        let first_line = req.method.is_some() && req.path.is_some();
        let (head_len, truncated) = match head::outcome(parsed, data.len(), rest.unseen, first_line) {
            Outcome::Complete(n) => (n, false),
            Outcome::Truncated => (data.len(), true),
            Outcome::Partial => {
                // Wait for more bytes: the captured tail, or the next read.
                if before == 0 {
                    buf.extend_from_slice(rest.seen);
                }
                rest.skip(rest.seen.len() as u64);
                return if rest.is_empty() { Step::Stop } else { Step::Continue };
            }
            Outcome::Lost(loss) => return self.lose(Side::Request, sink, Side::Request.head_lost(loss)),
        };
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return self.lose(Side::Request, sink, Anomaly::NotHttpRequest);
        };
        let body = if truncated {
            sink.anomalies.push(Anomaly::TruncatedCapture);
            BodyKind::Length(0)
        } else {
            match request_body(req.headers) {
                Some(body) => body,
                None => return self.lose(Side::Request, sink, Anomaly::NotHttpRequest),
            }
        };
        let no_body = method == "HEAD" || method == "CONNECT";
        let upgrade = method == "CONNECT";
        let h2c = asks_h2c(req.headers);
        let tag = start(RequestHead { method, target: Some(target), grpc: false });
        // A close-delimited response still being written ends where the next request begins.
        if self.outbound.is_close_delimited() {
            self.finish_front(self.last_write_ns, sink);
            self.outbound = Framing::Head(Vec::new());
        }
        self.waiting.push_back(Outstanding {
            tag,
            start_ns: self.inbound_start_ns,
            no_body,
            status: None,
            h2c,
        });
        rest.skip(if truncated { rest.len() } else { (head_len - before) as u64 });
        self.inbound = if upgrade { Framing::Upgraded } else { Framing::after_head(body) };
        Step::Continue
    }

    /// The server wrote bytes (write family or sendfile).
    pub fn on_write(&mut self, ts_ns: u64, moved: Moved<'_>, sink: &mut Sink<T>) {
        self.last_write_ns = ts_ns;
        self.last_write_tcp = moved.tcp;
        let mut rest = Bytes::new(moved);
        if matches!(self.outbound, Framing::OutOfSync)
            && !self.waiting.is_empty()
            && rest.seen.starts_with(b"HTTP/1.")
        {
            self.outbound = Framing::Head(Vec::new());
        }
        while !rest.is_empty() {
            match &mut self.outbound {
                Framing::Head(_) => match self.write_response_head(ts_ns, &mut rest, sink) {
                    Step::Continue => {}
                    Step::Stop => return,
                },
                Framing::Body(decoder) => {
                    match counted(&mut self.response_bytes, &mut rest, |r| decoder.decode(r)) {
                        Ok(true) => {
                            self.finish_front(ts_ns, sink);
                            self.outbound = Framing::Head(Vec::new());
                        }
                        Ok(false) => {}
                        Err(error) => {
                            sink.anomalies.push(Side::Response.body_lost(error));
                            // The response ends at close or at the next request, whichever first.
                            self.outbound = Framing::Body(Decoder::Eof);
                            return;
                        }
                    }
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
        let (head_len, truncated) = match head::outcome(parsed, data.len(), rest.unseen, resp.code.is_some())
        {
            Outcome::Complete(n) => (n, false),
            Outcome::Truncated => (data.len(), true),
            Outcome::Partial => {
                if before == 0 {
                    buf.extend_from_slice(rest.seen);
                }
                self.response_started(ts_ns);
                self.response_bytes += rest.skip(rest.seen.len() as u64);
                return if rest.is_empty() { Step::Stop } else { Step::Continue };
            }
            Outcome::Lost(loss) => return self.lose(Side::Response, sink, Side::Response.head_lost(loss)),
        };
        let Some(code) = resp.code else {
            return self.lose(Side::Response, sink, Anomaly::NotHttpResponse);
        };
        let framing = if truncated { Some(BodyKind::Eof) } else { response_body(resp.headers) };
        self.response_started(ts_ns);
        self.response_bytes += rest.skip(if truncated { rest.len() } else { (head_len - before) as u64 });
        if truncated {
            sink.anomalies.push(Anomaly::TruncatedCapture);
        }
        if code == 101 && self.waiting.front().is_some_and(|w| w.h2c) {
            self.h2c = self.waiting.pop_front();
            self.response_first_ns = None;
            self.response_bytes = 0;
            self.upgraded();
            return Step::Stop;
        }
        if code == 101 {
            self.set_front_status(code);
            self.finish_front(ts_ns, sink);
            sink.anomalies.push(Anomaly::Upgraded);
            self.upgraded();
            return Step::Stop;
        }
        if (100..200).contains(&code) {
            // Interim response: the final one follows.
            self.outbound = Framing::Head(Vec::new());
            return Step::Continue;
        }
        self.set_front_status(code);
        let no_body = self.waiting.front().is_some_and(|w| w.no_body) || code == 204 || code == 304;
        let body = match (no_body, framing) {
            (true, _) => BodyKind::Length(0),
            (false, Some(body)) => body,
            (false, None) => return self.lose(Side::Response, sink, Anomaly::NotHttpResponse),
        };
        if body == BodyKind::Length(0) {
            self.finish_front(ts_ns, sink);
        }
        self.outbound = Framing::after_head(body);
        Step::Continue
    }

    /// `side` lost track (counted as `anomaly`) until something starts a message again.
    fn lose(&mut self, side: Side, sink: &mut Sink<T>, anomaly: Anomaly) -> Step {
        sink.anomalies.push(anomaly);
        match side {
            Side::Request => self.inbound = Framing::OutOfSync,
            Side::Response => self.outbound = Framing::OutOfSync,
        }
        Step::Stop
    }

    /// Nothing more on this connection is HTTP/1.x.
    fn upgraded(&mut self) {
        self.inbound = Framing::Upgraded;
        self.outbound = Framing::Upgraded;
    }

    fn set_front_status(&mut self, code: u16) {
        if let Some(front) = self.waiting.front_mut() {
            front.status = Some(code);
        }
    }

    /// This write carries response bytes: the first, unless some were written before.
    fn response_started(&mut self, ts_ns: u64) {
        if self.response_first_ns.is_none() {
            self.response_first_ns = Some(ts_ns);
            self.response_first_tcp = self.last_write_tcp;
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
                grpc: None,
                tcp: TcpSpan::of(self.response_first_tcp.take(), self.last_write_tcp),
            });
        }
    }

    /// The connection is gone (closed, fd reused, or dropped from the table): a close-delimited
    /// response ends with its last write; every other waiting request is abandoned.
    pub fn on_close(mut self, sink: &mut Sink<T>) {
        if self.outbound.is_close_delimited() {
            self.finish_front(self.last_write_ns, sink);
        }
        self.abandon_all(sink);
        if let Some(upgraded) = self.h2c.take() {
            // Switched to HTTP/2 whose frames were never followed (hooks that cannot walk
            // them): answered 101, as any other upgrade.
            sink.anomalies.push(Anomaly::Upgraded);
            self.waiting.push_back(Outstanding { status: Some(101), ..upgraded });
            self.finish_front(self.last_write_ns, sink);
        }
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
            grpc: None,
            tcp: None,
        }));
        self.response_first_tcp = None;
    }

    /// The connection has been quiet for the idle timeout: a response whose end could not be
    /// seen (close-delimited, or framing lost) is taken to have ended with its last write.
    pub fn on_idle(&mut self, sink: &mut Sink<T>) {
        if self.outbound.is_close_delimited() {
            self.finish_front(self.last_write_ns, sink);
            self.outbound = Framing::Head(Vec::new());
        }
    }
}

#[cfg(test)]
mod tests;
