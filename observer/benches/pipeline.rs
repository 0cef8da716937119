//! Daemon CPU per request: one keep-alive request and its response through the connection
//! table, HTTP framing, classification and the metric updates (no kernel involved). The
//! benchmark's "daemon µs per request" figure is this plus decoding and the ring buffer.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use observer::{
    conn::Connections,
    events::Event,
    metrics::Metrics,
    route::{Router, Rules},
};
use observer_common::{Call, Kind, Role};

const REQUEST: &[u8] = b"GET /api/status HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";

fn event(call: Call, fd: i32, ts_ns: u64, bytes: &'static [u8]) -> Event<'static> {
    Event {
        ts_ns,
        kind: Kind::Data,
        call,
        role: Role::Server,
        ret: bytes.len() as i64,
        conn: fd as u64,
        tgid: 1,
        fd,
        child: 0,
        port: 0,
        lost_before: false,
        new_conn: false,
        wait_ns: None,
        frames: false,
        cipher: false,
        seq: 0,
        head: bytes,
        tail: &[],
        // Writes on followed sockets carry TCP's accounting, as the kernel reports them.
        tcp: (call.direction() == observer_common::Direction::Out).then(observer_common::TcpChrono::default),
    }
}

fn request_and_response(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut conns = Connections::new(&metrics, Router::new(Rules::default(), 100, 2), 30);
    let mut ts = 0u64;
    c.bench_function("daemon: one keep-alive request and response", |b| {
        b.iter(|| {
            ts += 10_000;
            conns.handle(black_box(&event(Call::Recvfrom, 7, ts, REQUEST)));
            conns.handle(black_box(&event(Call::Writev, 7, ts + 5_000, RESPONSE)));
        })
    });
}

criterion_group!(benches, request_and_response);
criterion_main!(benches);
