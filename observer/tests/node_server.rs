//! node's `http` module (read/writev; chunked responses as one writev of many iovecs).

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn counts_chunked_and_fixed_responses_of_node_exactly() {
    require_root();
    require_command("node");
    require_command("curl");
    let port = free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/node-server.js");
    let server = ChildGuard::spawn(
        "node",
        Command::new("node").arg(script).arg(port.to_string()).stdout(Stdio::null()).stderr(Stdio::null()),
    );
    wait_for_port(port);
    let observer = Observer::attach(&[server.pid()]);

    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let big: Vec<String> = (0..20).map(|i| url(&format!("/chunked/big?i={i}"))).collect();
    let small: Vec<String> = (0..20).map(|_| url("/chunked/small")).collect();
    let fixed: Vec<String> = (0..20).map(|_| url("/fixed")).collect();
    let missing: Vec<String> = (0..5).map(|i| url(&format!("/nothing/{i}"))).collect();
    assert_eq!(curl(&[], &big), vec![200; 20]);
    assert_eq!(curl(&[], &small), vec![200; 20]);
    assert_eq!(curl(&[], &fixed), vec![200; 20]);
    assert_eq!(curl(&[], &missing), vec![404; 5]);

    let scrape = observer.scrape_settled(65.0);
    assert_eq!(
        scrape.sum("http_requests_total", &[("endpoint", "/chunked/*"), ("status", "200")]),
        40.0,
        "{}",
        scrape.0
    );
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/fixed"), ("status", "200")]), 20.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/nothing/{id}"), ("status", "404")]), 5.0);
    assert_eq!(scrape.sum("http_requests_total", &[]), 65.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
    // Every chunked response ended at its terminator, seen in the captured tail, not by
    // falling back to close or the next request.
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
    // 20 big chunked bodies of 100,009 bytes each, plus heads.
    let chunked_bytes = scrape.sum("http_response_size_bytes_sum", &[("endpoint", "/chunked/*")]);
    assert!(
        chunked_bytes > 20.0 * 100_009.0 && chunked_bytes < 20.0 * 100_009.0 + 40.0 * 400.0,
        "{chunked_bytes}"
    );
}
