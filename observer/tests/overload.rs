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
    let observer =
        Observer::on(&[server.pid()]).args(&["--ring-bytes", "4096", "--idle-timeout", "1"]).start();
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

/// Socket hooks: the kernel's table holds connections only, so `--max-connections 3` is room
/// for three.
#[test]
fn connections_beyond_the_socket_table_are_counted_and_the_others_exactly() {
    require_root();
    let (server, addr) = start_demo_server();
    let observer = Observer::on(&[server.pid()]).args(&["--max-connections", "3"]).start();
    three_fit_of_ten(&observer, addr);
}

/// Syscall hooks: the kernel's table also holds the sockets the server has open at attach.
#[test]
fn connections_beyond_the_socket_table_are_counted_and_the_others_exactly_with_syscall_hooks() {
    require_root();
    let (server, addr) = start_demo_server();
    // Room for three connections beyond the sockets the server has open now (its listener
    // and tokio's own), which the observer learns at attach. Counted once the connection
    // that checked the port is closed again, or a slot more would be free at attach.
    std::thread::sleep(Duration::from_millis(300));
    let existing = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .filter(|fd| {
            std::fs::read_link(fd.as_ref().unwrap().path()).unwrap().to_string_lossy().starts_with("socket:")
        })
        .count();
    let max = (existing + 3).to_string();
    let observer = Observer::on(&[server.pid()]).args(&["--max-connections", &max, "--hooks", "btf"]).start();
    three_fit_of_ten(&observer, addr);
}

fn three_fit_of_ten(observer: &Observer, addr: std::net::SocketAddr) {
    let refused = |s: &Scrape| s.sum("observer_kernel_map_full_total", &[("map", "sockets")]);
    // Ten connections open at once, one request each: every connection is either followed
    // (its request counted) or refused (counted as such), never both, never neither.
    let mut clients: Vec<RawClient> = (0..10).map(|_| RawClient::connect(addr)).collect();
    for client in &mut clients {
        assert_eq!(client.get("/api/status"), 200);
    }
    let full = observer.scrape_until("each connection counted once, as a request or as refused", |s| {
        s.sum("http_requests_total", &[]) + refused(s) == 10.0
    });
    assert!(refused(&full) >= 7.0, "at most three connections fit:\n{}", full.0);
    assert!(full.sum("http_requests_total", &[]) >= 1.0, "{}", full.0);
    let counted = full.sum("http_requests_total", &[]);

    // Closing frees the slots: later connections are followed again, and counted exactly.
    drop(clients);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert_eq!(RawClient::connect(addr).get("/api/status"), 200);
    }
    let after = observer.scrape_settled(counted + 3.0);
    assert_eq!(after.sum("http_requests_total", &[]), counted + 3.0, "{}", after.0);
    assert_eq!(refused(&after), refused(&full), "{}", after.0);
}
