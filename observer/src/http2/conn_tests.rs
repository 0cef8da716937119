//! `H2Conn` against hand-made frames, recorded the way the kernel records them.

use super::{
    conn::{H2Conn, Peer, Record},
    frames::{KernelModel, PREFACE, encode as frame, flag, kind},
};
use crate::exchange::{Anomaly, Finished, GrpcEnd, RequestHead, Sink};

/// A header block of `:method GET`, `:scheme http` and `:path` (a literal, not indexed).
fn get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend(path.as_bytes());
    block
}

/// `get(path)` with `content-type: application/grpc` (literal, indexed name 31).
fn grpc_call(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend(path.as_bytes());
    block.extend([0x0f, 0x10, 16]);
    block.extend(b"application/grpc");
    block
}

/// A literal field, new name, not indexed.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut bytes = vec![0x00, name.len() as u8];
    bytes.extend(name.as_bytes());
    bytes.push(value.len() as u8);
    bytes.extend(value.as_bytes());
    bytes
}

const STATUS_200: u8 = 0x88;
const STATUS_404: u8 = 0x8d;

/// A connection under test: each call is one record of one peer, at a growing time.
struct Conn {
    h2: H2Conn<String>,
    client: KernelModel,
    server: KernelModel,
    seq: [u32; 2],
    ts: u64,
    sink: Sink<String>,
    started: Vec<String>,
}

impl Conn {
    fn new() -> Self {
        let mut conn = Conn::with(H2Conn::new());
        conn.client(&[PREFACE, &frame(kind::SETTINGS, 0, 0, &[])].concat());
        conn.server(&frame(kind::SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
        conn
    }

    /// `h2` before any record.
    fn with(h2: H2Conn<String>) -> Self {
        Conn {
            h2,
            client: KernelModel::client(),
            server: KernelModel::server(),
            seq: [0, 0],
            ts: 0,
            sink: Sink::default(),
            started: Vec::new(),
        }
    }

    fn record(&mut self, peer: Peer, bytes: &[u8]) {
        self.ts += 1_000;
        let (model, seq) = match peer {
            Peer::Client => (&mut self.client, &mut self.seq[0]),
            Peer::Server => (&mut self.server, &mut self.seq[1]),
        };
        let (kept, wire) = model.call(bytes);
        let this = *seq;
        *seq += 1;
        let started = &mut self.started;
        let mut start = |head: RequestHead<'_>| {
            let tag = format!("{} {}", head.method, head.target.unwrap_or("?"));
            started.push(tag.clone());
            tag
        };
        let record = Record { peer, ts_ns: self.ts, seq: this, kept: &kept, wire, tcp: None };
        self.h2.on_record(record, &mut self.sink, &mut start);
    }

    fn client(&mut self, bytes: &[u8]) {
        self.record(Peer::Client, bytes);
    }

    fn server(&mut self, bytes: &[u8]) {
        self.record(Peer::Server, bytes);
    }

    /// (tag, status) of the exchanges finished so far.
    fn finished(&mut self) -> Vec<(String, Option<u16>)> {
        self.sink.finished.drain(..).map(|f: Finished<String>| (f.tag, f.status)).collect()
    }
}

#[test]
fn concurrent_streams_end_each_on_their_own() {
    let mut c = Conn::new();
    let requests: Vec<u8> = [
        frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &get("/a")),
        frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &get("/b")),
        frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 5, &get("/c")),
    ]
    .concat();
    c.client(&requests);
    assert_eq!(c.started, ["GET /a", "GET /b", "GET /c"]);
    // Responses out of order, a body split across writes, one stream reset.
    let mut out = frame(kind::HEADERS, flag::END_HEADERS, 3, &[STATUS_404]);
    out.extend(frame(kind::DATA, flag::END_STREAM, 3, b"gone"));
    out.extend(frame(kind::HEADERS, flag::END_HEADERS, 1, &[STATUS_200]));
    let body = frame(kind::DATA, flag::END_STREAM, 1, &[7; 1000]);
    out.extend(&body[..100]);
    c.server(&out);
    assert_eq!(c.finished(), [("GET /b".to_owned(), Some(404))]);
    c.server(&body[100..]);
    assert_eq!(c.finished(), [("GET /a".to_owned(), Some(200))]);
    c.client(&frame(kind::RST_STREAM, 0, 5, &[0, 0, 0, 8]));
    assert_eq!(c.finished(), [("GET /c".to_owned(), None)]);
    assert!(!c.h2.has_waiting());
    assert!(c.sink.anomalies.is_empty());
}

#[test]
fn after_an_h2c_upgrade_stream_1_is_the_upgrading_request_and_the_server_may_answer_first() {
    let mut c = Conn::with(H2Conn::upgraded("GET /up".to_owned(), 7));
    // The server's SETTINGS and stream 1's response, before the client's preface is read.
    let mut out = frame(kind::SETTINGS, 0, 0, &[]);
    out.extend(frame(kind::HEADERS, flag::END_HEADERS, 1, &[STATUS_200]));
    out.extend(frame(kind::DATA, flag::END_STREAM, 1, b"hello"));
    c.server(&out);
    let done: Vec<_> = c.sink.finished.drain(..).map(|f| (f.tag, f.status, f.start_ns)).collect();
    assert_eq!(done, [("GET /up".to_owned(), Some(200), 7)]);
    c.client(&[PREFACE, &frame(kind::SETTINGS, 0, 0, &[])].concat());
    c.client(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &get("/next")));
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &[STATUS_404]));
    assert_eq!(c.finished(), [("GET /next".to_owned(), Some(404))]);
    assert!(c.sink.anomalies.is_empty(), "{:?}", c.sink.anomalies);
}

#[test]
fn informational_heads_do_not_end_a_stream_and_continuation_frames_join_the_block() {
    let mut c = Conn::new();
    let block = get("/upload");
    c.client(&frame(kind::HEADERS, 0, 1, &block[..3]));
    c.client(&frame(kind::CONTINUATION, flag::END_HEADERS, 1, &block[3..]));
    assert_eq!(c.started, ["GET /upload"]);
    let mut continue_100 = vec![0x48, 3];
    continue_100.extend(b"100");
    c.server(&frame(kind::HEADERS, flag::END_HEADERS, 1, &continue_100));
    assert!(c.finished().is_empty(), "100 Continue is not the response");
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &[STATUS_200]));
    assert_eq!(c.finished(), [("GET /upload".to_owned(), Some(200))]);
}

#[test]
fn grpc_outcomes_come_from_trailers_trailers_only_responses_and_resets() {
    let mut c = Conn::new();
    for id in [1, 3, 5, 7] {
        c.client(&frame(kind::HEADERS, flag::END_HEADERS, id, &grpc_call("/pkg.Svc/Get")));
    }
    // 1: OK in the trailers after a message; 3: Trailers-Only NotFound; 5: reset; 7: no status
    // but a message.
    c.server(&frame(kind::HEADERS, flag::END_HEADERS, 1, &[STATUS_200]));
    c.server(&frame(kind::DATA, 0, 1, &[0, 0, 0, 0, 2, 8, 1]));
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &literal("grpc-status", "0")));
    let mut only = vec![STATUS_200];
    only.extend(literal("grpc-status", "5"));
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &only));
    c.server(&frame(kind::RST_STREAM, 0, 5, &[0, 0, 0, 8]));
    let mut message = vec![STATUS_200];
    message.extend(literal("grpc-message", "boom"));
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 7, &message));
    let ends: Vec<Option<GrpcEnd>> = c.sink.finished.iter().map(|f| f.grpc).collect();
    assert_eq!(
        ends,
        [Some(GrpcEnd::Status(0)), Some(GrpcEnd::Status(5)), Some(GrpcEnd::Reset), Some(GrpcEnd::Unknown)]
    );
}

#[test]
fn a_lost_record_gives_up_the_connection_and_abandons_its_streams() {
    let mut c = Conn::new();
    c.client(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &get("/a")));
    c.seq[1] += 1; // a server record lost
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &[STATUS_200]));
    assert_eq!(c.finished(), [("GET /a".to_owned(), None)]);
    assert_eq!(c.sink.anomalies, [Anomaly::Http2Frames]);
    c.client(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &get("/b")));
    assert_eq!(c.started.len(), 1, "nothing more is followed");
}

#[test]
fn bad_input_is_an_anomaly_not_a_panic() {
    let cases: [(&[u8], Anomaly); 3] = [
        (&frame(kind::HEADERS, flag::END_HEADERS, 2, &get("/even")), Anomaly::Http2Streams),
        (
            &frame(kind::HEADERS, flag::END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Anomaly::Http2Hpack,
        ),
        (&frame(kind::CONTINUATION, flag::END_HEADERS, 1, &[0x82]), Anomaly::Http2Frames),
    ];
    for (bytes, anomaly) in cases {
        let mut c = Conn::new();
        c.client(bytes);
        assert_eq!(c.sink.anomalies, [anomaly]);
    }
    let mut c = Conn::new();
    c.client(&frame(kind::HEADERS, flag::END_HEADERS, 5, &get("/a")));
    c.client(&frame(kind::HEADERS, flag::END_HEADERS, 3, &get("/b")));
    assert_eq!(c.sink.anomalies, [Anomaly::Http2Streams], "stream ids going backwards");
    assert_eq!(c.finished(), [("GET /a".to_owned(), None)]);
}

#[test]
fn a_connection_joined_late_counts_requests_and_labels_unknown_paths_unknown() {
    let mut c = Conn {
        h2: H2Conn::new(),
        client: KernelModel::server(), // no preface: the kernel found whole frames mid-stream
        server: KernelModel::server(),
        seq: [0, 0],
        ts: 0,
        sink: Sink::default(),
        started: Vec::new(),
    };
    // Index 62 is a table entry from before we joined; 0x04 is a literal `:path`.
    c.client(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 41, &[0x82, 0x86, 0xbe]));
    c.client(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 43, &get("/k")));
    assert_eq!(c.started, ["GET ?", "GET /k"]);
    assert_eq!(c.sink.anomalies, [Anomaly::Http2PathUnknown]);
    // A response to a stream from before we joined is passed over; ours end.
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 39, &[STATUS_200]));
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 41, &[STATUS_200]));
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 43, &[STATUS_404]));
    assert_eq!(c.finished(), [("GET ?".to_owned(), Some(200)), ("GET /k".to_owned(), Some(404))]);
}

#[test]
fn streams_above_the_servers_goaway_are_not_requests_and_records_after_the_end_are_left() {
    let mut c = Conn::with(H2Conn::upgraded("GET /up".to_owned(), 7));
    c.server(&frame(kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    c.client(&[PREFACE, &frame(kind::SETTINGS, 0, 0, &[])].concat());
    c.server(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &[STATUS_200]));
    // Apache's idle GOAWAY (last stream 1, NO_ERROR, debug data), then the client's next
    // request, which it will never answer.
    c.server(&frame(kind::GOAWAY, 0, 0, b"\0\0\0\x01\0\0\0\0timeout"));
    c.client(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &get("/refused")));
    assert_eq!(c.finished(), [("GET /up".to_owned(), Some(200))]);
    assert_eq!(c.started, Vec::<String>::new(), "stream 3 is not a request of the server");
    assert!(!c.h2.has_waiting());
    assert!(c.sink.anomalies.is_empty(), "{:?}", c.sink.anomalies);

    // The same read reaching a fresh entry (the end was reported at the server's shutdown):
    // its number says it is not the connection's first.
    let mut late = Conn::with(H2Conn::new());
    late.seq = [2, 0];
    late.client = KernelModel::server(); // no preface to pass over
    late.client(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &get("/refused")));
    assert!(late.started.is_empty() && late.sink.anomalies.is_empty(), "{:?}", late.sink.anomalies);
}

#[test]
fn grpc_calls_cut_by_the_connections_end_are_canceled_and_end_at_its_last_record() {
    let mut c = Conn::new();
    c.client(&frame(kind::HEADERS, flag::END_HEADERS, 1, &grpc_call("/pkg.Boot/Watch")));
    c.client(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &get("/plain")));
    c.server(&frame(kind::HEADERS, flag::END_HEADERS, 1, &[STATUS_200]));
    let last = c.ts + 1_000;
    c.server(&frame(kind::DATA, 0, 1, b"\0\0\0\0\x01x"));
    std::mem::take(&mut c.h2).on_close(&mut c.sink);
    let mut ends: Vec<_> = c.sink.finished.iter().map(|f| (f.tag.clone(), f.grpc, f.end_ns)).collect();
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        ends,
        [
            ("GET /plain".to_owned(), None, last),
            ("POST /pkg.Boot/Watch".to_owned(), Some(GrpcEnd::Reset), last)
        ]
    );
}
