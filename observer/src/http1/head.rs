//! Message heads, requests and responses alike: parsed with httparse where they lie.

use std::mem::MaybeUninit;

/// Largest request or response head we buffer before declaring the connection out of sync.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// Room for a head's headers. Left uninitialised: filling 64 empty headers (2 KiB) before
/// every parse was most of the parse's cost; httparse writes those it returns.
pub fn header_room<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// The head bytes to parse: those already buffered plus the new ones, or, when nothing is
/// buffered (a head that arrives in one call, the usual case), the new ones where they lie,
/// without a copy.
pub fn head_bytes<'d>(buf: &'d mut Vec<u8>, seen: &'d [u8]) -> &'d [u8] {
    if buf.is_empty() {
        return seen;
    }
    buf.extend_from_slice(seen);
    buf
}

/// What a head parse says, the same in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A complete head of this many bytes.
    Complete(usize),
    /// The head goes on past the captured bytes, and its first line is known: the uncaptured
    /// bytes are taken as the rest of it, with no body.
    Truncated,
    /// The head goes on in the captured tail or the next call.
    Partial,
    /// The head cannot be followed.
    Lost(HeadLoss),
}

/// Why a head cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLoss {
    /// Not an HTTP/1.x head.
    NotHttp,
    /// Longer than `MAX_HEAD`.
    TooLarge,
    /// It goes on into uncaptured bytes and not even its first line is known.
    Truncated,
}

/// Classifies httparse's answer on `data` (`unseen` bytes follow it uncaptured);
/// `first_line` says whether the request or status line was parsed.
pub fn outcome(parsed: httparse::Result<usize>, data: usize, unseen: u64, first_line: bool) -> Outcome {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Outcome::Complete(n),
        Ok(httparse::Status::Partial) if unseen > 0 && first_line => Outcome::Truncated,
        Ok(httparse::Status::Partial) if unseen > 0 => Outcome::Lost(HeadLoss::Truncated),
        Ok(httparse::Status::Partial) if data <= MAX_HEAD => Outcome::Partial,
        Ok(httparse::Status::Partial) => Outcome::Lost(HeadLoss::TooLarge),
        Err(_) => Outcome::Lost(HeadLoss::NotHttp),
    }
}

/// Whether `data` begins like a request line (at least `TOKEN SP`, with nothing invalid
/// after it), to resync a connection we lost track of. Clients may send the method alone
/// in a first segment, so the whole request line is not required.
pub fn looks_like_request(data: &[u8]) -> bool {
    let mut headers = header_room();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(data, &mut headers) {
        Ok(httparse::Status::Complete(_)) => true,
        Ok(httparse::Status::Partial) => req.method.is_some(),
        Err(_) => false,
    }
}

/// Whether a request asks to switch to HTTP/2 in clear text (`Upgrade: h2c`, RFC 7540 §3.2):
/// if the server answers `101`, the request goes on as HTTP/2 stream 1.
pub fn asks_h2c(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("upgrade")
            && h.value.split(|&b| b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    })
}
