//! One keyed connection: what the kernel handed over (the session's secrets, or its memory
//! while the process's layout is learned), and the discovery that makes each direction's
//! stream: which secret, which suite, which record number open its first records.

use observer_common::{Direction, KEYS_DUMP_LEN, KEYS_SECRETS_LEN};
use zeroize::Zeroizing;

use super::{
    Carry, Event, Layout, LostReason,
    frames::FrameWalk,
    keys::{EXPLICIT_NONCE_LEN, HEADER_LEN, MAX_SECRET_LEN, Suite, TrafficKeys},
    records::{Lost, Plain, Stream},
};

/// The server's first record after its handshake is numbered after the session tickets it
/// sent (OpenSSL: 2 by default, 1 or 0 if configured so); tried in this range.
const MAX_TICKETS: u64 = 8;
/// Secrets lie at 4-byte aligned offsets (OpenSSL 3.0.19: 1860 and 1924).
const ALIGN: usize = 4;

/// Encrypted records before the client's first one under its application keys: its
/// Finished, and with a client certificate its Certificate and CertificateVerify.
const MAX_HANDSHAKE_RECORDS: usize = 4;

/// A keyed connection: what the kernel handed over, then a stream per direction once its
/// keys are known.
pub(super) struct Session {
    pub(super) tgid: u32,
    /// The session's memory, or its two secrets (`KEYS_SECRETS_LEN`): zeroed when dropped.
    pub(super) memory: Zeroizing<Vec<u8>>,
    pub(super) suite: Option<Suite>,
    /// [read, write]: the client's records and the server's (a server's connection).
    pub(super) streams: [Option<Stream>; 2],
    /// Bytes of a direction before its keys are known (a header read alone), while whole.
    pub(super) pending: [Zeroizing<Vec<u8>>; 2],
    /// What the kernel said of records that had no plaintext, for the next that has.
    pub(super) carry: Carry,
    /// Bytes of `pending[0]` read during the handshake.
    pub(super) early_len: usize,
    /// TLS 1.2: the server's keys, made with the client's, or the client's, made with the
    /// server's (a server that writes first), until their stream is made.
    pub(super) server12: Option<TrafficKeys>,
    pub(super) client12: Option<TrafficKeys>,
    /// The server wrote plaintext already.
    pub(super) wrote: bool,
    /// The connection is given up (counted once).
    pub(super) lost: bool,
    /// ALPN `h2`: its calls come whole, and their plaintext is walked as frames.
    pub(super) h2: Option<FrameWalk>,
    /// The target opened the connection: the client's records are what it writes.
    pub(super) client: bool,
    pub(super) derived: Derived,
}

/// Keys derived from the handed-over secrets while the streams are searched, made once per
/// session: each record that opens under none of them (the client's Finished, under
/// handshake keys) is tried against every candidate. Derived again per record, HKDF and the
/// TLS 1.2 PRF were ~40 % of the daemon's CPU under a handshake per request (perf, wrk
/// `Connection: close`; 42.7 µs of daemon CPU per request).
#[derive(Default)]
pub(super) struct Derived {
    /// TLS 1.3: (offset, suite) → keys, `None` where the bytes there are zero.
    tls13: Vec<(usize, Suite, Option<TrafficKeys>)>,
    /// TLS 1.2: suite → (client, server) keys from the master secret and randoms.
    tls12: Vec<(Suite, Option<(TrafficKeys, TrafficKeys)>)>,
}

impl Session {
    pub(super) fn call(
        &mut self,
        layout: &mut Layout,
        event: &Event<'_>,
        verified: &mut u64,
    ) -> Result<Plain, LostReason> {
        let len = usize::try_from(event.ret).unwrap_or(0);
        let side = self.side(event.direction());
        if self.streams[side].is_none() {
            let whole = event.head.len() == len;
            if whole {
                self.pending[side].extend_from_slice(event.head);
            }
            let found = match side {
                0 => self.client_stream(layout, verified, whole),
                _ => self.server_stream(layout, whole, event.head),
            };
            if !found? {
                return Ok(Plain::default()); // a header alone: wait for the body
            }
            if self.streams.iter().all(Option::is_some) {
                self.derived = Derived::default(); // the candidates are not needed any more
            }
            let pending = std::mem::take(&mut self.pending[side]);
            let stream = self.streams[side].as_mut().expect("made above");
            if whole {
                return stream.call(pending.len(), &pending, &[]).map_err(framing);
            }
            stream.call(pending.len(), &pending, &[]).map_err(framing)?;
        }
        let stream = self.streams[side].as_mut().expect("made above");
        stream.call(len, event.head, event.tail).map_err(framing)
    }

    /// Which stream a direction's records are: 0 the client's (what a server reads, what a
    /// client writes), 1 the server's.
    pub(super) fn side(&self, direction: Direction) -> usize {
        usize::from((direction == Direction::In) == self.client)
    }

    /// The first record of a direction, if all of it has been seen: (header, body).
    fn first_record(&self, side: usize) -> Option<([u8; HEADER_LEN], Zeroizing<Vec<u8>>)> {
        record_at(&self.pending[side], 0)
    }

    /// Offsets where a secret may lie: both known (the kernel handed the two secrets), the
    /// process's learned one, or every aligned offset of the session's memory.
    fn offsets(&self, learned: Option<u32>, side: usize) -> Vec<usize> {
        if self.memory.len() == KEYS_SECRETS_LEN {
            return vec![side * MAX_SECRET_LEN];
        }
        match learned {
            Some(offset) => vec![offset as usize],
            None => (0..self.memory.len()).step_by(ALIGN).collect(),
        }
    }

    /// The keys of the secret at `offset` for `suite`: kept where the kernel handed the two
    /// secrets over (tried on every record until one opens); made each time in a session's
    /// memory (learning a process's layout: each offset is tried once per record).
    fn keys_at(&mut self, offset: usize, suite: Suite) -> Option<TrafficKeys> {
        if self.memory.len() != KEYS_SECRETS_LEN {
            return derive13(&self.memory, offset, suite);
        }
        if let Some((.., keys)) = self.derived.tls13.iter().find(|(at, s, _)| *at == offset && *s == suite) {
            return keys.clone();
        }
        let keys = derive13(&self.memory, offset, suite);
        // Room for every candidate at once: a vector that grew would free a copy of the keys
        // unzeroed.
        if self.derived.tls13.capacity() == 0 {
            self.derived.tls13.reserve_exact(2 * Suite::ALL.len()); // both secrets, every suite
        }
        self.derived.tls13.push((offset, suite, keys.clone()));
        keys
    }

    /// The client's stream (what a server reads): the offset and suite that open its first
    /// record under application keys (number 0), once that record is whole; `false` while
    /// it is not yet. The handshake's records before it (read with them) open under none of
    /// the candidates, so each costs every suite's keys of both versions: in TLS 1.3 the
    /// first encrypted record the handshake read is its own (the client's Finished, or its
    /// Certificate), tried last, so a handshake derives one key per direction (43 µs of
    /// daemon CPU per request under a handshake per request before, 15 after). TLS 1.2's
    /// Finished has a handshake record's outer type: skipped by its type.
    pub(super) fn client_stream(
        &mut self,
        layout: &mut Layout,
        verified: &mut u64,
        whole: bool,
    ) -> Result<bool, LostReason> {
        if !whole {
            return Err(LostReason::NotFound); // a first record longer than what is copied
        }
        let mut records = encrypted_records(&self.pending[0]);
        let handshake_first =
            self.tls13_secrets() && records.first().is_some_and(|(at, ..)| *at < self.early_len);
        if handshake_first {
            // The Finished alone: wait for what follows it. Only a record of a Finished's
            // size waits (a TLS 1.2 session on a reused `SSL` may show stale TLS 1.3
            // secrets: its lone record is then its request, tried at once).
            if records.len() == 1 && FINISHED_BODIES.contains(&records[0].2.len()) {
                return Ok(false);
            }
            records.rotate_left(1);
        }
        records.truncate(MAX_HANDSHAKE_RECORDS + 1);
        for (at, header, body) in &records {
            if self.open_client_first(layout, header, body) {
                *verified += 1;
                self.pending[0].drain(..*at);
                return Ok(true);
            }
        }
        // Only what the handshake read may hold its records: wait for one read after it.
        if records.len() <= MAX_HANDSHAKE_RECORDS && records.iter().all(|(at, ..)| *at < self.early_len) {
            return Ok(false);
        }
        Err(LostReason::NotFound)
    }

    /// The kernel handed over TLS 1.3 secrets (TLS 1.2 leaves them zero).
    fn tls13_secrets(&self) -> bool {
        self.memory.len() == KEYS_SECRETS_LEN && self.memory[..2 * MAX_SECRET_LEN].iter().any(|&b| b != 0)
    }

    /// Makes the client's stream if `body` is its record 0 under TLS 1.3 application keys,
    /// or its first after the Finished under TLS 1.2's.
    fn open_client_first(&mut self, layout: &mut Layout, header: &[u8; HEADER_LEN], body: &[u8]) -> bool {
        if let Some((keys, offset, suite)) = self.open_first(layout.client, header, body) {
            if self.memory.len() != KEYS_SECRETS_LEN {
                layout.client = Some(offset as u32);
            }
            self.suite = Some(suite);
            self.streams[0] = Some(Stream::new(keys, 0));
            return true;
        }
        if let Some((client, server, seq)) = self.open_first_tls12(header, body) {
            self.suite = Some(client.suite());
            self.server12 = server;
            self.streams[0] = Some(Stream::new(client, seq));
            return true;
        }
        false
    }

    /// Suites for the secret at `offset`, likeliest first: OpenSSL zeroes its secret buffers
    /// past the hash's length, so a secret whose bytes 32..48 are zero is SHA-256's
    /// (AES-128-GCM, ChaCha20-Poly1305), else SHA-384's (AES-256-GCM). An order, not a
    /// filter: a reused `SSL` object may keep an older, longer secret's tail.
    fn suites_for(&self, offset: usize) -> [Suite; 3] {
        let tail = self.memory.get(offset + 32..offset + MAX_SECRET_LEN);
        if tail.is_some_and(|t| t.iter().all(|&b| b == 0)) {
            [Suite::Aes128Gcm, Suite::Chacha20Poly1305, Suite::Aes256Gcm]
        } else {
            [Suite::Aes256Gcm, Suite::Aes128Gcm, Suite::Chacha20Poly1305]
        }
    }

    /// TLS 1.2 (the kernel handed over the master secret and the randoms): the client's and
    /// the server's keys of the first suite for which `opens` finds a record number, and that
    /// number.
    fn tls12_by(
        &mut self,
        opens: impl Fn(&TrafficKeys, &TrafficKeys) -> Option<u64>,
    ) -> Option<(TrafficKeys, TrafficKeys, u64)> {
        if self.memory.len() != KEYS_SECRETS_LEN {
            return None;
        }
        for suite in Suite::ALL {
            let pair = match self.derived.tls12.iter().find(|(s, _)| *s == suite) {
                Some((_, pair)) => pair.clone(),
                None => {
                    let pair = derive12(&self.memory, suite);
                    if self.derived.tls12.capacity() == 0 {
                        self.derived.tls12.reserve_exact(Suite::ALL.len()); // as for tls13
                    }
                    self.derived.tls12.push((suite, pair.clone()));
                    pair
                }
            };
            let Some((client, server)) = pair else { continue };
            if let Some(seq) = opens(&client, &server) {
                return Some((client, server, seq));
            }
        }
        None
    }

    /// TLS 1.2: the client's keys (those found with the server's, if it wrote first) and the
    /// number of `body` under them (1: each side's Finished is its record 0), and the
    /// server's keys if not made yet.
    fn open_first_tls12(
        &mut self,
        header: &[u8; HEADER_LEN],
        body: &[u8],
    ) -> Option<(TrafficKeys, Option<TrafficKeys>, u64)> {
        let opens = |client: &TrafficKeys| {
            [1, 0, 2].into_iter().find(|&seq| client.open(seq, header, body).is_some())
        };
        if let Some(client) = self.client12.take() {
            let seq = opens(&client)?;
            return Some((client, None, seq));
        }
        let (client, server, seq) = self.tls12_by(|client, _| opens(client))?;
        Some((client, Some(server), seq))
    }

    /// The keys (and where their secret lies, and their suite) that open `body` as record 0.
    fn open_first(
        &mut self,
        learned: Option<u32>,
        header: &[u8; HEADER_LEN],
        body: &[u8],
    ) -> Option<(TrafficKeys, usize, Suite)> {
        for offset in self.offsets(learned, 0) {
            for suite in self.suites_for(offset) {
                let Some(keys) = self.keys_at(offset, suite) else { continue };
                if keys.open(0, header, body).is_some() {
                    return Some((keys, offset, suite));
                }
            }
        }
        None
    }

    /// The server's stream (what a server writes): its first record is numbered after the
    /// session tickets, found by that record's tag if it is whole, else as learned from
    /// earlier connections of the process.
    fn server_stream(&mut self, layout: &mut Layout, whole: bool, head: &[u8]) -> Result<bool, LostReason> {
        let record = if whole { self.first_record(1) } else { None };
        if whole && record.is_none() {
            return Ok(false);
        }
        let first_seq = |keys: &TrafficKeys, learned: Option<u64>| match &record {
            Some((header, body)) => {
                learned.into_iter().chain(0..=MAX_TICKETS).find(|&seq| keys.open(seq, header, body).is_some())
            }
            // Not whole (a long first response): numbered as learned (TLS 1.2: 1, after its
            // Finished), or as found, if its first bytes then read as a response's (a resumed
            // session may send fewer tickets). TLS 1.2 GCM decrypts the same under any number
            // (its nonce is in the record, OpenSSL's counting from a random start): the next
            // whole record's tag says if the number was right.
            None => {
                learned.into_iter().chain(0..=MAX_TICKETS).find(|&seq| starts_a_response(keys, seq, head))
            }
        };
        if let Some(keys) = self.server12.take() {
            let seq = first_seq(&keys, Some(TLS12_FIRST)).ok_or(LostReason::NotFound)?;
            self.streams[1] = Some(Stream::new(keys, seq));
            return Ok(true);
        }
        // A server that speaks first (HTTP/2's SETTINGS) writes before the client's suite is
        // known: each suite is tried.
        let known = self.memory.len() == KEYS_SECRETS_LEN || layout.server.is_some();
        for offset in self.offsets(layout.server, 1) {
            let suites = self.suite.map_or(self.suites_for(offset).to_vec(), |suite| vec![suite]);
            for &suite in &suites {
                let Some(keys) = self.keys_at(offset, suite) else { continue };
                let seq = if record.is_some() || known { first_seq(&keys, layout.tickets) } else { None };
                let Some(seq) = seq else { continue };
                if self.memory.len() != KEYS_SECRETS_LEN {
                    layout.server = Some(offset as u32);
                }
                layout.tickets = Some(seq);
                self.suite = Some(suite);
                self.streams[1] = Some(Stream::new(keys, seq));
                return Ok(true);
            }
        }
        if self.suite.is_none()
            && let Some((client, server, seq)) =
                self.tls12_by(|_, server| first_seq(server, Some(TLS12_FIRST)))
        {
            self.suite = Some(server.suite());
            self.client12 = Some(client);
            self.streams[1] = Some(Stream::new(server, seq));
            return Ok(true);
        }
        Err(LostReason::NotFound)
    }
}

impl Derived {
    /// Keys derived so far: (TLS 1.3, TLS 1.2 suites).
    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.tls13.len(), self.tls12.len())
    }
}

/// The body of a TLS 1.3 client Finished record: its handshake header (4), the hash
/// (SHA-256 or SHA-384), the inner content type (1) and the tag (16).
const FINISHED_BODIES: [usize; 2] = [4 + 32 + 1 + 16, 4 + 48 + 1 + 16];

/// TLS 1.3 keys of the secret at `offset` of `memory` for `suite`; none where it is zero.
fn derive13(memory: &[u8], offset: usize, suite: Suite) -> Option<TrafficKeys> {
    let secret = memory.get(offset..offset + suite.secret_len())?;
    if secret.iter().all(|&b| b == 0) {
        return None;
    }
    TrafficKeys::new(suite, secret)
}

/// TLS 1.2 (client, server) keys of `suite` from a `KEYS_SECRETS_LEN` record's master
/// secret and randoms; none where the master secret is zero.
fn derive12(memory: &[u8], suite: Suite) -> Option<(TrafficKeys, TrafficKeys)> {
    let at = |from: usize, len: usize| memory.get(from..from + len);
    let (master, client_random, server_random) =
        (at(TLS12_MASTER, 48)?, at(TLS12_RANDOMS, 32)?, at(TLS12_RANDOMS + 32, 32)?);
    if master.iter().all(|&b| b == 0) {
        return None;
    }
    TrafficKeys::tls12(suite, master, client_random, server_random)
}

/// The whole records of `bytes` with an encrypted record's outer type, up to the first
/// that is not whole: (where it starts, header, body).
fn encrypted_records(bytes: &[u8]) -> Vec<(usize, [u8; HEADER_LEN], Zeroizing<Vec<u8>>)> {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((header, body)) = record_at(bytes, at) {
        let len = HEADER_LEN + body.len();
        if header[0] == APPLICATION_DATA {
            records.push((at, header, body));
        }
        at += len;
    }
    records
}

/// Whether record `seq`, whose start `head` holds, decrypts to the start of an HTTP/1
/// response (no tag to check: the record was not copied whole).
fn starts_a_response(keys: &TrafficKeys, seq: u64, head: &[u8]) -> bool {
    const STATUS_LINE: &[u8] = b"HTTP/1.";
    let start = keys.plaintext_span(usize::MAX).0;
    let explicit = match head.get(HEADER_LEN..HEADER_LEN + EXPLICIT_NONCE_LEN) {
        Some(explicit) if start > 0 => explicit.try_into().expect("8 bytes"),
        _ => seq.to_be_bytes(),
    };
    let Some(sealed) = head.get(HEADER_LEN + start..HEADER_LEN + start + STATUS_LINE.len()) else {
        return false;
    };
    let mut plain = sealed.to_vec();
    keys.decrypt_at(seq, &explicit, start, &mut plain);
    plain == STATUS_LINE
}

/// The whole record at `at` in `bytes`, if all of it is there: (header, body).
fn record_at(bytes: &[u8], at: usize) -> Option<([u8; HEADER_LEN], Zeroizing<Vec<u8>>)> {
    let header: [u8; HEADER_LEN] = bytes.get(at..at + HEADER_LEN)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    Some((header, Zeroizing::new(bytes.get(at + HEADER_LEN..at + HEADER_LEN + len)?.to_vec())))
}

/// A record's outer content type: every protected TLS 1.3 record says application data.
const APPLICATION_DATA: u8 = 23;

pub(super) fn framing(lost: Lost) -> LostReason {
    match lost {
        Lost::WrongKeys => LostReason::WrongKeys,
        Lost::HeaderNotCaptured | Lost::Malformed => LostReason::Framing,
    }
}

/// TLS 1.2: the number of each side's first record after the handshake (its Finished is 0).
const TLS12_FIRST: u64 = 1;

/// Where a `KEYS_SECRETS_LEN` record keeps TLS 1.2's master secret and randoms, after the
/// two TLS 1.3 secrets.
const TLS12_MASTER: usize = 2 * MAX_SECRET_LEN;
const TLS12_RANDOMS: usize = TLS12_MASTER + 48;

// What the kernel copies must hold what is searched.
const _: () = assert!(KEYS_SECRETS_LEN == TLS12_RANDOMS + 64 && KEYS_DUMP_LEN > KEYS_SECRETS_LEN);
