//! An HTTP/2 connection under arbitrary frames from both peers, recorded the way the kernel
//! records them (its walk modelled by `KernelModel`, calls split anywhere, records now and
//! then lost): no panic, and every stream that starts ends exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::{
    exchange::Sink,
    http2::{
        conn::{H2Conn, Peer, Record},
        frames::{KernelModel, PREFACE, encode as frame},
    },
};

/// Header blocks that decode (so streams do start), besides arbitrary bytes.
const BLOCKS: [&[u8]; 5] = [
    &[0x82, 0x86, 0x84],                                 // GET / http
    &[0x83, 0x86, 0x04, 0x02, b'/', b'x', 0x0f, 0x10, 4, b'a', b'p', b'p', b'/'], // POST /x
    &[0x88],                                             // :status 200
    &[0x8d],                                             // :status 404
    &[0x48, 0x03, b'1', b'0', b'0'],                     // :status 100, indexed
];

fuzz_target!(|data: &[u8]| {
    let mut conn: H2Conn<u32> = H2Conn::new();
    let mut sink = Sink::default();
    let (mut client, mut server) = (KernelModel::client(), KernelModel::server());
    let mut seq = [0u32; 2];
    let mut started = 0u32;
    let mut ts = 0;
    let mut pending = [PREFACE.to_vec(), Vec::new()];
    let mut rest = data;
    // Each op: control byte, kind, flags, stream, length, then that many payload bytes.
    while rest.len() >= 5 {
        let (control, kind, flags, stream, len) = (rest[0], rest[1] % 11, rest[2], u32::from(rest[3] % 16), rest[4]);
        rest = &rest[5..];
        let peer = usize::from(control & 1);
        let payload: Vec<u8> = if control & 2 != 0 {
            BLOCKS[usize::from(len) % BLOCKS.len()].to_vec()
        } else {
            let n = usize::from(len).min(rest.len());
            let (payload, after) = rest.split_at(n);
            rest = after;
            payload.to_vec()
        };
        pending[peer].extend(frame(kind, flags, stream, &payload));
        if control & 4 == 0 {
            continue; // more frames in the same call
        }
        // One call, split where the control byte says.
        let bytes = std::mem::take(&mut pending[peer]);
        let split = (usize::from(control >> 3) * 7).min(bytes.len());
        for call in [&bytes[..split], &bytes[split..]] {
            if call.is_empty() {
                continue;
            }
            let model = if peer == 0 { &mut client } else { &mut server };
            let (kept, wire) = model.call(call);
            ts += 1;
            if control & 0x80 != 0 && control & 0x40 != 0 {
                seq[peer] += 1; // a lost record
            }
            let record = Record {
                peer: if peer == 0 { Peer::Client } else { Peer::Server },
                ts_ns: ts,
                seq: seq[peer],
                kept: &kept,
                wire,
                tcp: None,
            };
            seq[peer] += 1;
            conn.on_record(record, &mut sink, &mut |_| {
                started += 1;
                started
            });
        }
    }
    conn.on_close(&mut sink);
    let mut ended: Vec<u32> = sink.finished.iter().map(|f| f.tag).collect();
    assert_eq!(ended.len() as u32, started, "every started stream ends once");
    ended.sort_unstable();
    ended.dedup();
    assert_eq!(ended.len() as u32, started, "no stream ends twice");
});
