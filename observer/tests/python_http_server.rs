//! `python3 -m http.server` (recvfrom/sendto, HTTP/1.0, one thread per request) observed
//! from outside: exact counts per status and method.

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn counts_every_request_of_python_http_server_exactly() {
    require_root();
    require_command("python3");
    require_command("curl");
    let www = TempDir::new("python");
    for i in 1..=40 {
        std::fs::write(www.path().join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    let port = free_port();
    let mut server = ChildGuard::spawn(
        "python3 -m http.server",
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    server.assert_running();
    let observer = Observer::attach(&[server.pid()]);

    let base = format!("http://127.0.0.1:{port}");
    let found: Vec<String> = (1..=40).map(|i| format!("{base}/f{i}.txt")).collect();
    let missing: Vec<String> = (1..=10).map(|i| format!("{base}/missing/{i}")).collect();
    assert_eq!(curl(&[], &found), vec![200; 40]);
    assert_eq!(curl(&[], &missing), vec![404; 10]);
    assert_eq!(curl(&["--head"], &found[..5]), vec![200; 5]);

    let scrape = observer.scrape_settled(55.0);
    let get_200: f64 = (1..=40)
        .map(|i| {
            scrape.sum(
                "http_requests_total",
                &[("endpoint", &format!("/f{i}.txt")), ("method", "GET"), ("status", "200")],
            )
        })
        .sum();
    assert_eq!(get_200, 40.0, "{}", scrape.0);
    assert_eq!(
        scrape.sum(
            "http_requests_total",
            &[("endpoint", "/missing/{id}"), ("method", "GET"), ("status", "404")]
        ),
        10.0
    );
    assert_eq!(scrape.sum("http_requests_total", &[("method", "HEAD"), ("status", "200")]), 5.0);
    assert_eq!(scrape.sum("http_requests_total", &[]), 55.0, "no request counted twice:\n{}", scrape.0);
    assert_eq!(scrape.sum("http_request_duration_seconds_count", &[]), 55.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
    assert_eq!(scrape.sum("observer_requests_incomplete_total", &[]), 0.0);
    assert_eq!(scrape.sum("observer_events_lost_total", &[]), 0.0);
    assert!(scrape.sum("observer_events_total", &[]) > 0.0);
    // Durations are real: positive, and no single request took longer than the whole test.
    let seconds = scrape.sum("http_request_duration_seconds_sum", &[]);
    assert!(seconds > 0.0 && seconds < 55.0 * 5.0, "duration sum {seconds}");
}
