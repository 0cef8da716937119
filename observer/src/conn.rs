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
        let fresh = |proto| Entry {
            proto,
            tgid: event.tgid,
            fd: event.fd,
            last_active: self.clock,
            wait: event.wait_ns.map(|ns| ns as f64 / 1e9),
            started: false,
            tail: None,
        };
        match event.kind {
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
            // HTTP/1's decoder reads requests in what the process reads: the client role (its
            // own outbound connections) is not reported by the kernel yet.
            Kind::Data if event.role == Role::Client && !event.frames => {}
            Kind::Data => {
                if !self.table.contains_key(&key) && !self.has_room() {
                    return;
                }
                let entry = self.table.entry(key).or_insert_with(|| {
                    fresh(if event.new_conn { Proto::Unseen } else { Proto::Http1(HttpConn::mid_stream()) })
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
                let mut start = |head: RequestHead<'_>| {
                    let tag = labels.start(head);
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
                        if reading {
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
mod tests {
    use super::*;
    use crate::metrics::{EndpointLabels, ReasonLabels, RequestLabels};

    /// A connection table with default rules and a 30 s idle timeout.
    pub(super) fn connections(metrics: &Metrics) -> Connections<'_> {
        Connections::new(metrics, Router::new(Rules::default(), 10, 2), 30)
    }

    /// A fully captured data event by `call` on fd 5 of process 1.
    pub(super) fn event(call: Call, ts_ns: u64, head: &[u8]) -> Event<'_> {
        Event {
            ts_ns,
            kind: Kind::Data,
            call,
            role: Role::Server,
            ret: head.len() as i64,
            conn: observer_common::socket_key(1, 5),
            tgid: 1,
            fd: 5,
            child: 0,
            port: 0,
            lost_before: false,
            new_conn: false,
            wait_ns: None,
            frames: false,
            cipher: false,
            seq: 0,
            head,
            tail: b"",
            tcp: None,
        }
    }

    #[test]
    fn requests_reach_the_metrics_and_in_flight_returns_to_zero() {
        let metrics = Metrics::new();
        let mut conns = connections(&metrics);
        conns.handle(&Event { kind: Kind::Open, ..event(Call::None, 0, b"") });
        conns.handle(&event(Call::Recvfrom, 1_000, b"GET /boot/aa?x=1 HTTP/1.1\r\n\r\n"));
        assert_eq!(metrics.http.in_flight.get_or_create(&EndpointLabels { endpoint: "/boot/aa" }).get(), 1);
        conns.handle(&event(Call::Sendto, 2_000, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        conns.handle(&event(Call::Recvfrom, 3_000, b"BREW /boot/aa HTTP/1.1\r\n\r\n"));
        conns.handle(&Event { kind: Kind::Close, ..event(Call::None, 4_000, b"") });
        assert_eq!(metrics.http.in_flight.get_or_create(&EndpointLabels { endpoint: "/boot/aa" }).get(), 0);
        let ok = RequestLabels { endpoint: "/boot/aa", method: "GET", status: 200 };
        assert_eq!(metrics.http.requests.get_or_create(&ok).get(), 1);
        assert_eq!(
            metrics.health.incomplete.get_or_create(&EndpointLabels { endpoint: "/boot/aa" }).get(),
            1
        );
        assert_eq!(conns.count(), 0);
        let text = metrics.encode();
        assert!(text.contains(r#"http_request_duration_seconds_count{endpoint="/boot/aa"} 1"#), "{text}");
        assert!(!text.contains("x=1"));
    }

    #[test]
    fn a_responses_transfer_is_split_by_tcp_and_its_retransmits_run_until_the_next_write() {
        use crate::transfer::LimitLabels;
        use observer_common::TcpChrono;
        let metrics = Metrics::new();
        let mut conns = connections(&metrics);
        let tcp = |in_flight, rwnd_limited, retrans| {
            Some(TcpChrono { in_flight, rwnd_limited, retrans, srtt_us: 20_000, ..TcpChrono::default() })
        };
        let write = |ts_ns, head, tcp| Event { tcp, ..event(Call::Write, ts_ns, head) };
        conns.handle(&Event { kind: Kind::Open, ..event(Call::None, 0, b"") });
        conns.handle(&event(Call::Read, 1_000, b"GET /img HTTP/1.1\r\n\r\n"));
        conns.handle(&write(2_000, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", tcp(10, 0, 1)));
        // 1 s later: 50 ticks (0.2 s) in flight, 100 (0.4 s) window limited, 2 retransmits.
        conns.handle(&write(1_000_002_000, b"cd", tcp(60, 100, 3)));
        conns.handle(&event(Call::Read, 1_100_000_000, b"GET /img HTTP/1.1\r\n\r\n"));
        // Two more retransmits of the first response's last bytes before the next write.
        conns.handle(&write(1_200_000_000, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", tcp(60, 100, 5)));
        conns.handle(&Event {
            tcp: tcp(61, 100, 6),
            ..Event { kind: Kind::Close, ..event(Call::None, 1_300_000_000, b"") }
        });
        let seconds = |limited_by| {
            metrics.transfer.seconds.get_or_create(&LimitLabels { endpoint: "/img", limited_by }).get()
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(seconds("in_flight"), 0.2) && close(seconds("receiver_window"), 0.4));
        assert!(close(seconds("application"), 0.4) && seconds("send_buffer") == 0.0);
        let img = EndpointLabels { endpoint: "/img" };
        assert_eq!(
            metrics.transfer.retransmits.get_or_create(&img).get(),
            2 + 2 + 1,
            "during, after, at close"
        );
        let text = metrics.encode();
        assert!(text.contains(r#"http_response_rtt_seconds_count{endpoint="/img"} 2"#), "{text}");
    }

    #[test]
    fn plaintext_after_escaped_ciphertext_starts_the_connection_over() {
        let metrics = Metrics::new();
        let mut conns = connections(&metrics);
        conns.handle(&Event { new_conn: true, ..event(Call::Recv, 1, b"\x16\x03\x01\x02\x00\x01") });
        assert_eq!(metrics.health.encrypted_connections.get(), 1);
        conns.handle(&Event { new_conn: true, ..event(Call::TlsRead, 2, b"GET /t HTTP/1.1\r\n\r\n") });
        conns.handle(&event(Call::TlsWrite, 3, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        let ok = RequestLabels { endpoint: "/t", method: "GET", status: 200 };
        assert_eq!(metrics.http.requests.get_or_create(&ok).get(), 1);
    }

    #[test]
    fn http2_the_kernel_does_not_walk_is_counted_once_and_not_followed() {
        let metrics = Metrics::new();
        let mut conns = connections(&metrics);
        conns.handle(&Event { kind: Kind::Open, ..event(Call::None, 0, b"") });
        conns.handle(&event(Call::Write, 1, b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x80"));
        conns.handle(&event(Call::Read, 2, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        conns.handle(&event(Call::Read, 3, b"GET / HTTP/1.1\r\n\r\n"));
        assert_eq!(metrics.health.parse_errors.get_or_create(&ReasonLabels { reason: "http2" }).get(), 1);
        assert_eq!(metrics.http.in_flight.get_or_create(&EndpointLabels { endpoint: "/" }).get(), 0);
    }

    #[test]
    fn an_h2c_upgrade_is_one_request_answered_on_stream_1() {
        use crate::http2::frames::{KernelModel, PREFACE, encode, flag, kind};
        let metrics = Metrics::new();
        let mut conns = connections(&metrics);
        conns.handle(&Event { kind: Kind::Open, ..event(Call::None, 0, b"") });
        conns.handle(&event(Call::Read, 1_000, b"GET /up HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"));
        conns.handle(&event(Call::Writev, 2_000, b"HTTP/1.1 101 Switching Protocols\r\n\r\n"));
        let (mut client, mut server) = (KernelModel::client(), KernelModel::server());
        fn frames(ts_ns: u64, seq: u32, kept: &[u8], wire: u64) -> Event<'_> {
            Event { frames: true, seq, ret: wire as i64, ..event(Call::Writev, ts_ns, kept) }
        }
        let (kept, wire) = server.call(&encode(kind::SETTINGS, 0, 0, &[]));
        conns.handle(&frames(3_000, 0, &kept, wire));
        let (kept, wire) = client.call(&[PREFACE, &encode(kind::SETTINGS, 0, 0, &[])].concat());
        conns.handle(&Event { call: Call::Read, ..frames(4_000, 0, &kept, wire) });
        let mut response = encode(kind::HEADERS, flag::END_HEADERS, 1, &[0x88]); // :status 200
        response.extend(encode(kind::DATA, flag::END_STREAM, 1, b"hello"));
        let (kept, wire) = server.call(&response);
        conns.handle(&frames(5_000, 1, &kept, wire));
        let ok = RequestLabels { endpoint: "/up", method: "GET", status: 200 };
        assert_eq!(metrics.http.requests.get_or_create(&ok).get(), 1);
        assert_eq!(metrics.http.in_flight.get_or_create(&EndpointLabels { endpoint: "/up" }).get(), 0);
        let text = metrics.encode();
        assert!(!text.contains("status=\"101\""), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("observer_parse_errors_total{")), "{text}");
    }

    #[test]
    fn process_exit_ends_its_connections() {
        let metrics = Metrics::new();
        let mut conns = connections(&metrics);
        conns.handle(&event(Call::Read, 1, b"GET /a HTTP/1.1\r\n\r\n"));
        assert_eq!(conns.count(), 1);
        conns.forget_process(1);
        assert_eq!(conns.count(), 0);
        assert_eq!(metrics.http.in_flight.get_or_create(&EndpointLabels { endpoint: "/a" }).get(), 0);
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::tests::event;

    #[test]
    fn a_vanished_socket_with_requests_in_flight_is_closed_by_the_sweep() {
        let metrics = Metrics::new();
        let mut conns = Connections::new(&metrics, Router::new(Rules::default(), 10, 2), 1);
        conns.handle(&event(Call::Read, 1, b"GET /v HTTP/1.1\r\n\r\n"));
        conns.sweep(|_, _, _| true);
        assert_eq!(conns.count(), 1, "still open, request still waiting: kept");
        conns.sweep(|_, _, _| false);
        assert_eq!(conns.count(), 0);
        assert_eq!(metrics.http.in_flight.get_or_create(&EndpointLabels { endpoint: "/v" }).get(), 0);
        assert_eq!(metrics.health.incomplete.get_or_create(&EndpointLabels { endpoint: "/v" }).get(), 1);
    }

    #[test]
    fn the_table_is_capped() {
        let metrics = Metrics::new();
        let mut conns = Connections::new(&metrics, Router::new(Rules::default(), 10, 2), 30).with_capacity(3);
        for fd in 0..10 {
            conns.handle(&Event { kind: Kind::Open, fd, conn: fd as u64, ..event(Call::None, 1, b"") });
        }
        assert_eq!(conns.count(), 3);
        assert_eq!(metrics.health.connections_dropped.get(), 7);
    }

    use observer_common::Call;

    use super::*;
    use crate::metrics::{EndpointLabels, RequestLabels};

    #[test]
    fn idle_connections_leave_the_table_and_close_delimited_responses_end() {
        let metrics = Metrics::new();
        let mut conns = Connections::new(&metrics, Router::new(Rules::default(), 10, 2), 2);
        conns.handle(&event(Call::Read, 1, b"GET /s HTTP/1.1\r\n\r\n"));
        conns.handle(&event(Call::Write, 2, b"HTTP/1.1 200 OK\r\n\r\nstream"));
        conns.sweep(|_, _, _| true);
        assert_eq!(conns.count(), 1, "not idle yet");
        conns.sweep(|_, _, _| true);
        assert_eq!(conns.count(), 0);
        let ok = RequestLabels { endpoint: "/s", method: "GET", status: 200 };
        assert_eq!(metrics.http.requests.get_or_create(&ok).get(), 1);
        assert_eq!(metrics.http.in_flight.get_or_create(&EndpointLabels { endpoint: "/s" }).get(), 0);
    }
}
