use std::path::{Path, PathBuf};

use super::*;

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
}

fn known(fields: &[Field]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|f| {
            let text = |t: &Text| String::from_utf8_lossy(t.as_bytes().expect("known")).into_owned();
            (text(&f.name), text(&f.value))
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// RFC 7541 C.3: three requests on one connection, without Huffman coding.
#[test]
fn decodes_the_rfc_request_examples() {
    let mut decoder = Decoder::new();
    let first = decoder.decode(&hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d")).unwrap();
    assert_eq!(
        known(&first.fields),
        pairs(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
    );
    let second = decoder.decode(&hex("8286 84be 5808 6e6f 2d63 6163 6865")).unwrap();
    assert_eq!(
        known(&second.fields)[3..],
        pairs(&[(":authority", "www.example.com"), ("cache-control", "no-cache")])
    );
    let third = decoder
        .decode(&hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"))
        .unwrap();
    assert_eq!(
        known(&third.fields),
        pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ])
    );
    assert_eq!(decoder.known_entries(), (3, false));
}

/// A story of the public conformance cases: (table size acknowledged before it, wire, fields).
type Case = (Option<usize>, Vec<u8>, Vec<(String, String)>);

fn stories_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/hpack-test-case")
}

fn stories() -> Vec<(PathBuf, Vec<Case>)> {
    let dir = stories_dir();
    let encoders = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the HPACK conformance stories are missing at {}: {e}", dir.display()));
    let mut out = Vec::new();
    for encoder in encoders.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
        for story in std::fs::read_dir(encoder.path()).unwrap().filter_map(Result::ok) {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(story.path()).unwrap()).unwrap();
            let cases = json["cases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|case| {
                    let fields = case["headers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|h| h.as_object().unwrap().iter())
                        .map(|(n, v)| (n.clone(), v.as_str().unwrap().to_owned()))
                        .collect();
                    let size = case.get("header_table_size").and_then(|s| s.as_u64()).map(|s| s as usize);
                    (size, hex(case["wire"].as_str().unwrap()), fields)
                })
                .collect();
            out.push((story.path(), cases));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every story of the five encoders decodes exactly, case after case on one decoder.
#[test]
fn every_conformance_story_decodes_exactly() {
    let stories = stories();
    assert!(stories.len() >= 150, "only {} stories found in {}", stories.len(), stories_dir().display());
    let mut blocks = 0;
    for (path, cases) in &stories {
        let mut decoder = Decoder::new();
        for (i, (size, wire, expected)) in cases.iter().enumerate() {
            if let Some(size) = size {
                decoder.set_limit(*size);
            }
            let block = decoder.decode(wire).unwrap_or_else(|e| panic!("{} case {i}: {e}", path.display()));
            assert!(!block.truncated && block.unresolved == 0);
            assert_eq!(&known(&block.fields), expected, "{} case {i}", path.display());
            blocks += 1;
        }
    }
    eprintln!("{blocks} header blocks in {} stories", stories.len());
}

/// Decoding only some fields gives exactly those of a full decode, and keeps the table in step.
#[test]
fn decoding_only_some_fields_gives_those_of_a_full_decode() {
    let keep = |name: &[u8]| matches!(name, b":path" | b":status" | b"content-type" | b"date");
    for (path, cases) in stories() {
        let (mut full, mut only) = (Decoder::new(), Decoder::new());
        for (i, (size, wire, _)) in cases.iter().enumerate() {
            if let Some(size) = size {
                full.set_limit(*size);
                only.set_limit(*size);
            }
            let mut expected = known(&full.decode(wire).unwrap().fields);
            expected.retain(|(name, _)| keep(name.as_bytes()));
            let block = only.decode_only(wire, &keep).unwrap();
            assert_eq!(known(&block.fields), expected, "{} case {i}", path.display());
            assert_eq!(block.unresolved, 0);
        }
        assert_eq!(full.known_entries(), only.known_entries(), "{}", path.display());
    }
}

/// Joining a story at any case: every field resolved is right, none is lost (unknown ones
/// are reported as such), and every field resolves once the table holds only entries seen.
#[test]
fn joining_a_story_late_resolves_what_can_be_known_and_nothing_wrong() {
    let (mut resolved, mut unresolved) = (0usize, 0usize);
    for (path, cases) in stories() {
        for start in [1, cases.len() / 2, cases.len().saturating_sub(1)] {
            let mut decoder = Decoder::joined_late();
            for (i, (size, wire, expected)) in cases.iter().enumerate().skip(start) {
                if let Some(size) = size {
                    decoder.set_limit(*size);
                }
                let block = decoder
                    .decode(wire)
                    .unwrap_or_else(|e| panic!("{} from {start}, case {i}: {e}", path.display()));
                assert_eq!(block.fields.len(), expected.len(), "{} case {i}", path.display());
                for (field, (name, value)) in block.fields.iter().zip(expected) {
                    if let Some(got) = field.name.as_bytes() {
                        assert_eq!(got, name.as_bytes(), "{} case {i}", path.display());
                    }
                    match field.value.as_bytes() {
                        Some(got) => {
                            assert_eq!(got, value.as_bytes(), "{} case {i}", path.display());
                            resolved += 1;
                        }
                        None => unresolved += 1,
                    }
                }
            }
        }
    }
    eprintln!("joined late: {resolved} fields resolved, {unresolved} not");
    assert!(resolved > 10 * unresolved, "most fields resolve: {resolved} vs {unresolved}");
}

#[test]
fn a_table_size_update_to_zero_brings_a_late_decoder_in_step() {
    let mut decoder = Decoder::joined_late();
    let block = decoder.decode(&hex("be")).unwrap(); // index 62: inserted before we joined
    assert_eq!(block.fields, vec![Field { name: Text::Unknown, value: Text::Unknown }]);
    assert_eq!(block.unresolved, 1);
    // Size 0 then back to 4096, then a literal indexed and its reference.
    let block = decoder.decode(&hex("20 3f e1 1f 4003 6b65 7901 76 be")).unwrap();
    assert_eq!(known(&block.fields), pairs(&[("key", "v"), ("key", "v")]));
    assert_eq!(decoder.known_entries(), (1, false));
    assert_eq!(decoder.decode(&hex("bf")), Err(Error::Index(63)), "nothing older is left");
}

#[test]
fn a_late_decoder_knows_when_nothing_unknown_can_be_left() {
    let mut decoder = Decoder::joined_late();
    // Size update to 64: one 36-byte entry leaves no room (32 bytes) for any other.
    let block = decoder.decode(&hex("3f21 4003 6b65 7901 76")).unwrap();
    assert_eq!(known(&block.fields), pairs(&[("key", "v")]));
    assert_eq!(decoder.known_entries(), (1, false));
}

#[test]
fn an_insertion_with_an_unknown_name_makes_the_table_unknown() {
    let mut decoder = Decoder::joined_late();
    decoder.decode(&hex("4003 6b65 7901 76")).unwrap(); // key: v, known, at 62
    // Literal indexed whose name is index 63 (unknown): its size is unknown.
    let block = decoder.decode(&hex("7f00 0178")).unwrap();
    assert_eq!(block.fields, vec![Field { name: Text::Unknown, value: Text::Known(b"x".to_vec()) }]);
    assert_eq!(decoder.known_entries(), (0, true));
    let block = decoder.decode(&hex("bf")).unwrap();
    assert_eq!(block.unresolved, 1, "key: v may have been evicted: not claimed");
}

#[test]
fn bad_blocks_are_errors() {
    let new = Decoder::new;
    assert_eq!(new().decode(&hex("80")), Err(Error::Index(0)));
    assert_eq!(new().decode(&hex("be")), Err(Error::Index(62)), "an empty table, seen from the start");
    assert_eq!(new().decode(&hex("ff ff ff ff ff ff ff 7f")), Err(Error::Integer));
    assert_eq!(new().decode(&hex("ff 80 80 80 80 80 80 80 80 80 80 01")), Err(Error::Integer));
    assert_eq!(new().decode(&hex("41")), Err(Error::Truncated));
    assert_eq!(new().decode(&hex("410f 7777")), Err(Error::Truncated), "a string longer than the block");
    assert_eq!(new().decode(&hex("4181 ff")), Err(Error::Huffman));
    assert_eq!(new().decode(&hex("3fe2 1f")), Err(Error::TableSize { size: 4097, limit: 4096 }));
    assert_eq!(new().decode(&hex("82 20")), Err(Error::LateTableSizeUpdate));
    let mut big = Decoder::new();
    big.set_limit(1 << 20);
    assert_eq!(big.decode(&hex("3fe2 ff03")), Err(Error::TableSize { size: 65_537, limit: MAX_TABLE_SIZE }));
}

/// A few bytes of indexes into one large entry do not decode to megabytes.
#[test]
fn an_hpack_bomb_is_cut_at_the_list_limit() {
    let mut block = hex("40 01 62 7f a1 1e"); // literal indexed, name "b", value of 4000 bytes
    block.extend(std::iter::repeat_n(b'x', 4000));
    block.extend(std::iter::repeat_n(0xbe, 10_000)); // index 62, ten thousand times
    let decoded = Decoder::new().decode(&block).unwrap();
    assert!(decoded.truncated);
    let size: usize = decoded.fields.iter().map(|f| f.name.len() + f.value.len() + 32).sum();
    assert!(size <= MAX_LIST_SIZE, "{size}");
    assert_eq!(decoded.fields.len(), MAX_LIST_SIZE / (4000 + 1 + 32));
}

/// Every prefix of every RFC example decodes or fails cleanly, never panics.
#[test]
fn truncated_blocks_never_panic() {
    let wire = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
    for len in 0..wire.len() {
        let _ = Decoder::joined_late().decode(&wire[..len]);
        let _ = Decoder::new().decode(&wire[..len]);
    }
}
