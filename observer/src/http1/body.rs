//! Message bodies, one decoder for requests and responses (RFC 9112 §6–7): by length,
//! chunked, or until the connection closes; followed by count where bytes were not captured.
//! Its errors say what went wrong, not in which direction: the connection knows that.

use super::bytes::Bytes;

/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Eof,
}

/// Why a body could not be followed to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// A chunk-size line that is not one.
    BadChunkSize,
    /// A chunk-size or trailer line went on into bytes that were not captured.
    Truncated,
    /// A chunk-size or trailer line longer than `MAX_LINE`.
    LineTooLong,
}

/// A body being consumed.
#[derive(Debug)]
pub enum Decoder {
    Length(u64),
    Chunked(Chunked),
    Eof,
}

impl Decoder {
    pub fn new(kind: BodyKind) -> Self {
        match kind {
            BodyKind::Length(n) => Decoder::Length(n),
            BodyKind::Chunked => Decoder::Chunked(Chunked::default()),
            BodyKind::Eof => Decoder::Eof,
        }
    }

    /// Consumes body bytes from `rest`; `Ok(true)` once the body's last byte was consumed
    /// (never for `Eof`, which ends at the close).
    pub fn decode(&mut self, rest: &mut Bytes<'_>) -> Result<bool, BodyError> {
        match self {
            Decoder::Length(remaining) => {
                *remaining -= rest.skip(*remaining);
                Ok(*remaining == 0)
            }
            Decoder::Chunked(chunked) => chunked.advance(rest),
            Decoder::Eof => {
                rest.skip(rest.len());
                Ok(false)
            }
        }
    }
}

/// RFC 9112 §6.3 for requests: chunked if it is the final coding, else Content-Length, else
/// no body. `None` for a malformed or conflicting framing.
pub fn request_body(headers: &[httparse::Header<'_>]) -> Option<BodyKind> {
    match message_body(headers)? {
        BodyKind::Eof => Some(BodyKind::Length(0)),
        body => Some(body),
    }
}

/// RFC 9112 §6.3 for responses: as for requests, but with neither header the body runs to
/// the connection's close.
pub fn response_body(headers: &[httparse::Header<'_>]) -> Option<BodyKind> {
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

/// Chunked transfer coding (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Partial size or trailer line carried over from the previous call.
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
    fn advance(&mut self, rest: &mut Bytes<'_>) -> Result<bool, BodyError> {
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
                            let size = parse_chunk_size(&line).ok_or(BodyError::BadChunkSize)?;
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
    fn take_line(&mut self, rest: &mut Bytes<'_>) -> Result<Option<Vec<u8>>, BodyError> {
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
            None if rest.unseen > 0 => Err(BodyError::Truncated),
            None if self.line.len() + rest.seen.len() > MAX_LINE => Err(BodyError::LineTooLong),
            None => {
                self.line.extend_from_slice(rest.seen);
                rest.skip(rest.seen.len() as u64);
                Ok(None)
            }
        }
    }
}

/// Hex digits of a chunk size at most: 15 fit a u64 with room to add the bytes already seen
/// (2^60 bytes, far beyond any body), and a longer run is garbage, not a size.
const MAX_CHUNK_SIZE_DIGITS: usize = 15;

/// `1*HEXDIG [ chunk-ext ]`.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|&b| b == b';').next()?;
    let hex = std::str::from_utf8(hex).ok()?.trim();
    if hex.is_empty() || hex.len() > MAX_CHUNK_SIZE_DIGITS {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}
