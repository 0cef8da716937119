//! Cost of endpoint classification, which runs once per request.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use observer::route::{Router, Rules};

const DRAGONFLY: &str = include_str!("../../examples/dragonfly-routes.toml");

fn classify(c: &mut Criterion) {
    let targets = [
        "/boot/52:54:00:12:34:56",
        "/images/rocky9.qcow2?token=abc",
        "/api/v1/machines/42",
        "/objects/123e4567-e89b-12d3-a456-426614174000",
        "/unknown/path/with/many/segments/12345",
    ];
    let mut with_rules = Router::new(Rules::parse("dragonfly", DRAGONFLY).unwrap(), 100, 2);
    c.bench_function("classify: dragonfly rules, 5 targets", |b| {
        b.iter(|| {
            for t in targets {
                black_box(with_rules.classify("GET", black_box(t)));
            }
        })
    });
    // Every request a different target (a boot storm of distinct MACs): the remembered
    // targets never help, so this is the cost of a miss.
    let macs: Vec<String> =
        (0..4096u32).map(|i| format!("/boot/52:54:00:00:{:02x}:{:02x}", i >> 8, i & 0xff)).collect();
    let mut next = macs.iter().cycle();
    let mut storm = Router::new(Rules::parse("dragonfly", DRAGONFLY).unwrap(), 100, 2);
    c.bench_function("classify: dragonfly rules, 5 distinct MACs", |b| {
        b.iter(|| {
            for t in next.by_ref().take(5) {
                black_box(storm.classify("GET", black_box(t)));
            }
        })
    });
    let mut heuristic = Router::new(Rules::default(), 100, 2);
    c.bench_function("classify: heuristic only, 5 targets", |b| {
        b.iter(|| {
            for t in targets {
                black_box(heuristic.classify("GET", black_box(t)));
            }
        })
    });
}

criterion_group!(benches, classify);
criterion_main!(benches);
