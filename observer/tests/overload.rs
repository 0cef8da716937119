//! Lost events: a ring buffer too small for the load drops events; they are counted, the
//! affected connections resync, in-flight returns to zero, and counting is exact again after.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

#[test]
fn counts_recover_after_the_ring_buffer_overflows() {
    require_root();
    require_command("wrk");
    require_command("curl");
    let (server, addr) = start_demo_server();
    // One page of ring for 64 busy connections.
    let observer = Observer::attach_with(&[server.pid()], &["--ring-bytes", "4096", "--idle-timeout", "1"]);
    let wrk = Command::new("wrk")
        .args(["--threads", "2", "--connections", "64", "--duration", "3s"])
        .arg(format!("http://{addr}/api/status"))
        .stdout(Stdio::null())
        .spawn()
        .expect("wrk");
    let mut wrk = ChildGuard { child: wrk, name: "wrk".into() };
    // Freeze the daemon for a second of the load: the ring fills, whatever the machine's speed.
    std::thread::sleep(Duration::from_millis(500));
    let signal =
        |sig: &str| Command::new("kill").args([sig, &observer.guard.pid().to_string()]).status().unwrap();
    assert!(signal("-STOP").success());
    std::thread::sleep(Duration::from_secs(1));
    assert!(signal("-CONT").success());
    assert!(wrk.child.wait().unwrap().success());

    // Settled: nothing in flight, and the count unchanged over half a second (in-flight also
    // passes through 0 while the last events of the storm are still being read).
    let mut last = -1.0;
    let settled = observer.scrape_until("the count to settle after the overload", |s| {
        let total = s.sum("http_requests_total", &[]);
        let stable = total == last && s.sum("http_requests_in_flight", &[]) == 0.0;
        last = total;
        if !stable {
            std::thread::sleep(Duration::from_millis(400));
        }
        stable && s.sum("observer_events_lost_total", &[]) > 0.0
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
