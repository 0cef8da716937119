//! The connection table's tests: events in, metric updates out, without a kernel.

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

/// A client `Kind::Open`: the target's connect to 10.0.0.9:8080 ended with `ret`.
fn connect(ret: i64, head: &[u8; 16]) -> Event<'_> {
    Event {
        kind: Kind::Open,
        role: Role::Client,
        port: 8080,
        wait_ns: Some(250_000),
        ret,
        ..event(Call::None, 1, head)
    }
}

#[test]
fn a_client_connection_counts_what_it_writes_as_requests_of_its_peer() {
    use crate::peer::{FailureLabels, PeerLabels, PeerRequestLabels};
    let metrics = Metrics::new();
    let mut conns = connections(&metrics);
    let mut peer = [0u8; 16];
    peer[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 9]);
    conns.handle(&connect(0, &peer));
    let client = |e: Event<'static>| Event { role: Role::Client, ..e };
    conns.handle(&Event {
        new_conn: true,
        ..client(event(Call::Write, 2_000, b"GET /img?mac=aa HTTP/1.1\r\n\r\n"))
    });
    let labels = PeerLabels { peer: "10.0.0.9:8080" };
    assert_eq!(metrics.client.in_flight.get_or_create(&labels).get(), 1);
    conns.handle(&client(event(Call::Read, 5_002_000, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")));
    let answered = PeerRequestLabels { peer: "10.0.0.9:8080", method: "GET", status: 503 };
    assert_eq!(metrics.client.requests.get_or_create(&answered).get(), 1);
    assert_eq!(metrics.client.in_flight.get_or_create(&labels).get(), 0);
    let text = metrics.encode();
    assert!(text.contains("tcp_connect_duration_seconds_sum{peer=\"10.0.0.9:8080\"} 0.00025"), "{text}");
    // Nothing is served: the server's families stay empty.
    assert_eq!(text.matches("\nhttp_requests_total{").count(), 0);
    // A refused connect is counted, and no connection is made of it.
    conns.handle(&Event { conn: 99, ..connect(-111, &peer) });
    let refused = FailureLabels { peer: "10.0.0.9:8080", reason: "refused" };
    assert_eq!(metrics.client.connect_failures.get_or_create(&refused).get(), 1);
    assert_eq!(conns.count(), 1);
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
    assert_eq!(metrics.health.incomplete.get_or_create(&EndpointLabels { endpoint: "/boot/aa" }).get(), 1);
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
    assert_eq!(metrics.transfer.retransmits.get_or_create(&img).get(), 2 + 2 + 1, "during, after, at close");
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

mod sweep_tests {
    use super::event;

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
