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

mod frames;
pub mod keys;
#[allow(unsafe_code)]
pub mod learn;
pub mod records;
mod session;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use observer_common::{Call, Direction, H2_PREFACE, Kind, Role};
use zeroize::Zeroizing;

use self::{
    frames::FrameWalk,
    records::Plain,
    session::{Session, framing},
};
use crate::events::Event;

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
    /// An HTTP/2 connection found by its first bytes (the ALPN's place unknown): its records
    /// were not copied whole, and its frames cannot be followed.
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
            frames: self.frames.is_some(),
            seq: self.frames.unwrap_or(0),
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
    /// An h2 session's: `plain.head` is a frame record, of this number.
    pub frames: Option<u32>,
}

/// The keyed connections and what each process's layout is.
#[derive(Default)]
pub struct Keyed {
    // Fx: SipHash over the three tables was 4 % of the daemon's time under wrk.
    sessions: FxHashMap<u64, Session>,
    /// What connections read during their handshake, before their keys came: the records
    /// after the handshake's last may be among them (a server that reads ahead).
    early: FxHashMap<u64, Early>,
    layouts: FxHashMap<u32, Layout>,
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
            h2: event.frames.then(|| FrameWalk::new(event.role == Role::Client)),
            client: event.role == Role::Client,
            derived: Default::default(),
        };
        if early.whole && !session.client {
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
        session.derived = Default::default();
        *self.lost.entry(reason).or_default() += 1;
        // Per-call uprobes would not see a client's session better than its keys do.
        if reason.falls_back()
            && !session.client
            && !self.fall_backs.iter().any(|(tgid, _)| *tgid == session.tgid)
        {
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
        if let Some(walk) = &mut session.h2
            && !(event.frames && walk.next_cipher(event.direction(), event.seq))
        {
            self.lose(event.conn, LostReason::Framing); // a record lost: nothing decrypts after
            return None;
        }
        let tgid = session.tgid;
        // A client's session comes with its secrets: it neither needs the process's layout
        // nor teaches it (its first records are not a server's).
        let mut own = Layout::default();
        let layout = if session.client { &mut own } else { self.layouts.entry(tgid).or_default() };
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
        let plain = match (result, &mut session.h2) {
            (Ok(plain), Some(walk)) if plain.len > 0 => {
                frame_record(walk, plain, direction).map(|(p, n)| (p, Some(n)))
            }
            (Ok(plain), None) if !session.client && starts_http2(&plain, direction, session.wrote) => {
                Err(LostReason::Http2)
            }
            (other, _) => other.map(|p| (p, None)),
        };
        if direction == Direction::Out && plain.as_ref().is_ok_and(|(p, _)| p.len > 0) {
            session.wrote = true;
        }
        match plain {
            Ok((plain, _)) if plain.len == 0 => {
                session.carry = session.carry.merge(carry);
                None
            }
            Ok((plain, frames)) => Some(Plaintext {
                plain,
                carry: std::mem::take(&mut session.carry).merge(carry),
                direction,
                frames,
            }),
            Err(reason) => {
                self.lose(conn, reason);
                None
            }
        }
    }
}

/// An h2 session's call as the frame record the kernel makes of a clear-text one (its
/// number too); every byte of it must have been decrypted.
fn frame_record(
    walk: &mut FrameWalk,
    plain: Plain,
    direction: Direction,
) -> Result<(Plain, u32), LostReason> {
    if plain.head.len() != plain.len {
        return Err(LostReason::Framing);
    }
    let (kept, seq) = walk.record(direction, &plain.head);
    Ok((Plain { len: plain.len, head: kept, tail: Vec::new() }, seq))
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
