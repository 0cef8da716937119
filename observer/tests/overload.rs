//! Lost events: a ring buffer too small for the load drops events; they are counted, the
//! affected connections resync, in-flight returns to zero, and counting is exact again after.

mod common;

use std::{process::Command, time::Duration};

use common::*;

#[test]
fn counts_recover_after_the_ring_buffer_overflows() {
    require_root();
    require_command("wrk");
    require_command("curl");
    let (server, addr) = start_demo_server();
    // 16 KiB of ring for 64 busy connections: it overflows.
    let observer = Observer::attach_with(&[server.pid()], &["--ring-bytes", "16384", "--idle-timeout", "1"]);
    let wrk = Command::new("wrk")
        .args(["--threads", "2", "--connections", "64", "--duration", "2s"])
        .arg(format!("http://{addr}/api/status"))
        .output()
        .expect("wrk");
    assert!(wrk.status.success());

    let settled = observer.scrape_until("in-flight back to 0 after the overload", |s| {
        s.sum("http_requests_in_flight", &[]) == 0.0 && s.sum("observer_events_lost_total", &[]) > 0.0
    });
    let lost = settled.sum("observer_events_lost_total", &[]);
    let before = settled.sum("http_requests_total", &[]);
    eprintln!("events lost under overload: {lost}; requests counted: {before}");
    assert!(settled.sum("observer_parse_errors_total", &[("reason", "lost_events")]) > 0.0, "{}", settled.0);

    // After the storm: new connections are counted exactly.
    let urls: Vec<String> = (0..20).map(|_| format!("http://{addr}/api/status")).collect();
    for chunk in urls.chunks(5) {
        assert_eq!(curl(&[], chunk), vec![200; 5]);
    }
    let after = observer.scrape_settled(before + 20.0);
    assert_eq!(after.sum("http_requests_total", &[]), before + 20.0, "{}", after.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(observer.scrape().sum("http_requests_total", &[]), before + 20.0, "nothing counted twice");
}
