use super::*;

/// Feeds whole byte strings (fully captured) and collects (target, status, start, end).
#[derive(Default)]
struct Harness {
    conn: HttpConn<String>,
    sink: Sink<String>,
}

impl Harness {
    fn mid_stream() -> Self {
        Harness { conn: HttpConn::mid_stream(), sink: Sink::default() }
    }

    fn read(&mut self, ts: u64, data: &[u8]) -> &mut Self {
        self.read_partial(ts, data, data.len() as u64)
    }

    /// A read that moved `len` bytes of which only `data` were captured.
    fn read_partial(&mut self, ts: u64, data: &[u8], len: u64) -> &mut Self {
        self.read_moved(ts, Moved { head: data, tail: &[], len, tcp: None })
    }

    fn read_moved(&mut self, ts: u64, moved: Moved<'_>) -> &mut Self {
        self.conn.on_read(ts, moved, &mut self.sink, &mut |h: RequestHead<'_>| {
            format!("{} {}", h.method, h.target.unwrap_or("?"))
        });
        self
    }

    fn write(&mut self, ts: u64, data: &[u8]) -> &mut Self {
        self.write_partial(ts, data, data.len() as u64)
    }

    fn write_partial(&mut self, ts: u64, data: &[u8], len: u64) -> &mut Self {
        self.write_moved(ts, Moved { head: data, tail: &[], len, tcp: None })
    }

    fn write_moved(&mut self, ts: u64, moved: Moved<'_>) -> &mut Self {
        self.conn.on_write(ts, moved, &mut self.sink);
        self
    }

    fn close(&mut self) -> &mut Self {
        std::mem::take(&mut self.conn).on_close(&mut self.sink);
        self
    }

    fn done(&self) -> Vec<(&str, Option<u16>, u64, u64)> {
        self.sink.finished.iter().map(|f| (f.tag.as_str(), f.status, f.start_ns, f.end_ns)).collect()
    }
}

const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn simple_request_and_response() {
    let mut h = Harness::default();
    h.read(10, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").write(20, OK_5);
    assert_eq!(h.done(), [("GET /a", Some(200), 10, 20)]);
    assert!(h.sink.anomalies.is_empty());
}

#[test]
fn request_split_across_reads_starts_at_first_read() {
    let mut h = Harness::default();
    h.read(10, b"GET /a HT").read(11, b"TP/1.1\r\nHost: x\r\n").read(12, b"\r\n");
    assert_eq!(h.conn.in_flight(), 1);
    h.write(30, OK_5);
    assert_eq!(h.done(), [("GET /a", Some(200), 10, 30)]);
}

#[test]
fn response_ends_at_the_write_with_its_last_byte() {
    let mut h = Harness::default();
    h.read(1, b"GET / HTTP/1.1\r\n\r\n")
        .write(2, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        .write(3, b"01234")
        .write_partial(4, b"", 5);
    assert_eq!(h.done(), [("GET /", Some(200), 1, 4)]);
}

#[test]
fn body_length_comes_from_the_syscall_not_the_capture() {
    let mut h = Harness::default();
    h.read(1, b"GET /big HTTP/1.1\r\n\r\n")
        .write_partial(2, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nxx", 500_000)
        .write_partial(3, b"", 499_000); // sendfile: nothing captured
    assert!(h.done().is_empty());
    let head_len = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".len() as u64;
    h.write_partial(4, b"", 1000 + head_len);
    assert_eq!(h.done(), [("GET /big", Some(200), 1, 4)]);
}

#[test]
fn pipelined_requests_in_one_read_are_answered_in_order() {
    let mut h = Harness::default();
    h.read(1, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\n");
    assert_eq!(h.conn.in_flight(), 3);
    let mut responses = Vec::new();
    responses.extend_from_slice(OK_5);
    responses.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    responses.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n");
    h.write(2, &responses);
    assert_eq!(
        h.done(),
        [("GET /1", Some(200), 1, 2), ("GET /2", Some(404), 1, 2), ("HEAD /3", Some(200), 1, 2)]
    );
}

#[test]
fn request_body_bytes_are_not_taken_for_requests() {
    let mut h = Harness::default();
    h.read(1, b"POST /up HTTP/1.1\r\nContent-Length: 20\r\n\r\nGET /not HTTP/1.1\r\n\r\n")
        .read(2, b"GET /next HTTP/1.1\r\n\r\n");
    assert_eq!(h.conn.in_flight(), 2);
    assert!(h.sink.anomalies.is_empty());
}

#[test]
fn chunked_request_body_is_followed() {
    let mut h = Harness::default();
    h.read(1, b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .read_partial(2, b"3e8\r\n", 5 + 1000 + 2)
        .read(3, b"0\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
    assert_eq!(h.conn.in_flight(), 2);
    assert!(h.sink.anomalies.is_empty(), "{:?}", h.sink.anomalies);
}

#[test]
fn chunked_response_ends_at_terminator() {
    let mut h = Harness::default();
    h.read(1, b"GET /c HTTP/1.1\r\n\r\n")
        .write(2, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        .write(3, b"4\r\nabcd\r\n")
        .write(4, b"0\r\n\r\n");
    assert_eq!(h.done(), [("GET /c", Some(200), 1, 4)]);
}

#[test]
fn interim_100_continue_does_not_end_the_request() {
    let mut h = Harness::default();
    h.read(1, b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .write(2, b"HTTP/1.1 100 Continue\r\n\r\n")
        .read(3, b"abc")
        .write(4, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.done(), [("POST /p", Some(201), 1, 4)]);
}

#[test]
fn no_body_statuses_and_head_end_at_the_head() {
    for (req, resp) in [
        (&b"HEAD / HTTP/1.1\r\n\r\n"[..], &b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"[..]),
        (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"),
        (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"),
    ] {
        let mut h = Harness::default();
        h.read(1, req).write(2, resp);
        assert_eq!(h.done().len(), 1, "{}", String::from_utf8_lossy(resp));
        assert_eq!(h.done()[0].3, 2);
    }
}

#[test]
fn close_delimited_response_ends_at_its_last_write() {
    let mut h = Harness::default();
    h.read(1, b"GET / HTTP/1.0\r\n\r\n").write(2, b"HTTP/1.0 200 OK\r\n\r\nsome").write(3, b"more");
    assert!(h.done().is_empty());
    h.close();
    assert_eq!(h.done(), [("GET /", Some(200), 1, 3)]);
}

#[test]
fn close_abandons_unanswered_requests() {
    let mut h = Harness::default();
    h.read(1, b"GET /x HTTP/1.1\r\n\r\n").close();
    assert_eq!(h.done(), [("GET /x", None, 1, 1)]);
}

#[test]
fn any_method_token_is_accepted() {
    let mut h = Harness::default();
    h.read(1, b"PROPFIND /dav HTTP/1.1\r\n\r\n").write(2, OK_5);
    assert_eq!(h.done(), [("PROPFIND /dav", Some(200), 1, 2)]);
}

#[test]
fn non_http_bytes_are_counted_and_the_connection_recovers() {
    let mut h = Harness::default();
    h.read(1, b"\x05\x01\x00garbage"); // a SOCKS5 greeting
    assert_eq!(h.sink.anomalies, [Anomaly::NotHttpRequest]);
    assert_eq!(h.conn.in_flight(), 0);
    h.read(2, b"GET /ok HTTP/1.1\r\n\r\n").write(3, OK_5);
    assert_eq!(h.done(), [("GET /ok", Some(200), 2, 3)]);
}

#[test]
fn an_h2c_upgrade_hands_its_request_over_as_stream_1() {
    let mut h = Harness::default();
    h.read(1, b"GET /up HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
        .write(2, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n");
    assert!(h.done().is_empty(), "the 101 is not the request's answer");
    assert!(h.sink.anomalies.is_empty(), "{:?}", h.sink.anomalies);
    assert_eq!(h.conn.take_h2c(), Some(H2cUpgrade { tag: "GET /up".to_string(), start_ns: 1 }));
    h.close();
    assert!(h.done().is_empty());
}

#[test]
fn an_h2c_upgrade_never_followed_as_http2_ends_as_a_101() {
    let mut h = Harness::default();
    h.read(1, b"GET /up HTTP/1.1\r\nUpgrade: websocket, H2C\r\n\r\n")
        .write(2, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        .write(3, b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        .close();
    assert_eq!(h.done(), [("GET /up", Some(101), 1, 3)]);
    assert_eq!(h.sink.anomalies, [Anomaly::Upgraded]);
}

#[test]
fn mid_stream_connection_waits_for_a_request_line() {
    let mut h = Harness::mid_stream();
    h.read(1, b"dy bytes of an earlier request").write(2, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.done().is_empty());
    assert!(h.sink.anomalies.is_empty());
    h.read(3, b"GET /later HTTP/1.1\r\n\r\n").write(4, OK_5);
    assert_eq!(h.done(), [("GET /later", Some(200), 3, 4)]);
}

#[test]
fn head_longer_than_the_capture_is_counted_and_still_answered() {
    let mut h = Harness::default();
    h.read_partial(1, b"GET /long HTTP/1.1\r\nCookie: aaaa", 4000).write(2, OK_5);
    assert_eq!(h.done(), [("GET /long", Some(200), 1, 2)]);
    assert_eq!(h.sink.anomalies, [Anomaly::TruncatedCapture]);
}

#[test]
fn lost_events_abandon_and_resync() {
    let mut h = Harness::default();
    h.read(1, b"GET /a HTTP/1.1\r\n\r\n");
    h.conn.on_lost_events(&mut h.sink);
    assert_eq!(h.done(), [("GET /a", None, 1, 1)]);
    h.write(2, OK_5); // the lost request's response: ignored
    h.read(3, b"GET /b HTTP/1.1\r\n\r\n").write(4, OK_5);
    assert_eq!(h.done()[1], ("GET /b", Some(200), 3, 4));
}

#[test]
fn upgrade_stops_following_the_connection() {
    let mut h = Harness::default();
    h.read(1, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .write(2, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        .read(3, b"\x81\x05hello")
        .write(4, b"\x81\x05hello");
    assert_eq!(h.done(), [("GET /ws", Some(101), 1, 2)]);
    assert_eq!(h.sink.anomalies, [Anomaly::Upgraded]);
}

#[test]
fn conflicting_content_lengths_are_rejected() {
    let mut h = Harness::default();
    h.read(1, b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(h.sink.anomalies, [Anomaly::NotHttpRequest]);
    assert_eq!(h.conn.in_flight(), 0);
}

#[test]
fn response_without_request_is_counted() {
    let mut h = Harness::default();
    h.write(1, OK_5);
    assert_eq!(h.sink.anomalies, [Anomaly::UnexpectedResponse]);
}

#[test]
fn mid_stream_resyncs_on_a_request_line_split_from_its_headers() {
    // hyper first reads 24 bytes (the length of the HTTP/2 preface), then the rest.
    let mut h = Harness::mid_stream();
    h.read(1, b"GET /api/status HTTP/1.1").read(2, b"\r\nHost: test\r\n\r\n");
    h.write_partial(3, b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n", 40 + 15);
    assert_eq!(h.done(), [("GET /api/status", Some(200), 1, 3)]);
}

#[test]
fn mid_stream_resyncs_on_a_method_sent_alone() {
    // Some clients send "GET " in one segment and the rest of the request in the next.
    let mut h = Harness::mid_stream();
    h.read(1, b"GET ").read(2, b"/x HTTP/1.1\r\nHost: test\r\n\r\n").write(3, OK_5);
    assert_eq!(h.done(), [("GET /x", Some(200), 1, 3)]);
}

#[test]
fn response_size_and_first_byte_are_recorded() {
    let mut h = Harness::default();
    h.read(1, b"GET / HTTP/1.1\r\n\r\n")
        .write(5, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        .write_partial(9, b"", 5);
    let f = &h.sink.finished[0];
    assert_eq!((f.first_byte_ns, f.end_ns), (Some(5), 9));
    assert_eq!(f.response_bytes, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".len() as u64 + 10);
}

#[test]
fn pipelined_responses_split_their_bytes() {
    let mut h = Harness::default();
    h.read(1, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    let mut both = OK_5.to_vec();
    both.extend_from_slice(OK_5);
    h.write(2, &both);
    let sizes: Vec<u64> = h.sink.finished.iter().map(|f| f.response_bytes).collect();
    assert_eq!(sizes, [OK_5.len() as u64; 2]);
}

/// node's `http` writes a chunked response as one writev: head, then size line, data and CRLF
/// of each chunk as separate iovecs, then the terminator.
#[test]
fn chunked_terminator_is_found_in_the_captured_tail() {
    let mut full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n186a0\r\n".to_vec();
    full.extend_from_slice(&[b'x'; 100_000]);
    full.extend_from_slice(b"\r\n3\r\nbye\r\n0\r\n\r\n");
    let len = full.len() as u64;
    // What the probe captures: the first 512 bytes across the iovecs, and the last 32.
    let moved = Moved { head: &full[..512], tail: &full[full.len() - 32..], len, tcp: None };
    let mut h = Harness::default();
    h.read(1, b"GET /chunked HTTP/1.1\r\n\r\n").write_moved(2, moved);
    assert_eq!(h.done(), [("GET /chunked", Some(200), 1, 2)]);
    assert!(h.sink.anomalies.is_empty(), "{:?}", h.sink.anomalies);
    assert_eq!(h.sink.finished[0].response_bytes, len);
}

#[test]
fn head_completed_by_the_tail_is_parsed() {
    // A 530-byte read: 512 captured at the start, the last 18 as the tail, nothing between.
    let mut req = b"GET /t HTTP/1.1\r\nX-Pad: ".to_vec();
    req.resize(526, b'a');
    req.extend_from_slice(b"\r\n\r\n");
    let mut h = Harness::default();
    h.read_moved(1, Moved { head: &req[..512], tail: &req[512..], len: req.len() as u64, tcp: None })
        .write(2, OK_5);
    assert_eq!(h.done(), [("GET /t", Some(200), 1, 2)]);
    assert!(h.sink.anomalies.is_empty(), "{:?}", h.sink.anomalies);
}

#[test]
fn idle_ends_a_response_whose_end_was_not_seen() {
    let mut h = Harness::default();
    h.read(1, b"GET / HTTP/1.1\r\n\r\n").write(2, b"HTTP/1.1 200 OK\r\n\r\nstreaming").write(3, b"more");
    h.conn.on_idle(&mut h.sink);
    assert_eq!(h.done(), [("GET /", Some(200), 1, 3)]);
}

#[test]
fn requests_in_the_uncaptured_middle_of_a_read_are_counted_as_lost_not_looped_on() {
    // Pipelined requests whose middle was not captured: the visible ones count, the rest are
    // reported, and the call returns (it once spun forever here).
    let one = b"GET /p HTTP/1.1\r\n\r\n";
    let mut h = Harness::default();
    h.read_partial(1, &[&one[..], &one[..]].concat(), one.len() as u64 * 10);
    assert_eq!(h.conn.in_flight(), 2);
    assert_eq!(h.sink.anomalies, [Anomaly::TruncatedCapture]);
    // Same for a response side gap at a boundary.
    let mut w = Harness::default();
    w.read(1, &[&one[..], &one[..]].concat()).write_partial(2, OK_5, OK_5.len() as u64 * 2);
    assert_eq!(w.done().len(), 1);
    assert_eq!(w.sink.anomalies, [Anomaly::TruncatedCapture]);
}

#[test]
fn a_malformed_chunked_request_body_is_counted_as_a_request_error() {
    let mut h = Harness::default();
    h.read(1, b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n").write(2, OK_5);
    assert_eq!(h.sink.anomalies, [Anomaly::NotHttpRequest], "the request's body, not a response");
    assert_eq!(h.done(), [("POST /up", Some(200), 1, 2)], "the request itself still counts");
}

#[test]
fn a_malformed_chunked_response_body_is_counted_as_a_response_error() {
    let mut h = Harness::default();
    h.read(1, b"GET /c HTTP/1.1\r\n\r\n")
        .write(2, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .close();
    assert_eq!(h.sink.anomalies, [Anomaly::NotHttpResponse]);
    assert_eq!(h.done(), [("GET /c", Some(200), 1, 2)], "ends at close, at its last write");
}
