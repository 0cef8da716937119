//! Endpoint classification of arbitrary targets and methods: no panic, labels stay printable
//! and bounded by the cap.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use observer::route::{Endpoint, Router, Rules};

const DRAGONFLY: &str = include_str!("../../examples/dragonfly-routes.toml");
const CAP: usize = 50;

static ROUTER: Mutex<Option<Router>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (method, target) = text.split_once(' ').unwrap_or(("GET", &text));
    let mut guard = ROUTER.lock().unwrap();
    let router = guard.get_or_insert_with(|| Router::new(Rules::parse("dragonfly", DRAGONFLY).unwrap(), CAP, 2));
    let (endpoint, _) = router.classify(method, target);
    if let Endpoint::Label(label) = endpoint {
        assert!(!label.is_empty() && label.len() <= 200, "{label:?}");
        assert!(label.bytes().all(|b| b.is_ascii_graphic()), "{label:?}");
    }
    assert!(router.label_count() <= CAP, "cap exceeded");
});
