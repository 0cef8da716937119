//! Exchanges, protocol-neutral: what HTTP/1 and HTTP/2 connections hand over once a request
//! is read (its head, to label it) and once it has left (its outcome and timings), and why
//! bytes could not be followed. Everything past this point (routes, metrics) is the same for
//! both protocols.

use observer_common::TcpChrono;

/// The parts of a request head that callers may label it by.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `None` when it cannot be known: an HTTP/2 `:path` held by a header table entry made
    /// before the observer joined the connection.
    pub target: Option<&'a str>,
    /// A gRPC call (HTTP/2, `content-type: application/grpc*`; never guessed).
    pub grpc: bool,
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
    /// gRPC (an HTTP/2 request with `content-type: application/grpc*`): how it ended.
    pub grpc: Option<GrpcEnd>,
    /// TCP's accounting at the writes of its first and last bytes, where the kernel reports it.
    pub tcp: Option<TcpSpan>,
}

/// TCP's accounting of a connection at a response's first and last writes: what TCP did while
/// the response was being written (`transfer` splits it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSpan {
    pub first: TcpChrono,
    pub last: TcpChrono,
}

impl TcpSpan {
    pub fn of(first: Option<TcpChrono>, last: Option<TcpChrono>) -> Option<TcpSpan> {
        Some(TcpSpan { first: first?, last: last? })
    }
}

/// What a finished gRPC call carries besides its HTTP outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcEnd {
    /// `grpc-status` from the trailers (or a Trailers-Only response).
    Status(u8),
    /// No `grpc-status`, but a `grpc-message`: the canonical mapping says Unknown.
    Unknown,
    /// Reset by either side: Canceled.
    Reset,
    /// None of these: the call ended without a gRPC outcome.
    Missing,
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
    /// HTTP/2 seen by hooks that cannot follow its frames (the syscall hooks): not followed.
    Http2,
    /// HTTP/2 frames that cannot be followed (records that do not add up, a header block
    /// interleaved with other frames, a frame the kernel could not walk).
    Http2Frames,
    /// An HTTP/2 header block that could not be decoded (HPACK errors, a block larger than
    /// the kernel copies): the connection's header table can no longer be trusted.
    Http2Hpack,
    /// HTTP/2 stream ids going backwards or even, or more open streams than followed.
    Http2Streams,
    /// An HTTP/2 request whose `:path` is held by a header table entry made before the
    /// observer joined the connection: counted under the endpoint `unknown`.
    Http2PathUnknown,
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
            Anomaly::Http2Frames => "http2_frames",
            Anomaly::Http2Hpack => "http2_hpack",
            Anomaly::Http2Streams => "http2_streams",
            Anomaly::Http2PathUnknown => "http2_path_unknown",
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
