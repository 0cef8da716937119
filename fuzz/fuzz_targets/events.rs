//! Ring-buffer records from arbitrary bytes, dispatched as the daemon does (`run.rs`): keys
//! and ciphertext to the keyed-TLS follower (session discovery: which record, suite and
//! number open a stream), its plaintext and everything else to the connection table.
//! `decode` never panics and keeps a record's captured bytes inside it; the follower and the
//! table (HTTP/1, HTTP/2, opens, closes, either role, in any order, on reused keys) never
//! panic, and the table ends with no connection once every one is swept away. One table serves every input,
//! as in the daemon: its router interns each label for good, bounded by its cap.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use observer::{
    conn::Connections,
    events::decode,
    metrics::Metrics,
    route::{Router, Rules},
    tls::Keyed,
};
use observer_common::Kind;

thread_local! {
    static CONNS: RefCell<Connections<'static>> = RefCell::new({
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        Connections::new(metrics, Router::new(Rules::default(), 10, 2), 1).with_capacity(16)
    });
}

fuzz_target!(|data: &[u8]| CONNS.with_borrow_mut(|conns| {
    let mut keyed = Keyed::default();
    // Records one after the other, each after its length (u16, little-endian).
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let (record, after) = rest[2..].split_at(len.min(rest.len() - 2));
        rest = after;
        let Ok(event) = decode(record) else { continue };
        assert!(event.head.len() + event.tail.len() <= record.len(), "captured bytes outside the record");
        if event.kind == Kind::Keys {
            if let Some(plaintext) = keyed.keys(&event) {
                conns.handle(&plaintext.event(&event));
            }
        } else if event.cipher {
            if let Some(plaintext) = keyed.data(&event) {
                conns.handle(&plaintext.event(&event));
            }
        } else {
            if event.kind == Kind::Close {
                keyed.close(event.conn);
            }
            conns.handle(&event);
        }
        assert!(conns.count() <= 16, "the table's capacity holds");
    }
    conns.sweep(|_, _, _| false);
    assert_eq!(conns.count(), 0, "a sweep of closed sockets empties the table");
}));
