//! The daemon's life around its targets: shutdown detaches everything, a target's exit keeps
//! the metrics served (or, with --exit-with-targets, the last one's ends the daemon), and
//! request contents never reach metrics or logs.

mod common;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Ids of the BPF programs a process holds (from its fds' fdinfo).
fn held_program_ids(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn program_loaded(id: u32) -> bool {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("running bpftool");
    out.status.success()
}

#[test]
fn sigterm_detaches_everything_and_exits_zero_within_a_second() {
    require_root();
    require_command("bpftool");
    let (server, _) = start_demo_server();
    let mut observer = Observer::attach(&[server.pid()]);
    let ids = held_program_ids(observer.guard.pid());
    assert!(ids.len() >= 3, "the observer holds its programs while it runs: {ids:?}");
    assert!(ids.iter().all(|&id| program_loaded(id)));

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
    wait_until("every program of the observer to be unloaded", Duration::from_secs(2), || {
        ids.iter().all(|&id| !program_loaded(id))
    });
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
fn exit_with_targets_stops_once_the_last_target_exits() {
    require_root();
    let (mut first, _) = start_demo_server();
    let (mut second, _) = start_demo_server();
    let mut observer = Observer::on(&[first.pid(), second.pid()]).args(&["--exit-with-targets"]).start();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    wait_until("the observer to notice the first exit", Duration::from_secs(5), || {
        observer.log().contains("target process exited")
    });
    observer.guard.assert_running(); // one target is left
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = observer.guard.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after its last target exited");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(observer.log().contains("every target exited"), "{}", observer.log());
}

#[test]
fn secrets_in_queries_headers_and_bodies_never_reach_metrics_or_logs() {
    require_root();
    require_command("curl");
    let (server, addr) = start_demo_server();
    let observer = Observer::on(&[server.pid()]).log_level("trace").start();
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

/// CapEff of every thread of `pid`.
fn thread_capabilities(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap();
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim().to_owned();
            u64::from_str_radix(&hex, 16).unwrap()
        })
        .collect()
}

/// CAP_BPF (39) and CAP_SYS_PTRACE (19): what the daemon keeps after attaching.
const KEPT: u64 = (1 << 39) | (1 << 19);

#[test]
fn runs_with_only_the_documented_capabilities_and_then_drops_all_but_two() {
    require_root();
    require_command("setpriv");
    require_command("curl");
    // Without CAP_SYS_ADMIN the daemon cannot mount tracefs itself: mount it first, as the
    // README asks of a sidecar with the minimal set.
    if !std::path::Path::new("/sys/kernel/tracing/events/syscalls").is_dir() {
        let status =
            Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]).status().unwrap();
        assert!(status.success(), "mounting tracefs");
    }
    let (server, addr) = start_demo_server();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut observer = ChildGuard::spawn(
        "observer with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE only",
        Command::new("setpriv")
            .args(["--bounding-set=-all,+bpf,+perfmon,+sys_ptrace", "--"])
            .arg(observer_bin())
            .args(["run", "--pid", &server.pid().to_string(), "--listen", &listen.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_until("the observer's /metrics", Duration::from_secs(30), || {
        observer.assert_running();
        try_http_get(listen, "/metrics").is_some()
    });
    assert_eq!(
        curl(&[], &(0..10).map(|_| format!("http://{addr}/api/status")).collect::<Vec<_>>()),
        vec![200; 10]
    );
    wait_until("10 requests counted", Duration::from_secs(10), || {
        try_http_get(listen, "/metrics").is_some_and(|m| Scrape(m).sum("http_requests_total", &[]) == 10.0)
    });
    let caps = thread_capabilities(observer.pid());
    assert!(caps.iter().all(|&c| c == KEPT), "every thread keeps only CAP_BPF and CAP_SYS_PTRACE: {caps:x?}");
}

#[test]
fn needs_no_kernel_btf() {
    require_root();
    require_command("unshare");
    require_command("curl");
    // Kernels without /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF off) still run it: the
    // programs use no CO-RE relocation, and the default hooks fall back from the BTF-typed
    // tracepoint to the raw one. Hidden here by a private mount.
    let (server, addr) = start_demo_server();
    let hide_btf = "mount -t tmpfs none /sys/kernel/btf\ntest ! -e /sys/kernel/btf/vmlinux\nexec \"$@\"";
    let observer = Observer::on(&[server.pid()])
        .wrapped_in(&["unshare", "--mount", "sh", "-ec", hide_btf, "sh"])
        .start();
    let urls: Vec<String> = (0..10).map(|_| format!("http://{addr}/api/status")).collect();
    assert_eq!(curl(&[], &urls), vec![200; 10]);
    let scrape = observer.scrape_settled(10.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/api/status"), ("status", "200")]), 10.0);
}

#[test]
fn json_logs_are_one_object_per_line_errors_included() {
    require_root();
    require_command("curl");
    let (server, addr) = start_demo_server();
    let observer = Observer::on(&[server.pid()]).args(&["--log-format", "json"]).start();
    assert_eq!(curl(&[], &[format!("http://{addr}/api/status")]), vec![200]);
    observer.scrape_settled(1.0);
    let log = observer.log();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(
        records.iter().any(|r| r["level"] == "INFO"
            && r["message"].as_str().is_some_and(|m| m.starts_with("serving metrics on"))),
        "{log}"
    );

    let out = Command::new(observer_bin())
        .args(["run", "--log-format", "json", "--pid", "4000000", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let record: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON error record");
    assert_eq!(record["level"], "ERROR");
    assert!(record["message"].as_str().unwrap().contains("no such process: 4000000"), "{stderr}");
}
