//! One direction of a keyed TLS 1.3 connection: its records followed across the socket calls
//! that carry them, and each call's captured ciphertext turned back into the plaintext an
//! OpenSSL call would have handed over. A call's head and tail are what the kernel copied;
//! the bytes between were not, and need not be: only where a record starts must its header
//! have been copied (OpenSSL reads a record's header, then its body, and writes whole
//! records, so headers sit at the start of calls).

use super::keys::{EXPLICIT_NONCE_LEN, HEADER_LEN, TAG_LEN, TrafficKeys, Version};

/// The longest record body TLS 1.3 allows (2^14 + 256).
const MAX_BODY: usize = 16_384 + 256;
/// Capacity of a direction's record buffer kept between records.
const KEPT_WHOLE: usize = 2048;
/// Inner content types (RFC 8446 §5.1).
const APPLICATION_DATA: u8 = 23;
const HANDSHAKE: u8 = 22;
/// Handshake message type of KeyUpdate (§4.6.3).
const KEY_UPDATE: u8 = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Lost {
    #[error("a record header was not captured")]
    HeaderNotCaptured,
    #[error("not a TLS 1.3 record header")]
    Malformed,
    #[error("a record's tag did not match its keys")]
    WrongKeys,
}

/// The plaintext of one socket call: how many bytes, the first ones and the last ones.
/// Plaintext is not zeroed (the keys are): per-call uprobes hand over the same bytes, and
/// zeroing byte by byte was a tenth of the daemon's time under wrk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plain {
    pub len: usize,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

/// A direction's records: the keys, the number of the record in progress, how far it is.
#[derive(Debug)]
pub struct Stream {
    keys: TrafficKeys,
    seq: u64,
    header: [u8; HEADER_LEN],
    have: usize,
    body_len: usize,
    body_at: usize,
    /// TLS 1.2 GCM: the record's explicit nonce (OpenSSL's is the record number, until the
    /// record's first bytes say).
    explicit: [u8; EXPLICIT_NONCE_LEN],
    /// The body captured so far while every byte of it was (a small record is whole: its
    /// tag is checked and its content type read).
    whole: Vec<u8>,
    /// TLS 1.3: the record's content type and first byte, once decrypted with the bytes
    /// around them (each decrypted alone cost an AES call).
    kind: Option<u8>,
    first: Option<u8>,
    /// Records whose tag was checked.
    pub checked: u64,
    /// The first checked record was padded: every tag is checked (the content type is not
    /// then at a known place).
    padded: bool,
    /// TLS 1.3: the plaintext length of the record just opened, when padding made it
    /// shorter than its body says.
    unpadded: Option<usize>,
}

/// Part of a call: bytes of one record's body.
struct Portion {
    /// Plaintext bytes the portion holds (its part of the record before the content type).
    plain_len: usize,
    /// Decrypted pieces: (offset in the portion's plaintext, bytes).
    pieces: Vec<(usize, Vec<u8>)>,
    /// The record's content type, if it ended in this call (else application data).
    application: bool,
}

impl Stream {
    /// Records from number `seq` on, protected by `keys`; the next byte starts a record.
    pub fn new(keys: TrafficKeys, seq: u64) -> Stream {
        Stream {
            keys,
            seq,
            header: [0; HEADER_LEN],
            have: 0,
            body_len: 0,
            body_at: 0,
            explicit: [0; EXPLICIT_NONCE_LEN],
            whole: Vec::new(),
            kind: None,
            first: None,
            checked: 0,
            padded: false,
            unpadded: None,
        }
    }

    pub fn keys(&self) -> &TrafficKeys {
        &self.keys
    }

    /// The plaintext of a call that moved `len` bytes, of which `head` (from the start) and
    /// `tail` (up to the end) were captured.
    pub fn call(&mut self, len: usize, head: &[u8], tail: &[u8]) -> Result<Plain, Lost> {
        let captured = Captured::new(len, head, tail);
        let mut portions: Vec<Portion> = Vec::new();
        let mut pos = 0;
        while pos < len {
            if self.have < HEADER_LEN {
                let n = (HEADER_LEN - self.have).min(len - pos);
                let bytes = captured.range(pos, n).ok_or(Lost::HeaderNotCaptured)?;
                self.header[self.have..self.have + n].copy_from_slice(&bytes);
                self.have += n;
                pos += n;
                if self.have == HEADER_LEN {
                    self.start_record()?;
                }
                continue;
            }
            let n = (self.body_len - self.body_at).min(len - pos);
            let whole_record = self.body_at == 0 && n == self.body_len;
            portions.push(self.portion(&captured, pos, n));
            self.body_at += n;
            pos += n;
            if self.body_at == self.body_len {
                let application = self.end_record()?;
                let unpadded = self.unpadded.take();
                if let Some(last) = portions.last_mut() {
                    last.application = application;
                    // A padded record within this call: its plaintext ends at its type.
                    if let (Some(real), true) = (unpadded, whole_record) {
                        last.trim(real);
                    }
                }
            }
        }
        Ok(assemble(portions))
    }

    fn start_record(&mut self) -> Result<(), Lost> {
        let [kind, major, _, hi, lo] = self.header;
        self.body_len = usize::from(u16::from_be_bytes([hi, lo]));
        // Every protected TLS 1.3 record looks like TLS 1.2 application data; TLS 1.2 says
        // what a record is (change_cipher_spec 20 to application data 23).
        let kind_ok = match self.keys.version() {
            Version::Tls13 => kind == APPLICATION_DATA,
            Version::Tls12 => (20..=APPLICATION_DATA).contains(&kind),
        };
        let shortest = self.keys.plaintext_span(MAX_BODY).0 + TAG_LEN;
        if !kind_ok || major != 3 || self.body_len < shortest || self.body_len > MAX_BODY {
            return Err(Lost::Malformed);
        }
        self.explicit = self.seq.to_be_bytes();
        self.body_at = 0;
        // A long record's buffer goes with it: 10k idle connections would keep 16 KiB each.
        if self.whole.capacity() > KEPT_WHOLE {
            self.whole = Vec::new();
        }
        self.whole.clear();
        (self.kind, self.first) = (None, None);
        Ok(())
    }

    /// The part of the record in progress that this call carries at `pos..pos + n`.
    fn portion(&mut self, captured: &Captured<'_>, pos: usize, n: usize) -> Portion {
        let (plain_start, plain_end) = self.keys.plaintext_span(self.body_len);
        let (from, to) = (self.body_at.max(plain_start), (self.body_at + n).min(plain_end));
        let plain_len = to.saturating_sub(from);
        let mut pieces = Vec::new();
        for (at, bytes) in captured.within(pos, n) {
            let offset = self.body_at + (at - pos);
            if offset == self.whole.len() && self.whole.len() + bytes.len() <= MAX_BODY {
                self.whole.extend_from_slice(bytes);
            }
            // TLS 1.2 GCM: the explicit nonce, if these bytes hold it.
            for (i, &b) in bytes.iter().enumerate().take(plain_start.saturating_sub(offset)) {
                self.explicit[offset + i] = b;
            }
            // TLS 1.3's content type (the byte after the plaintext) decrypted with it.
            let inner_end = match self.keys.version() {
                Version::Tls13 => plain_end + 1,
                Version::Tls12 => plain_end,
            };
            let (start, end) = (offset.max(plain_start), (offset + bytes.len()).min(inner_end));
            if start >= end {
                continue;
            }
            let mut plain = bytes[start - offset..end - offset].to_vec();
            self.keys.decrypt_at(self.seq, &self.explicit, start, &mut plain);
            if end > plain_end {
                self.kind = plain.pop();
            }
            if start == 0 {
                self.first = plain.first().copied().or(self.kind);
            }
            if plain.is_empty() {
                continue;
            }
            pieces.push((start - from, plain));
        }
        Portion { plain_len, pieces, application: true }
    }

    /// The record is complete: its tag checked and its content type read if it was captured
    /// whole; a KeyUpdate changes the keys. Whether it carried application data.
    fn end_record(&mut self) -> Result<bool, Lost> {
        // TLS 1.2 says what a record is in its header.
        let mut application = self.keys.version() == Version::Tls13 || self.header[0] == APPLICATION_DATA;
        // Tags are checked on a direction's first whole record (and on every one if that
        // one was padded); after it, a whole record's content type is decrypted alone.
        // Checking every tag cost ~1 µs a request of the daemon's CPU under wrk.
        if self.whole.len() == self.body_len && self.checked > 0 && !self.padded {
            return self.end_unchecked(application);
        }
        if self.whole.len() == self.body_len {
            let inner = self.keys.open(self.seq, &self.header, &self.whole).ok_or(Lost::WrongKeys)?;
            self.checked += 1;
            // The content type is the last non-zero byte (zeros after it are padding).
            let at = inner.iter().rposition(|&b| b != 0);
            let kind = at.map(|at| inner[at]);
            if self.keys.version() == Version::Tls13 && at.is_some_and(|at| at + 1 != inner.len()) {
                self.padded = true;
                self.unpadded = at;
            }
            application = kind == Some(APPLICATION_DATA);
            if self.keys.version() == Version::Tls13
                && kind == Some(HANDSHAKE)
                && inner.first() == Some(&KEY_UPDATE)
            {
                self.keys = self.keys.next().ok_or(Lost::WrongKeys)?;
                self.seq = 0;
                self.have = 0;
                return Ok(false);
            }
        }
        self.seq += 1;
        self.have = 0;
        Ok(application)
    }
}

impl Stream {
    /// A whole record after the first: TLS 1.3's content type (the byte before the tag,
    /// no padding) decrypted alone, and a KeyUpdate's first byte.
    fn end_unchecked(&mut self, mut application: bool) -> Result<bool, Lost> {
        if self.keys.version() == Version::Tls13 {
            let kind = self.kind.unwrap_or_else(|| self.decrypt_byte(self.body_len - TAG_LEN - 1));
            // Zero is no content type but padding: the type lies further back, where the
            // tag check finds it (every tag is checked from here on).
            if kind == 0 {
                self.padded = true;
                return self.end_record();
            }
            application = kind == APPLICATION_DATA;
            if kind == HANDSHAKE && self.first.unwrap_or_else(|| self.decrypt_byte(0)) == KEY_UPDATE {
                self.keys = self.keys.next().ok_or(Lost::WrongKeys)?;
                self.seq = 0;
                self.have = 0;
                return Ok(false);
            }
        }
        self.seq += 1;
        self.have = 0;
        Ok(application)
    }

    /// Byte `at` of the whole record in progress, decrypted.
    fn decrypt_byte(&self, at: usize) -> u8 {
        let mut byte = [self.whole[at]];
        self.keys.decrypt_at(self.seq, &self.explicit, at, &mut byte);
        byte[0]
    }
}

impl Portion {
    /// Only the first `len` plaintext bytes are the record's (the rest was its content type
    /// and padding).
    fn trim(&mut self, len: usize) {
        self.plain_len = self.plain_len.min(len);
        self.pieces.retain_mut(|(at, bytes)| {
            bytes.truncate(len.saturating_sub(*at));
            !bytes.is_empty()
        });
    }
}

/// The plaintext of a call's portions: their lengths summed, the bytes known from its start
/// (while contiguous) and those known up to its end.
fn assemble(portions: Vec<Portion>) -> Plain {
    let mut known: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut len = 0;
    for portion in portions.into_iter().filter(|p| p.application) {
        for (at, bytes) in portion.pieces {
            known.push((len + at, bytes));
        }
        len += portion.plain_len;
    }
    let mut head = Vec::new();
    let mut used = 0;
    for (at, bytes) in &known {
        if *at != head.len() {
            break;
        }
        head.extend_from_slice(bytes);
        used += 1;
    }
    // Not cut at the kernel's head length: a call put together from several (the records of
    // a handshake's reads, a first record copied in parts) is whole, and HTTP/2's frame walk
    // needs every byte of it.
    // The tail: the known bytes that end the plaintext, after the head.
    let mut tail = Vec::new();
    if let Some((at, bytes)) = known[used.min(known.len())..].last()
        && at + bytes.len() == len
    {
        let from = bytes.len().saturating_sub(observer_common::TAIL_LEN);
        let start = (at + from).max(head.len());
        tail.extend_from_slice(&bytes[start - at..]);
    }
    Plain { len, head, tail }
}

/// What the kernel copied of a call: its head and its tail, as positions in the call.
struct Captured<'a> {
    head: &'a [u8],
    tail_at: usize,
    tail: &'a [u8],
}

impl<'a> Captured<'a> {
    fn new(len: usize, head: &'a [u8], tail: &'a [u8]) -> Captured<'a> {
        let head = &head[..head.len().min(len)];
        let tail = &tail[..tail.len().min(len - head.len())];
        Captured { head, tail_at: len - tail.len(), tail }
    }

    /// Bytes `pos..pos + n` (a header's few) if every one was captured.
    fn range(&self, pos: usize, n: usize) -> Option<Vec<u8>> {
        (pos..pos + n).map(|p| self.byte(p)).collect()
    }

    fn byte(&self, p: usize) -> Option<u8> {
        if p < self.head.len() {
            return Some(self.head[p]);
        }
        self.tail.get(p.checked_sub(self.tail_at)?).copied()
    }

    /// The captured pieces of `pos..pos + n`, with their positions.
    fn within(&self, pos: usize, n: usize) -> Vec<(usize, &'a [u8])> {
        let end = pos + n;
        let mut pieces = Vec::new();
        if pos < self.head.len() {
            pieces.push((pos, &self.head[pos..end.min(self.head.len())]));
        }
        let from = pos.max(self.tail_at);
        if from < end && !self.tail.is_empty() {
            pieces.push((from, &self.tail[from - self.tail_at..end - self.tail_at]));
        }
        pieces
    }
}
