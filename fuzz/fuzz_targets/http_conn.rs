//! The HTTP/1.x state machine under arbitrary event sequences: reads, writes (with captured
//! heads and tails shorter than what moved), lost events and close, in any order. It must
//! never panic, and every request it starts must end exactly once: in-flight cannot drift.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::{
    exchange::Sink,
    http1::{HttpConn, Moved},
};

fuzz_target!(|data: &[u8]| {
    let mut conn: HttpConn<u32> = if data.first().is_some_and(|b| b & 1 == 1) { HttpConn::mid_stream() } else { HttpConn::new() };
    let mut sink = Sink::default();
    let mut started = 0u32;
    let mut rest = data.get(1..).unwrap_or_default();
    let mut ts = 0;
    // Each op: kind, extra uncaptured length (u16), captured length, tail length, then bytes.
    while rest.len() >= 5 {
        let (kind, gap, take, tail) = (rest[0], u16::from_le_bytes([rest[1], rest[2]]), rest[3] as usize, rest[4] as usize);
        rest = &rest[5..];
        let take = take.min(rest.len());
        let (bytes, after) = rest.split_at(take);
        rest = after;
        let tail = tail.min(bytes.len()).min(32);
        let (head, tail) = bytes.split_at(bytes.len() - tail);
        let moved = Moved { head, tail, len: (head.len() + tail.len()) as u64 + u64::from(gap) * u64::from(!tail.is_empty() || kind & 8 != 0), tcp: None };
        ts += 1;
        match kind % 5 {
            0 | 1 => conn.on_read(ts, moved, &mut sink, &mut |_| {
                started += 1;
                started
            }),
            2 | 3 => conn.on_write(ts, moved, &mut sink),
            _ => conn.on_lost_events(&mut sink),
        }
        if kind & 0x80 != 0 {
            conn.on_idle(&mut sink);
        }
    }
    conn.on_close(&mut sink);
    let mut ended: Vec<u32> = sink.finished.iter().map(|f| f.tag).collect();
    assert_eq!(ended.len() as u32, started, "every started request ends once");
    ended.sort_unstable();
    assert!(ended.iter().copied().eq(1..=started), "no request ends twice");
    for f in &sink.finished {
        assert!(f.end_ns >= f.start_ns || f.status.is_none(), "a completed request ends after it starts");
    }
});
