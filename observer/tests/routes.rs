//! Endpoint labels on a real server: thousands of distinct ids stay a handful of labels,
//! `ignore` rules drop requests, and SIGHUP reloads the rules (a bad file keeps the old ones).

mod common;

use std::process::Command;

use common::*;

const DRAGONFLY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/dragonfly-routes.toml");

fn sighup(pid: u32) {
    let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

#[test]
fn two_thousand_ids_make_a_handful_of_labels() {
    require_root();
    require_command("curl");
    let (server, addr) = start_demo_server();
    let dir = TempDir::new("routes");
    let routes = dir.path().join("routes.toml");
    std::fs::copy(DRAGONFLY, &routes).unwrap();
    let observer = Observer::on(&[server.pid()]).args(&["--routes", routes.to_str().unwrap()]).start();

    let macs: Vec<String> = (0..1000u32)
        .map(|i| {
            format!("http://{addr}/boot/52:54:00:{:02x}:{:02x}:{:02x}", i >> 16 & 255, i >> 8 & 255, i & 255)
        })
        .collect();
    let uuids: Vec<String> = (0..500u32)
        .map(|i| format!("http://{addr}/images/{i:08x}-0000-4000-8000-{:012x}", i * 7919))
        .collect();
    let objects: Vec<String> =
        (0..500u32).map(|i| format!("http://{addr}/objects/{}", 100_000 + i)).collect();
    let health: Vec<String> = (0..20).map(|_| format!("http://{addr}/health")).collect();
    assert_eq!(curl(&[], &macs), vec![200; 1000]);
    assert_eq!(curl(&[], &uuids), vec![200; 500]);
    assert_eq!(curl(&[], &objects), vec![404; 500]);
    assert_eq!(curl(&[], &health), vec![404; 20]);

    let scrape = observer.scrape_settled(2000.0);
    assert_eq!(scrape.label_values("http_requests_total", "endpoint"), ["/objects/{id}", "boot", "image"]);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "boot"), ("status", "200")]), 1000.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "image"), ("status", "200")]), 500.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/objects/{id}"), ("status", "404")]), 500.0);
    assert_eq!(scrape.sum("http_requests_total", &[]), 2000.0, "ignored /health requests are not counted");
    assert_eq!(scrape.sum("observer_endpoints_overflowed_total", &[]), 0.0);

    // A broken file on SIGHUP: the old rules stay.
    std::fs::write(&routes, "[[route]]\npattern = \"no-slash\"\nendpoint = \"x\"\n").unwrap();
    sighup(observer.guard.pid());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(curl(&[], &macs[..10]), vec![200; 10]);
    observer.scrape_settled(2010.0);
    let scrape = observer.scrape();
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "boot")]), 1010.0, "{}", scrape.0);

    // A good file on SIGHUP: new requests get the new label.
    std::fs::write(&routes, "[[route]]\npattern = \"/boot/{mac}\"\nendpoint = \"pxe_script\"\n").unwrap();
    sighup(observer.guard.pid());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(curl(&[], &macs[..10]), vec![200; 10]);
    let scrape = observer.scrape_settled(2020.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "pxe_script")]), 10.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "boot")]), 1010.0);
}

#[test]
fn a_bad_routes_file_is_a_clear_startup_error() {
    let dir = TempDir::new("bad-routes");
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, "[[route]]\npattern = \"/x/**/y\"\nendpoint = \"e\"\n").unwrap();
    let out = Command::new(observer_bin())
        .args(["run", "--pid", &std::process::id().to_string(), "--listen", "127.0.0.1:0", "--routes"])
        .arg(&routes)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad routes file") && stderr.contains("routes.toml:1:"), "{stderr}");
}
