use std::collections::HashSet;

use super::*;

const DRAGONFLY: &str = include_str!("../../../examples/dragonfly-routes.toml");

fn router(rules: &str, cap: usize) -> Router {
    Router::new(Rules::parse("test.toml", rules).unwrap(), cap, 2)
}

fn label(r: &mut Router, method: &str, target: &str) -> &'static str {
    match r.classify(method, target).0 {
        Endpoint::Label(l) => l,
        Endpoint::Ignored => "IGNORED",
    }
}

#[test]
fn dragonfly_routes_reproduce_the_seed_labels() {
    let mut r = router(DRAGONFLY, 100);
    for (target, expected) in [
        ("/boot/52:54:00:12:34:56", "boot"),
        ("/boot/52:54:00:12:34:56?arch=x86_64", "boot"),
        ("/ipxe/snponly.efi", "ipxe_artifact"),
        ("/pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux_config"),
        ("/debian/bookworm/linux", "boot_debian_asset"),
        ("/os/ubuntu-24.04/disk.raw", "os_image"),
        ("/images/rocky9.qcow2", "image"),
        ("/images", "image"),
        ("/api/v1/machines/42", "api"),
        ("/metrics", "infra"),
        ("/", "infra"),
        ("/health", "IGNORED"),
        ("http://dragonfly.local/boot/aa:bb:cc:dd:ee:ff", "boot"),
        ("/%62oot/aa:bb:cc:dd:ee:ff", "boot"), // percent-encoded 'b'
        ("/boot/a/b", "/boot/a"),              // no rule: `{mac}` is exactly one segment; heuristic label
    ] {
        assert_eq!(label(&mut r, "GET", target), expected, "{target}");
    }
}

#[test]
fn rule_syntax_matches_as_documented() {
    let rules = r#"
[[route]]
pattern = "/a/{x}/c"
endpoint = "axc"
[[route]]
pattern = "/a/*"
endpoint = "a-one"
methods = ["post"]
[[route]]
pattern = "/a/**"
endpoint = "a-any"
"#;
    let mut r = router(rules, 10);
    assert_eq!(label(&mut r, "GET", "/a/1/c"), "axc");
    assert_eq!(label(&mut r, "POST", "/a/1"), "a-one");
    assert_eq!(label(&mut r, "GET", "/a/1"), "a-any", "method filter");
    assert_eq!(label(&mut r, "GET", "/a"), "a-any", "** matches nothing too");
    assert_eq!(label(&mut r, "GET", "/a/1/c/d"), "a-any");
    assert_eq!(label(&mut r, "GET", "/b"), "/b", "heuristic when no rule matches");
}

#[test]
fn rule_errors_name_the_line() {
    for (text, line, needle) in [
        ("[[route]]\npattern = \"/x\"\n", 1, "needs an `endpoint`"),
        ("\n\n[[route]]\npattern = \"x\"\nendpoint = \"e\"\n", 3, "must start with '/'"),
        ("[[route]]\npattern = \"/**/x\"\nendpoint = \"e\"\n", 1, "may only end"),
        ("[[route]]\npattern = \"/a*b\"\nendpoint = \"e\"\n", 1, "mixes text"),
        ("[[route]]\npattern = \"/x\"\nendpoint = \"e\"\nignore = true\n", 1, "either"),
        ("[[route]]\npattern = \"/x\"\nendpont = \"e\"\n", 3, "unknown field"),
        ("[[route]]\npattern = \"/x\"\nendpoint = \"\"\n", 1, "printable"),
        ("[[route]\n", 1, ""),
    ] {
        let err = Rules::parse("r.toml", text).unwrap_err().to_string();
        assert!(err.starts_with(&format!("r.toml:{line}: ")), "{text:?} → {err}");
        assert!(err.contains(needle), "{text:?} → {err}");
    }
}

#[test]
fn heuristic_collapses_ids_and_keeps_names() {
    let mut r = router("", 1000);
    for (target, expected) in [
        ("/boot/52:54:00:12:34:56", "/boot/{id}"),
        ("/boot/52-54-00-12-34-56", "/boot/{id}"),
        ("/users/12345/profile", "/users/{id}"),
        ("/objects/deadbeefcafe", "/objects/{id}"),
        ("/objects/123e4567-e89b-12d3-a456-426614174000", "/objects/{id}"),
        ("/hosts/10.0.0.1", "/hosts/{id}"),
        ("/logs/2026-11-25", "/logs/{id}"),
        ("/logs/2026-11-25T10:00:00Z", "/logs/{id}"),
        ("/t/dGhpcyBpcyBhIHRva2VuMTIzNDU2", "/t/{id}"),
        ("/hello.world", "/hello.world"),
        ("/images/vmlinuz-6.1", "/images/vmlinuz-6.1"),
        ("/images/debian-12.qcow2", "/images/debian-12.qcow2"),
        ("/api/v1/users/7", "/api/v1"),
        ("/", "/"),
        ("/x?token=secret#frag", "/x"),
        ("/caf%C3%A9", "/{other}"),
    ] {
        assert_eq!(label(&mut r, "GET", target), expected, "{target}");
    }
    assert!(!looks_like_id("cafe"), "short hex words are names");
    assert!(!looks_like_id("release-notes"), "dashed words are names");
}

#[test]
fn ten_thousand_macs_are_one_label() {
    let mut r = router(DRAGONFLY, 100);
    let labels: HashSet<_> = (0..10_000u32)
        .map(|i| {
            let b = i.to_be_bytes();
            label(&mut r, "GET", &format!("/boot/52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]))
        })
        .collect();
    assert_eq!(labels, HashSet::from(["boot"]));
    let mut bare = router("", 100);
    let labels: HashSet<_> = (0..10_000u32)
        .map(|i| label(&mut bare, "GET", &format!("/boot/52:54:00:00:{:02x}:{:02x}", i / 256 % 256, i % 256)))
        .collect();
    assert_eq!(labels, HashSet::from(["/boot/{id}"]));
}

#[test]
fn a_million_random_paths_stay_within_the_cap() {
    let cap = 100;
    let mut r = router("", cap);
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-._~%/:";
    let mut labels = HashSet::new();
    let mut overflowed = 0u32;
    for _ in 0..1_000_000 {
        let len = 1 + next() % 40;
        let path: String = std::iter::once('/')
            .chain((0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char))
            .collect();
        let (endpoint, over) = r.classify("GET", &path);
        overflowed += u32::from(over);
        if let Endpoint::Label(l) = endpoint {
            labels.insert(l);
        }
    }
    assert!(labels.len() <= cap + 1, "{} labels", labels.len());
    assert!(labels.contains(OVERFLOW));
    assert!(overflowed > 0);
}

#[test]
fn remembered_targets_answer_as_a_fresh_classification_would() {
    let rules = "[[route]]\npattern = \"/a/*\"\nendpoint = \"a-post\"\nmethods = [\"POST\"]\n";
    let mut r = router(rules, 1);
    for _ in 0..3 {
        assert_eq!(label(&mut r, "POST", "/a/1"), "a-post");
        assert_eq!(label(&mut r, "GET", "/a/1"), "/a/{id}", "the method is part of what is remembered");
        // The cap (1) is reached: every repeat overflows, and says so, as the first did.
        assert_eq!(r.classify("GET", "/b/c"), (Endpoint::Label(OVERFLOW), true));
    }
    // New rules (SIGHUP) forget what was remembered.
    r.set_rules(Rules::parse("new.toml", "[[route]]\npattern = \"/b/**\"\nendpoint = \"b\"\n").unwrap());
    assert_eq!(r.classify("GET", "/b/c"), (Endpoint::Label("b"), false));
    assert_eq!(label(&mut r, "POST", "/a/1"), "/a/{id}");
}

#[test]
fn colliding_and_long_targets_are_classified_each_time() {
    let mut r = router("", 10_000);
    let long = format!("/long/{}", "x".repeat(RECENT_MAX_TARGET));
    // Far more targets than slots: every one evicts another and must still come out right.
    for round in 0..2 {
        for i in 0..(RECENT_SLOTS * 4) {
            assert_eq!(label(&mut r, "GET", &format!("/n{i}/x")), format!("/n{i}/x"), "round {round}");
        }
        assert_eq!(label(&mut r, "GET", &long), "/long/{other}");
    }
}

#[test]
fn peer_names_come_from_the_file_and_bad_ones_say_where() {
    let text = "[[peer]]\naddress = \"10.0.0.5:9000\"\nname = \"inventory\"\n";
    let mut rules = Rules::parse("r.toml", text).unwrap();
    assert_eq!(rules.take_peers(), vec![("10.0.0.5:9000".parse().unwrap(), "inventory".to_owned())]);
    let bad =
        "[[route]]\npattern = \"/a\"\nendpoint = \"a\"\n\n[[peer]]\naddress = \"10.0.0.5\"\nname = \"x\"\n";
    let e = Rules::parse("r.toml", bad).unwrap_err().to_string();
    assert!(e.starts_with("r.toml:5:"), "{e}");
}
