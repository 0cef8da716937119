//! The demo's axum/hyper server (read/write on tokio, keep-alive) observed from outside,
//! including a connection opened before the observer attached.

mod common;

use common::*;

#[test]
fn counts_keep_alive_requests_of_an_axum_server_exactly() {
    require_root();
    require_command("curl");
    let (server, addr) = start_demo_server();
    let observer = Observer::attach(&[server.pid()]);

    let boot: Vec<String> =
        (0..30).map(|i| format!("http://{addr}/boot/52:54:00:00:00:{i:02x}?arch=x86_64")).collect();
    let images: Vec<String> = (0..5).map(|i| format!("http://{addr}/images/img{i}.qcow2")).collect();
    let missing: Vec<String> = (0..7).map(|i| format!("http://{addr}/nope/{i}")).collect();
    // One curl per list: each list goes over one keep-alive connection.
    assert_eq!(curl(&[], &boot), vec![200; 30]);
    assert_eq!(curl(&[], &images), vec![200; 5]);
    assert_eq!(curl(&[], &missing), vec![404; 7]);
    assert_eq!(curl(&["--head"], &boot[..3]), vec![200; 3]);

    let scrape = observer.scrape_settled(45.0);
    let count = |endpoint, method, status| {
        scrape.sum("http_requests_total", &[("endpoint", endpoint), ("method", method), ("status", status)])
    };
    // No routes file: MACs and numbers collapse to `{id}`, file names stay.
    assert_eq!(count("/boot/{id}", "GET", "200"), 30.0, "{}", scrape.0);
    assert_eq!(count("/images/*", "GET", "200"), 5.0);
    assert_eq!(count("/nope/{id}", "GET", "404"), 7.0);
    assert_eq!(count("/boot/{id}", "HEAD", "200"), 3.0);
    assert_eq!(scrape.sum("http_requests_total", &[]), 45.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_request_duration_seconds_count", &[]), 45.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
    let mut expected: Vec<String> = (0..5).map(|i| format!("/images/img{i}.qcow2")).collect();
    expected.insert(0, "/boot/{id}".to_owned());
    expected.push("/nope/{id}".to_owned());
    assert_eq!(scrape.label_values("http_requests_total", "endpoint"), expected);
    assert!(!scrape.0.contains("arch=x86_64"), "query strings never reach labels");
}

#[test]
fn counts_a_connection_opened_before_attach() {
    require_root();
    let (server, addr) = start_demo_server();
    let mut early = RawClient::connect(addr);
    assert_eq!(early.get("/api/status"), 200); // before the observer exists: not counted

    let observer = Observer::attach(&[server.pid()]);
    for _ in 0..6 {
        assert_eq!(early.get("/api/status"), 200);
    }
    assert_eq!(early.get("/boot/aa:bb:cc:dd:ee:ff"), 200);

    let scrape = observer.scrape_settled(7.0);
    assert_eq!(
        scrape
            .sum("http_requests_total", &[("endpoint", "/api/status"), ("method", "GET"), ("status", "200")]),
        6.0,
        "{}",
        scrape.0
    );
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/boot/{id}")]), 1.0);
    assert_eq!(scrape.sum("http_requests_total", &[]), 7.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
}
