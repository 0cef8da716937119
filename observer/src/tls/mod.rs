//! Keyed TLS (`--tls keys`): no uprobe on OpenSSL's read and write calls. When a session's
//! handshake completes, the kernel hands over the session's memory (first connections of a
//! process) or its two traffic secrets (once the process's layout is known), then the
//! connection's ciphertext as it passes the socket hooks. Here the ciphertext becomes the
//! plaintext records the per-call uprobes would have reported.
//!
//! Where OpenSSL keeps the secrets differs between versions and builds, so it is learned
//! from each process itself: the offset in the session's memory whose bytes, as a traffic
//! secret, open the connection's first record with its tag checked (TLS 1.3; the suite too
//! is found that way). The secrets are only in memory, zeroed when a connection ends.

pub mod keys;
#[allow(unsafe_code)]
pub mod learn;
pub mod records;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use observer_common::{Call, Direction, H2_PREFACE, KEYS_DUMP_LEN, KEYS_SECRETS_LEN, Kind};
use zeroize::Zeroizing;

use self::{
    keys::{EXPLICIT_NONCE_LEN, HEADER_LEN, MAX_SECRET_LEN, Suite, TAG_LEN, TrafficKeys},
    records::{Lost, Plain, Stream},
};
use crate::events::Event;

/// The server's first record after its handshake is numbered after the session tickets it
/// sent (OpenSSL: 2 by default, 1 or 0 if configured so); tried in this range.
const MAX_TICKETS: u64 = 8;
/// Secrets lie at 4-byte aligned offsets (OpenSSL 3.0.19: 1860 and 1924).
const ALIGN: usize = 4;

/// Where a process's OpenSSL keeps a session's secrets: offsets in the session's memory of
/// the client's and the server's application traffic secrets, and how many records the
/// server sends before its first application data (its tickets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub client: Option<u32>,
    pub server: Option<u32>,
    pub tickets: Option<u64>,
}

impl Layout {
    pub fn complete(&self) -> Option<(u32, u32)> {
        Some((self.client?, self.server?))
    }
}

/// Why a keyed connection's records were dropped (`observer_tls_keyed_lost_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// Ciphertext of a connection whose keys were never handed over.
    NoKeys,
    /// No offset or suite opened the first record (TLS 1.2, or a layout not found).
    NotFound,
    /// Framing lost: a record header not captured or not a record.
    Framing,
    /// A record's tag did not match (a record lost before it, or wrong keys).
    WrongKeys,
    /// An HTTP/2 connection (ALPN h2): its frames inside the records are not followed.
    Http2,
}

impl LostReason {
    pub const ALL: [LostReason; 5] = [
        LostReason::NoKeys,
        LostReason::NotFound,
        LostReason::Framing,
        LostReason::WrongKeys,
        LostReason::Http2,
    ];

    /// Whether the process's later sessions are better followed call by call.
    pub fn falls_back(self) -> bool {
        matches!(self, LostReason::NotFound | LostReason::Http2)
    }

    pub fn name(self) -> &'static str {
        match self {
            LostReason::NoKeys => "no_keys",
            LostReason::NotFound => "not_found",
            LostReason::Framing => "framing",
            LostReason::WrongKeys => "wrong_keys",
            LostReason::Http2 => "http2",
        }
    }
}

/// A keyed connection: what the kernel handed over, then a stream per direction once its
/// keys are known.
struct Session {
    tgid: u32,
    /// The session's memory, or its two secrets (`KEYS_SECRETS_LEN`): zeroed when dropped.
    memory: Zeroizing<Vec<u8>>,
    suite: Option<Suite>,
    /// [read, write]: the client's records and the server's (a server's connection).
    streams: [Option<Stream>; 2],
    /// Bytes of a direction before its keys are known (a header read alone), while whole.
    pending: [Zeroizing<Vec<u8>>; 2],
    /// What the kernel said of records that had no plaintext, for the next that has.
    carry: Carry,
    /// Bytes of `pending[0]` read during the handshake.
    early_len: usize,
    /// TLS 1.2: the server's keys, made with the client's, or the client's, made with the
    /// server's (a server that writes first), until their stream is made.
    server12: Option<TrafficKeys>,
    client12: Option<TrafficKeys>,
    /// The server wrote plaintext already.
    wrote: bool,
    /// The connection is given up (counted once).
    lost: bool,
}

/// A connection's handshake reads: their bytes, while every byte was copied.
#[derive(Default)]
struct Early {
    bytes: Zeroizing<Vec<u8>>,
    whole: bool,
}

/// Most bytes of handshake reads kept per connection, and most connections with some (a
/// client certificate chain is the largest thing a server reads then).
const MAX_EARLY_BYTES: usize = 64 << 10;
const MAX_EARLY_CONNS: usize = 16_384;
/// Encrypted records before the client's first one under its application keys: its
/// Finished, and with a client certificate its Certificate and CertificateVerify.
const MAX_HANDSHAKE_RECORDS: usize = 4;

/// What a record says of its connection beyond its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carry {
    pub new_conn: bool,
    pub wait_ns: Option<u64>,
    pub lost_before: bool,
}

impl Plaintext {
    /// The plaintext as the data record an OpenSSL call would have made, in the place of
    /// `cipher` (the record, or the keys, that brought it).
    pub fn event<'a>(&'a self, cipher: &Event<'_>) -> Event<'a> {
        let call = match self.direction {
            Direction::In => Call::TlsRead,
            Direction::Out => Call::TlsWrite,
        };
        Event {
            call,
            ret: self.plain.len as i64,
            head: &self.plain.head,
            tail: &self.plain.tail,
            new_conn: self.carry.new_conn,
            wait_ns: self.carry.wait_ns,
            lost_before: self.carry.lost_before,
            cipher: false,
            kind: Kind::Data,
            ..*cipher
        }
    }
}

impl Carry {
    fn of(event: &Event<'_>) -> Carry {
        Carry { new_conn: event.new_conn, wait_ns: event.wait_ns, lost_before: event.lost_before }
    }

    fn merge(self, later: Carry) -> Carry {
        Carry {
            new_conn: self.new_conn || later.new_conn,
            wait_ns: self.wait_ns.or(later.wait_ns),
            lost_before: self.lost_before || later.lost_before,
        }
    }
}

/// The plaintext of a socket call of a keyed connection, with what the kernel said of it
/// (and of calls before it that had none).
#[derive(Debug)]
pub struct Plaintext {
    pub plain: Plain,
    pub carry: Carry,
    pub direction: Direction,
}

/// The keyed connections and what each process's layout is.
#[derive(Default)]
pub struct Keyed {
    sessions: HashMap<u64, Session>,
    /// What connections read during their handshake, before their keys came: the records
    /// after the handshake's last may be among them (a server that reads ahead).
    early: HashMap<u64, Early>,
    layouts: HashMap<u32, Layout>,
    /// Layouts completed since last asked (to be handed to the kernel).
    learned: Vec<(u32, Layout)>,
    /// Processes to follow call by call from now on, and why.
    fall_backs: Vec<(u32, LostReason)>,
    pub lost: HashMap<LostReason, u64>,
    /// Connections whose first record opened with its tag checked.
    pub verified: u64,
}

impl Keyed {
    /// A session's handshake completed on connection `event.conn`: its memory or secrets.
    /// The connection's reads before, whatever they hold, are the start of the client's
    /// records; the wait of a new connection came with the keys.
    pub fn keys(&mut self, event: &Event<'_>) -> Option<Plaintext> {
        let early = self.early.remove(&event.conn).unwrap_or_default();
        let mut session = Session {
            tgid: event.tgid,
            memory: Zeroizing::new(event.head.to_vec()),
            suite: None,
            streams: [None, None],
            pending: Default::default(),
            carry: Carry::of(event),
            early_len: 0,
            server12: None,
            client12: None,
            wrote: false,
            lost: false,
        };
        if early.whole {
            session.early_len = early.bytes.len();
            session.pending[0] = early.bytes;
        }
        let tgid = session.tgid;
        let session = self.sessions.entry(event.conn).insert_entry(session).into_mut();
        if session.pending[0].is_empty() {
            return None;
        }
        // The first request, if read with the handshake's last record.
        let layout = self.layouts.entry(tgid).or_default();
        let before = *layout;
        let plain = match session.client_stream(layout, &mut self.verified, true) {
            Ok(false) => return None,
            Ok(true) => {
                let pending = std::mem::take(&mut session.pending[0]);
                let stream = session.streams[0].as_mut().expect("made above");
                stream.call(pending.len(), &pending, &[]).map_err(framing)
            }
            Err(reason) => Err(reason),
        };
        self.finish(event.conn, tgid, before, plain, Carry::default(), Direction::In)
    }

    /// The connection ended: its secrets go.
    pub fn close(&mut self, conn: u64) {
        self.sessions.remove(&conn);
        self.early.remove(&conn);
    }

    /// A read of a connection's handshake, kept until its keys come.
    fn early_read(&mut self, event: &Event<'_>) {
        if self.early.len() >= MAX_EARLY_CONNS && !self.early.contains_key(&event.conn) {
            self.early.clear(); // connections whose end was not seen
        }
        let early = self.early.entry(event.conn).or_insert_with(|| Early { whole: true, ..Early::default() });
        let len = usize::try_from(event.ret).unwrap_or(0);
        if !early.whole || event.head.len() != len || early.bytes.len() + len > MAX_EARLY_BYTES {
            early.whole = false;
            early.bytes.clear();
            return;
        }
        early.bytes.extend_from_slice(event.head);
    }

    /// A process ended: what was learned of it goes.
    pub fn forget_process(&mut self, tgid: u32) {
        self.layouts.remove(&tgid);
        self.sessions.retain(|_, s| s.tgid != tgid);
    }

    /// Processes whose later sessions should be followed call by call, since the last call.
    pub fn take_fall_backs(&mut self) -> Vec<(u32, LostReason)> {
        std::mem::take(&mut self.fall_backs)
    }

    /// Connection `conn` is given up for `reason`.
    fn lose(&mut self, conn: u64, reason: LostReason) {
        let Some(session) = self.sessions.get_mut(&conn) else { return };
        tracing::debug!(
            conn,
            reason = reason.name(),
            memory = session.memory.len(),
            "keyed TLS connection lost"
        );
        session.lost = true;
        session.streams = [None, None];
        *self.lost.entry(reason).or_default() += 1;
        if reason.falls_back() && !self.fall_backs.iter().any(|(tgid, _)| *tgid == session.tgid) {
            self.fall_backs.push((session.tgid, reason));
        }
    }

    /// Connections verified and lost since the last call.
    pub fn take_counts(&mut self) -> (u64, Vec<(LostReason, u64)>) {
        (std::mem::take(&mut self.verified), self.lost.drain().collect())
    }

    /// Layouts learned since the last call, for the kernel.
    pub fn take_learned(&mut self) -> Vec<(u32, Layout)> {
        std::mem::take(&mut self.learned)
    }

    pub fn layout(&self, tgid: u32) -> Layout {
        self.layouts.get(&tgid).copied().unwrap_or_default()
    }

    pub fn is_keyed(&self, conn: u64) -> bool {
        self.sessions.contains_key(&conn)
    }

    /// The plaintext of a ciphertext record of a keyed connection; `None` if it had none or
    /// is lost (a connection is counted lost once).
    pub fn data(&mut self, event: &Event<'_>) -> Option<Plaintext> {
        let Some(session) = self.sessions.get_mut(&event.conn) else {
            match event.direction() {
                Direction::In => self.early_read(event),
                Direction::Out => *self.lost.entry(LostReason::NoKeys).or_default() += 1,
            }
            return None;
        };
        if session.lost {
            return None;
        }
        let tgid = session.tgid;
        let layout = self.layouts.entry(tgid).or_default();
        let before = *layout;
        let result = session.call(layout, event, &mut self.verified);
        self.finish(event.conn, tgid, before, result, Carry::of(event), event.direction())
    }

    /// What a call of connection `conn` came to: its plaintext, with what the kernel said of
    /// it and of calls before it without plaintext; or the connection lost. A layout the call
    /// completed is noted for the kernel.
    fn finish(
        &mut self,
        conn: u64,
        tgid: u32,
        before: Layout,
        result: Result<Plain, LostReason>,
        carry: Carry,
        direction: Direction,
    ) -> Option<Plaintext> {
        let layout = self.layout(tgid);
        if layout.complete().is_some() && before.complete().is_none() {
            self.learned.push((tgid, layout));
        }
        let session = self.sessions.get_mut(&conn)?;
        let plain = match result {
            Ok(plain) if starts_http2(&plain, direction, session.wrote) => Err(LostReason::Http2),
            other => other,
        };
        if direction == Direction::Out && plain.as_ref().is_ok_and(|p| p.len > 0) {
            session.wrote = true;
        }
        match plain {
            Ok(plain) if plain.len == 0 => {
                session.carry = session.carry.merge(carry);
                None
            }
            Ok(plain) => {
                Some(Plaintext { plain, carry: std::mem::take(&mut session.carry).merge(carry), direction })
            }
            Err(reason) => {
                self.lose(conn, reason);
                None
            }
        }
    }
}

impl Session {
    fn call(
        &mut self,
        layout: &mut Layout,
        event: &Event<'_>,
        verified: &mut u64,
    ) -> Result<Plain, LostReason> {
        let len = usize::try_from(event.ret).unwrap_or(0);
        let side = usize::from(event.direction() != Direction::In);
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

    fn keys_at(&self, offset: usize, suite: Suite) -> Option<TrafficKeys> {
        let secret = self.memory.get(offset..offset + suite.secret_len())?;
        if secret.iter().all(|&b| b == 0) {
            return None;
        }
        TrafficKeys::new(suite, secret)
    }

    /// The client's stream (what a server reads): the offset and suite that open its first
    /// record under application keys (number 0), once that record is whole; `false` while
    /// it is not yet. The handshake's records before it (read ahead with them) are skipped:
    /// plaintext ones by their type, encrypted ones because they do not open.
    fn client_stream(
        &mut self,
        layout: &mut Layout,
        verified: &mut u64,
        whole: bool,
    ) -> Result<bool, LostReason> {
        if !whole {
            return Err(LostReason::NotFound); // a first record longer than what is copied
        }
        let mut at = 0;
        let mut encrypted = 0;
        while let Some((header, body)) = record_at(&self.pending[0], at) {
            let len = HEADER_LEN + body.len();
            if header[0] != APPLICATION_DATA {
                at += len;
                continue;
            }
            if let Some((keys, offset, suite)) = self.open_first(layout.client, &header, &body) {
                if self.memory.len() != KEYS_SECRETS_LEN {
                    layout.client = Some(offset as u32);
                }
                *verified += 1;
                self.suite = Some(suite);
                self.pending[0].drain(..at);
                self.streams[0] = Some(Stream::new(keys, 0));
                return Ok(true);
            }
            if let Some((client, server, seq)) = self.open_first_tls12(&header, &body) {
                *verified += 1;
                self.suite = Some(client.suite());
                self.server12 = server;
                self.pending[0].drain(..at);
                self.streams[0] = Some(Stream::new(client, seq));
                return Ok(true);
            }
            // Only what the handshake read may hold its records.
            encrypted += 1;
            if encrypted > MAX_HANDSHAKE_RECORDS || at >= self.early_len {
                return Err(LostReason::NotFound);
            }
            at += len;
        }
        Ok(false)
    }

    /// TLS 1.2 (the kernel handed over the master secret and the randoms): the client's and
    /// the server's keys of the first suite for which `opens` finds a record number, and that
    /// number.
    fn tls12_by(
        &self,
        opens: impl Fn(&TrafficKeys, &TrafficKeys) -> Option<u64>,
    ) -> Option<(TrafficKeys, TrafficKeys, u64)> {
        if self.memory.len() != KEYS_SECRETS_LEN {
            return None;
        }
        let at = |from: usize, len: usize| &self.memory[from..from + len];
        let (master, client_random, server_random) =
            (at(TLS12_MASTER, 48), at(TLS12_RANDOMS, 32), at(TLS12_RANDOMS + 32, 32));
        if master.iter().all(|&b| b == 0) {
            return None;
        }
        Suite::ALL.into_iter().find_map(|suite| {
            let (client, server) = TrafficKeys::tls12(suite, master, client_random, server_random)?;
            let seq = opens(&client, &server)?;
            Some((client, server, seq))
        })
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
        &self,
        learned: Option<u32>,
        header: &[u8; HEADER_LEN],
        body: &[u8],
    ) -> Option<(TrafficKeys, usize, Suite)> {
        for offset in self.offsets(learned, 0) {
            for suite in Suite::ALL {
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
            Some((header, body)) => (0..=MAX_TICKETS).find(|&seq| keys.open(seq, header, body).is_some()),
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
        let suites = self.suite.map_or(Suite::ALL.to_vec(), |suite| vec![suite]);
        let known = self.memory.len() == KEYS_SECRETS_LEN || layout.server.is_some();
        for offset in self.offsets(layout.server, 1) {
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

/// Whether a call's plaintext starts an HTTP/2 connection: the client's preface, or a
/// server's first bytes being a SETTINGS frame (a server speaks first; an HTTP/1 response
/// starts with `HTTP/`).
fn starts_http2(plain: &Plain, direction: Direction, wrote: bool) -> bool {
    const SETTINGS: u8 = 4;
    match direction {
        Direction::In => plain.head.starts_with(H2_PREFACE),
        Direction::Out => {
            !wrote && plain.head.get(3) == Some(&SETTINGS) && plain.head.get(5..9) == Some(&[0; 4])
        }
    }
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

fn framing(lost: Lost) -> LostReason {
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
const _: () = assert!(TAG_LEN == 16);
