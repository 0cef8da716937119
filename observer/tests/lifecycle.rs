//! The daemon's life around its targets: shutdown detaches everything, a target's exit keeps
//! the metrics served, and request contents never reach metrics or logs.

mod common;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use common::*;

/// Names of the BPF programs loaded in the kernel now.
fn loaded_programs() -> String {
    let out = Command::new("bpftool").args(["prog", "show"]).output().expect("running bpftool");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigterm_detaches_everything_and_exits_zero_within_a_second() {
    require_root();
    require_command("bpftool");
    let (server, _) = start_demo_server();
    let mut observer = Observer::attach(&[server.pid()]);
    assert!(loaded_programs().contains("raw_sys_exit"), "the observer's program is loaded while it runs");

    let started = Instant::now();
    Command::new("kill").args(["-TERM", &observer.guard.pid().to_string()]).status().unwrap();
    let status = loop {
        if let Some(status) = observer.guard.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "still running 1 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}");
    // The kernel frees a program once its last reference is dropped, a little after the fds
    // close (deferred work): give it a moment.
    let names = ["raw_sys_exit", "exit_data", "exit_accept", "enter_close", "name fork "];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let programs = loaded_programs();
        let left: Vec<_> = names.iter().filter(|n| programs.contains(*n)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{left:?} still loaded 2 s after shutdown:\n{programs}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_target_that_exits_keeps_its_metrics_served() {
    require_root();
    require_command("curl");
    let (mut server, addr) = start_demo_server();
    let observer = Observer::attach(&[server.pid()]);
    assert_eq!(
        curl(&[], &(0..12).map(|_| format!("http://{addr}/api/status")).collect::<Vec<_>>()),
        vec![200; 12]
    );
    observer.scrape_settled(12.0);

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    wait_until("the observer to notice the exit", Duration::from_secs(5), || {
        observer.log().contains("target process exited")
    });
    let scrape = observer.scrape();
    assert_eq!(scrape.sum("http_requests_total", &[]), 12.0, "counts survive the target");
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
}

#[test]
fn secrets_in_queries_headers_and_bodies_never_reach_metrics_or_logs() {
    require_root();
    require_command("curl");
    let (server, addr) = start_demo_server();
    let observer = Observer::attach_logging(&[server.pid()], &[], "trace");
    let secrets = ["QUERYSECRET4242", "BEARERSECRET4242", "COOKIESECRET4242", "BODYSECRET4242"];
    let status = curl(
        &[
            "--header",
            &format!("Authorization: Bearer {}", secrets[1]),
            "--header",
            &format!("Cookie: session={}", secrets[2]),
            "--data-binary",
            &format!("password={}", secrets[3]),
        ],
        &[format!("http://{addr}/upload/file?token={}", secrets[0])],
    );
    assert_eq!(status, [200]);
    let scrape = observer.scrape_settled(1.0);
    assert_eq!(scrape.sum("http_requests_total", &[("method", "POST"), ("status", "200")]), 1.0);
    std::thread::sleep(Duration::from_millis(200));
    let log = observer.log();
    for secret in secrets {
        assert!(!scrape.0.contains(secret), "{secret} in /metrics");
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap()
}

/// One connection: a request, its response, closed by the client.
fn one_request(addr: SocketAddr) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /api/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).unwrap();
}

#[test]
fn daemon_memory_stays_flat_over_100k_connections() {
    require_root();
    let (server, addr) = start_demo_server();
    let observer = Observer::attach(&[server.pid()]);
    let pid = observer.guard.pid();
    // Warm up: the first connections allocate the table, label sets and buffers.
    for _ in 0..10_000 {
        one_request(addr);
    }
    observer.scrape_settled(10_000.0);
    let warm = rss_kib(pid);
    for _ in 0..90_000 {
        one_request(addr);
    }
    let scrape = observer.scrape_settled(100_000.0);
    let after = rss_kib(pid);
    eprintln!("observer RSS after 10k connections: {warm} KiB, after 100k: {after} KiB");
    assert_eq!(scrape.sum("http_requests_total", &[]), 100_000.0);
    assert!(scrape.sum("observer_connections", &[]) < 100.0, "closed connections leave the table");
    assert!(after <= warm + warm / 5, "RSS grew from {warm} KiB to {after} KiB over 90,000 more connections");
}
