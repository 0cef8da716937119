//! HPACK decoding of arbitrary header blocks (the input split into blocks at 0xfe): no
//! panic, decoded lists bounded, and a decoder that believes it joined late never claims a
//! field that the decoder which saw everything decodes otherwise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::http2::hpack::{Decoder, MAX_LIST_SIZE, Text};

fuzz_target!(|data: &[u8]| {
    let (mut full, mut late) = (Decoder::new(), Decoder::joined_late());
    if let Some((&limit, _)) = data.split_first() {
        // Some inputs allow larger tables, as a SETTINGS frame would.
        let limit = usize::from(limit) * 512;
        full.set_limit(limit);
        late.set_limit(limit);
    }
    for block in data.split(|&b| b == 0xfe) {
        let (Ok(seen), Ok(guessed)) = (full.decode(block), late.decode(block)) else {
            return; // either is out of step from here on
        };
        let size: usize = seen.fields.iter().map(|f| len(&f.name) + len(&f.value) + 32).sum();
        assert!(size <= MAX_LIST_SIZE, "{size}");
        assert_eq!(seen.unresolved, 0, "a decoder that saw everything resolves everything");
        assert_eq!(seen.fields.len(), guessed.fields.len());
        for (seen, guessed) in seen.fields.iter().zip(&guessed.fields) {
            for (truth, claim) in [(&seen.name, &guessed.name), (&seen.value, &guessed.value)] {
                if let Text::Known(claim) = claim {
                    assert_eq!(truth.as_bytes(), Some(claim.as_slice()));
                }
            }
        }
    }
});

fn len(text: &Text) -> usize {
    text.as_bytes().map_or(0, <[u8]>::len)
}
