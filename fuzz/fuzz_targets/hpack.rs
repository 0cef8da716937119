//! HPACK decoding of arbitrary header blocks (the input split into blocks at 0xfe): no
//! panic, decoded lists bounded, a decoder that believes it joined late never claims a field
//! that the decoder which saw everything decodes otherwise, and one that decodes only some
//! fields (as streams are followed) gives exactly those of the full decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::http2::hpack::{Decoder, MAX_LIST_SIZE, Text};

fuzz_target!(|data: &[u8]| {
    let (mut full, mut late, mut only) = (Decoder::new(), Decoder::joined_late(), Decoder::new());
    let keep = |name: &[u8]| matches!(name, b":path" | b":status" | b"date" | b"x");
    if let Some((&limit, _)) = data.split_first() {
        // Some inputs allow larger tables, as a SETTINGS frame would.
        let limit = usize::from(limit) * 512;
        full.set_limit(limit);
        late.set_limit(limit);
        only.set_limit(limit);
    }
    for block in data.split(|&b| b == 0xfe) {
        let (Ok(seen), Ok(guessed)) = (full.decode(block), late.decode(block)) else {
            return; // either is out of step from here on
        };
        // Skipped values are not Huffman-checked: a block that fails in full may pass here.
        if let Ok(some) = only.decode_only(block, &keep) {
            let wanted: Vec<_> = seen.fields.iter().filter(|f| f.name.as_bytes().is_some_and(keep)).collect();
            if !seen.truncated {
                assert_eq!(some.fields.iter().collect::<Vec<_>>(), wanted, "the kept fields");
            }
        } else {
            return;
        }
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
