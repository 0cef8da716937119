//! The connection table: routes each socket event to its connection's HTTP state and turns
//! what comes out into metric updates.

use observer_common::{Call, Direction, Kind, Role};
use rustc_hash::FxHashMap;

use crate::{
    detect::{Detected, detect},
    events::Event,
    exchange::{Anomaly, RequestHead, Sink},
    http1::{HttpConn, Moved},
    http2::conn::{H2Conn, Peer, Record},
    label::{Labels, Tag},
    metrics::Metrics,
    peer::{self, Peers},
    route::{Router, Rules},
};

/// The kernel's socket table's default size (`--max-connections`).
const DEFAULT_CAPACITY: usize = observer_common::MAX_CONNECTIONS as usize;

/// A connection's protocol, and its state in it. A connection seen opening is told by its
/// first bytes (`detect`); one first seen mid-stream is taken as HTTP/1 until a request line
/// shows. HTTP/2 is followed where the kernel walks its frames (it saw the client preface or
/// the server's SETTINGS, and flags the records).
// Most entries are HTTP/1: boxing it would cost an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Proto {
    /// Seen opening, nothing moved yet.
    Unseen,
    Http1(HttpConn<Tag>),
    Http2(Box<H2Conn<Tag>>),
    /// Not followed: TLS records (the plaintext comes from the TLS library's hooks, if any),
    /// or HTTP/2 whose frames the kernel does not walk (the syscall hooks).
    Opaque(Detected),
}

impl Proto {
    /// What a new connection's first bytes (`event`'s) say it speaks; what is not followed
    /// is counted.
    fn detected(event: &Event<'_>, sink: &mut Sink<Tag>) -> Proto {
        let from_client = (event.role == Role::Server) == (event.direction() == Direction::In);
        match detect(from_client, event.head) {
            Detected::Http1 => Proto::Http1(HttpConn::new()),
            Detected::Tls => {
                sink.encrypted += 1;
                Proto::Opaque(Detected::Tls)
            }
            Detected::Http2 => {
                sink.anomalies.push(Anomaly::Http2);
                Proto::Opaque(Detected::Http2)
            }
        }
    }

    /// A connection whose data is new to us: from its start (`event.new_conn`), or mid-stream.
    fn opened(event: &Event<'_>, sink: &mut Sink<Tag>) -> Proto {
        if event.new_conn { Proto::detected(event, sink) } else { Proto::Http1(HttpConn::mid_stream()) }
    }

    /// The protocol `event` moves the connection to, if it changes.
    fn next(&mut self, event: &Event<'_>, sink: &mut Sink<Tag>) -> Option<Proto> {
        match self {
            Proto::Http2(_) if event.frames => None,
            // The kernel follows frames from here: from the client preface or the server's
            // SETTINGS, after an h2c `Upgrade` (whose request goes on as stream 1) or not.
            Proto::Http1(http) if event.frames => Some(Proto::Http2(Box::new(match http.take_h2c() {
                Some(upgrade) => H2Conn::upgraded(upgrade.tag, upgrade.start_ns),
                None => H2Conn::new(),
            }))),
            _ if event.frames => Some(Proto::Http2(Box::default())),
            Proto::Http2(_) => Some(Proto::opened(event, sink)),
            Proto::Unseen => Some(Proto::detected(event, sink)),
            // Ciphertext of this connection got out before its session was tied to it (a call
            // already under way when the uprobes were attached): the plaintext starts the
            // connection over.
            Proto::Opaque(Detected::Tls) if is_plaintext(event.call) => Some(Proto::opened(event, sink)),
            Proto::Http1(_) | Proto::Opaque(_) => None,
        }
    }

    fn on_close(self, sink: &mut Sink<Tag>) {
        match self {
            Proto::Http1(http) => http.on_close(sink),
            Proto::Http2(h2) => h2.on_close(sink),
            Proto::Unseen | Proto::Opaque(_) => {}
        }
    }

    /// Whether a quiet connection must stay in the table while its socket lives: requests
    /// wait on it, or (HTTP/2) its header tables would be lost with it.
    fn keep_while_open(&mut self, sink: &mut Sink<Tag>) -> bool {
        match self {
            Proto::Http1(http) => {
                http.on_idle(sink);
                http.has_waiting()
            }
            Proto::Http2(_) => true,
            Proto::Unseen | Proto::Opaque(_) => false,
        }
    }
}

/// One followed connection.
struct Entry {
    proto: Proto,
    /// The process that last moved bytes on it (ends it if it exits), and its fd there.
    tgid: u32,
    fd: i32,
    /// `Connections::clock` when the connection last had an event.
    last_active: u64,
    /// Seconds the connection waited for its first read (the kernel saw it open), until its
    /// first request is labelled and the wait recorded under that request's endpoint.
    wait: Option<f64>,
    /// Its first request has been read (and its wait recorded, or counted as missing).
    started: bool,
    /// The endpoint of the last response finished with TCP's accounting, and TCP's
    /// retransmit count at its last write: the segments retransmitted after it, until the
    /// connection's next write or its end, are that response's (its last send buffer's worth).
    tail: Option<(&'static str, u32)>,
    /// A connection the target opened (the client role): its peer's label.
    peer: Option<&'static str>,
}

pub struct Connections<'m> {
    /// Keyed by the kernel's connection key (socket cookie, or tgid and fd).
    table: FxHashMap<u64, Entry>,
    labels: Labels<'m>,
    sink: Sink<Tag>,
    /// Seconds-ish: advanced by `sweep`, which the daemon calls once a second.
    clock: u64,
    idle_after: u64,
    /// Most connections followed at once; beyond, new ones are counted and not followed.
    capacity: usize,
}

impl<'m> Connections<'m> {
    /// `idle_after`: sweeps (seconds) without events after which a connection is idle.
    pub fn new(metrics: &'m Metrics, router: Router, idle_after: u64) -> Self {
        Connections {
            table: FxHashMap::default(),
            labels: Labels::new(metrics, router),
            sink: Sink::default(),
            clock: 0,
            idle_after,
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// Labels for the targets' upstreams (`--peer-name`, `--max-peers`).
    pub fn with_peers(mut self, peers: Peers) -> Self {
        self.labels.peers = peers;
        self
    }

    /// The routes file's names for peers.
    pub fn name_peers(&mut self, names: &[(std::net::SocketAddr, String)]) {
        self.labels.peers.set_file_names(names);
    }

    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Room for a new connection, or count it as dropped.
    fn has_room(&self) -> bool {
        if self.table.len() < self.capacity {
            return true;
        }
        self.labels.handles.connection_dropped();
        false
    }

    pub fn set_rules(&mut self, rules: Rules) {
        self.labels.set_rules(rules);
    }

    /// Connections in the table.
    pub fn count(&self) -> usize {
        self.table.len()
    }

    pub fn handle(&mut self, event: &Event<'_>) {
        let key = event.conn;
        let clock = self.clock;
        let fresh = |proto| Entry {
            proto,
            tgid: event.tgid,
            fd: event.fd,
            last_active: clock,
            wait: event.wait_ns.map(|ns| ns as f64 / 1e9),
            started: false,
            tail: None,
            peer: None,
        };
        match event.kind {
            Kind::Open if event.role == Role::Client => {
                let Some(peer) = self.connected(event) else { return };
                if !self.table.contains_key(&key) && !self.has_room() {
                    return;
                }
                // Nothing waits to be read: the connection's wait is a server's.
                let entry = Entry { peer: Some(peer), wait: None, started: true, ..fresh(Proto::Unseen) };
                if let Some(old) = self.table.insert(key, entry) {
                    old.proto.on_close(&mut self.sink);
                }
            }
            Kind::Open => {
                if !self.table.contains_key(&key) && !self.has_room() {
                    return;
                }
                if let Some(old) = self.table.insert(key, fresh(Proto::Unseen)) {
                    old.proto.on_close(&mut self.sink); // fd reused without a close we saw
                }
            }
            Kind::Close => {
                if let Some(mut old) = self.table.remove(&key) {
                    old.proto.on_close(&mut self.sink);
                    old.tail = tail_of(&self.sink, old.tail);
                    settle(&mut old.tail, event, &mut self.labels);
                }
            }
            // Handled by the daemon, not a connection.
            Kind::Fork | Kind::Exec | Kind::Listen | Kind::Unlisten | Kind::Keys => {}
            Kind::Data => {
                if !self.table.contains_key(&key) && !self.has_room() {
                    return;
                }
                let client = event.role == Role::Client;
                let entry = self.table.entry(key).or_insert_with(|| {
                    let proto =
                        if event.new_conn { Proto::Unseen } else { Proto::Http1(HttpConn::mid_stream()) };
                    // A client connection whose connect record was lost.
                    let peer = client.then_some(peer::UNKNOWN);
                    Entry { peer, started: client, ..fresh(proto) }
                });
                if let Some(proto) = entry.proto.next(event, &mut self.sink) {
                    std::mem::replace(&mut entry.proto, proto).on_close(&mut self.sink);
                }
                entry.last_active = self.clock;
                entry.tgid = event.tgid;
                settle(&mut entry.tail, event, &mut self.labels);
                let (sink, labels) = (&mut self.sink, &mut self.labels);
                let reading = event.direction() == Direction::In;
                let mut first: Option<Tag> = None;
                let peer = entry.peer;
                let mut start = |head: RequestHead<'_>| {
                    let tag = match peer {
                        Some(peer) => labels.start_client(peer, head),
                        None => labels.start(head),
                    };
                    first.get_or_insert(tag);
                    tag
                };
                match &mut entry.proto {
                    Proto::Http2(h2) => {
                        let peer = match (event.role, reading) {
                            (Role::Server, true) | (Role::Client, false) => Peer::Client,
                            (Role::Server, false) | (Role::Client, true) => Peer::Server,
                        };
                        let wire = event.ret.max(0) as u64;
                        let record = Record {
                            peer,
                            ts_ns: event.ts_ns,
                            seq: event.seq,
                            kept: event.head,
                            wire,
                            tcp: event.tcp,
                        };
                        h2.on_record(record, sink, &mut start);
                    }
                    Proto::Unseen | Proto::Opaque(_) => {}
                    Proto::Http1(http) => {
                        if event.lost_before {
                            http.on_lost_events(sink);
                        }
                        let moved = Moved {
                            head: event.head,
                            tail: event.tail,
                            len: event.ret.max(0) as u64,
                            tcp: event.tcp,
                        };
                        // Requests go the way a server reads and a client writes.
                        if reading != client {
                            http.on_read(event.ts_ns, moved, sink, &mut start);
                        } else {
                            http.on_write(event.ts_ns, moved, sink);
                        }
                    }
                }
                entry.tail = tail_of(sink, entry.tail);
                if let Some(tag) = first
                    && !std::mem::replace(&mut entry.started, true)
                {
                    match (entry.wait.take(), tag.endpoint) {
                        (Some(wait), Some(endpoint)) => labels.handles.waited(endpoint, wait),
                        (Some(_), None) => {} // an ignored endpoint
                        (None, _) => labels.handles.wait_missing(),
                    }
                }
            }
        }
        self.flush();
    }

    /// A target's connect ended (a client `Kind::Open`): its time, or why it failed, by
    /// peer. The peer's label if it was established.
    fn connected(&mut self, event: &Event<'_>) -> Option<&'static str> {
        let peer = match peer::peer_of(event.head, event.port) {
            Some(addr) => {
                let (label, overflowed) = self.labels.peers.label(addr);
                if overflowed {
                    self.labels.client.peer_overflowed();
                }
                label
            }
            None => peer::UNKNOWN,
        };
        if event.ret < 0 {
            self.labels.client.connect_failed(peer, peer::failure_reason(event.ret));
            return None;
        }
        self.labels.client.connected(peer, event.wait_ns.unwrap_or(0) as f64 / 1e9);
        Some(peer)
    }

    /// Called once a second. Connections quiet for `idle_after`: a response whose end could
    /// not be seen ends at its last write; a connection with nothing in flight is dropped from
    /// the table (if it is used again it is picked up at its next request); one whose socket
    /// is gone (its close event was lost) has its requests abandoned, so in-flight never
    /// drifts. `still_open(conn, tgid, fd)` says whether the socket exists.
    pub fn sweep(&mut self, still_open: impl Fn(u64, u32, i32) -> bool) {
        self.clock += 1;
        let (clock, idle_after) = (self.clock, self.idle_after);
        let mut ended = Vec::new();
        for (&conn, entry) in self.table.iter_mut() {
            if clock - entry.last_active < idle_after {
                continue;
            }
            if !entry.proto.keep_while_open(&mut self.sink) || !still_open(conn, entry.tgid, entry.fd) {
                ended.push(conn);
            }
        }
        for key in ended {
            if let Some(entry) = self.table.remove(&key) {
                entry.proto.on_close(&mut self.sink);
            }
        }
        self.flush();
    }

    /// Ends every connection of `tgid` (the process exited: its sockets closed without close()).
    pub fn forget_process(&mut self, tgid: u32) {
        let keys: Vec<u64> =
            self.table.iter().filter(|(_, entry)| entry.tgid == tgid).map(|(&key, _)| key).collect();
        for key in keys {
            if let Some(entry) = self.table.remove(&key) {
                entry.proto.on_close(&mut self.sink);
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if self.sink.encrypted > 0 {
            self.labels.handles.encrypted_connections(std::mem::take(&mut self.sink.encrypted));
        }
        for anomaly in self.sink.anomalies.drain(..) {
            self.labels.handles.parse_error(anomaly.reason());
        }
        for finished in self.sink.finished.drain(..) {
            self.labels.finish(finished);
        }
    }
}

/// The connection's retransmit tail after `sink`'s responses: the last one answered with
/// TCP's accounting starts a new one.
fn tail_of(sink: &Sink<Tag>, tail: Option<(&'static str, u32)>) -> Option<(&'static str, u32)> {
    for f in sink.finished.iter().filter(|f| f.tcp.is_some()) {
        let retrans = f.tcp.map(|s| (s.first.retrans, s.last.retrans));
        tracing::debug!(status = ?f.status, ?retrans, "response's retransmit count at its first and last write");
    }
    let last = sink.finished.iter().rev().find_map(|f| match (f.tag.endpoint, f.status, f.tcp) {
        (Some(endpoint), Some(_), Some(span)) => Some((endpoint, span.last.retrans)),
        _ => None,
    });
    last.or(tail)
}

/// TCP's accounting in `event` ends the retransmit tail of the connection's last response.
fn settle(tail: &mut Option<(&'static str, u32)>, event: &Event<'_>, labels: &mut Labels<'_>) {
    if let Some(tcp) = event.tcp
        && let Some((endpoint, retrans)) = tail.take()
    {
        tracing::debug!(
            endpoint,
            from = retrans,
            to = tcp.retrans,
            "retransmits after a response's last write"
        );
        labels.handles.retransmitted(endpoint, crate::transfer::retransmits(retrans, tcp.retrans));
    }
}

/// Plaintext from a TLS library's calls (not the socket's bytes).
fn is_plaintext(call: Call) -> bool {
    matches!(call, Call::TlsRead | Call::TlsWrite)
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
