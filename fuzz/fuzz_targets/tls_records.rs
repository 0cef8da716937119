//! A keyed TLS stream over arbitrary bytes, copied whole and split into calls at the first
//! byte's step: no panic, and the same plaintext however the bytes are split. Then the same
//! bytes sealed into records (the second byte picks the suite, chunks of the input become
//! records): their plaintext comes back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::tls::{
    keys::{Suite, TrafficKeys},
    records::Stream,
};

/// The plaintext of `calls` fed in order (each copied whole), or where it failed.
fn plaintext(keys: &TrafficKeys, calls: &[&[u8]]) -> Result<Vec<u8>, usize> {
    let mut stream = Stream::new(keys.clone(), 0);
    let mut plain = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        let got = stream.call(call.len(), call, &[]).map_err(|_| i)?;
        assert_eq!(got.len, got.head.len(), "a call copied whole decrypts whole");
        plain.extend_from_slice(&got.head);
    }
    Ok(plain)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let Some((&pick, bytes)) = rest.split_first() else { return };
    let suite = Suite::ALL[usize::from(pick) % 3];
    let keys = TrafficKeys::new(suite, &[7u8; 48]).expect("keys");
    let step = usize::from(step).max(1);
    let chunks: Vec<&[u8]> = bytes.chunks(step).collect();
    let whole = plaintext(&keys, &[bytes]);
    if let Ok(whole) = &whole {
        assert_eq!(plaintext(&keys, &chunks).as_ref(), Ok(whole), "split every {step} bytes");
    }
    // Valid records: each chunk of the input, sealed as application data.
    let mut wire = Vec::new();
    for (seq, chunk) in bytes.chunks(usize::from(pick).max(1) * 64).enumerate() {
        let mut inner = chunk.to_vec();
        inner.push(23);
        wire.extend(keys.seal(seq as u64, &inner));
    }
    let calls: Vec<&[u8]> = wire.chunks(step).collect();
    assert_eq!(plaintext(&keys, &calls).as_deref(), Ok(bytes), "sealed records");
});
