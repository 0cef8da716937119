//! `--hooks sock`, the default: what hooking socket I/O (instead of syscalls) guarantees.
//! Only the targets' inbound requests count as served, connections are keyed by socket
//! cookie (no close hook, no fd table), listeners opened later are followed, a reset ends a
//! response as incomplete, and no syscall tracepoint is attached at all.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

/// nginx, one process, on `port`: `/local` answered by nginx itself, `/up/` proxied to
/// `upstream` (a fresh upstream connection per request), `/files/` from `dir/www/files`,
/// every request logged to `dir/access.log`.
fn start_nginx(dir: &TempDir, port: u16, upstream: u16) -> ChildGuard {
    let locations = format!(
        "        location = /local {{ return 200 \"local\\n\"; }}\n\
         location /up/ {{ proxy_pass http://127.0.0.1:{upstream}/; }}"
    );
    let conf = write_nginx_conf_with(
        dir,
        port,
        NginxConf {
            processes: "master_process off;",
            access_log: true,
            locations: &locations,
            ..Default::default()
        },
    );
    start_nginx_conf(&conf, port)
}

fn access_log_lines(dir: &TempDir) -> usize {
    std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default().lines().count()
}

#[test]
fn only_inbound_requests_are_counted_when_the_target_calls_upstreams() {
    require_root();
    require_command("nginx");
    require_command("python3");
    let dir = TempDir::new("sock-outbound");
    let upstream_dir = dir.path().join("upstream");
    std::fs::create_dir_all(&upstream_dir).unwrap();
    std::fs::write(upstream_dir.join("script.ipxe"), "#!ipxe\nboot\n").unwrap();
    let upstream_port = free_port();
    let _upstream = start_python_upstream(&upstream_dir, upstream_port, None);
    let port = free_port();
    let nginx = start_nginx(&dir, port, upstream_port);
    let observer = Observer::attach(&[nginx.pid()]);

    // Each proxied request makes nginx connect to the upstream, write a request there and read
    // its response: none of that is the target serving, none of it may count.
    let proxied: Vec<String> =
        (0..40).map(|i| format!("http://127.0.0.1:{port}/up/script.ipxe?n={i}")).collect();
    assert_eq!(curl(&[], &proxied), vec![200; 40]);
    let local: Vec<String> = (0..20).map(|_| format!("http://127.0.0.1:{port}/local")).collect();
    assert_eq!(curl(&[], &local), vec![200; 20]);

    let scrape = observer.scrape_settled(60.0);
    assert_eq!(access_log_lines(&dir), 60, "nginx's own count");
    assert_eq!(scrape.sum("http_requests_total", &[]), 60.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/up/script.ipxe")]), 40.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/local")]), 20.0);
    assert_eq!(
        scrape.sum("observer_parse_errors_total", &[]),
        0.0,
        "upstream bytes were parsed:\n{}",
        scrape.0
    );
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
}

/// 100,000 connections of one request each (`Connection: close`): the server reuses the same
/// few fds all along, and the socket hooks have no close hook and no fd table, only cookies.
#[test]
fn a_hundred_thousand_short_connections_are_counted_exactly() {
    require_root();
    require_command("nginx");
    require_command("wrk");
    let dir = TempDir::new("sock-short");
    let port = free_port();
    let nginx = start_nginx(&dir, port, free_port());
    let observer = Observer::attach(&[nginx.pid()]);
    let script = dir.path().join("count.lua");
    // wrk stops each thread after its share of the requests: bounded by count, and by time.
    std::fs::write(
        &script,
        r#"
local limit = 25000
local sent = 0
request = function()
  sent = sent + 1
  if sent > limit then wrk.thread:stop() end
  return wrk.format("GET", "/local", { ["Connection"] = "close" })
end
"#,
    )
    .unwrap();
    let wrk = Command::new("wrk")
        .args(["--threads", "4", "--connections", "8", "--duration", "60s", "--timeout", "5s", "--script"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("running wrk");
    assert!(wrk.status.success(), "wrk: {}", String::from_utf8_lossy(&wrk.stderr));
    eprintln!("{}", String::from_utf8_lossy(&wrk.stdout));
    let served = access_log_lines(&dir) as f64;
    assert!(served >= 100_000.0, "nginx served only {served} requests");
    let scrape = observer.scrape_until("every request nginx logged", |s| {
        s.sum("http_requests_total", &[]) >= served && s.sum("http_requests_in_flight", &[]) == 0.0
    });
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/local"), ("status", "200")]), served);
    assert_eq!(scrape.sum("http_requests_total", &[]), served, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_events_lost_total", &[]), 0.0);
    assert_eq!(scrape.sum("observer_requests_incomplete_total", &[]), 0.0);
    // Every connection was ended by its TCP state change, not left to the idle sweep.
    let scrape =
        observer.scrape_until("the connection table to empty", |s| s.sum("observer_connections", &[]) <= 1.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
}

#[test]
fn a_listener_opened_after_attach_is_followed() {
    require_root();
    require_command("python3");
    let port = free_port();
    // python's http.server, listening only once the test says so: the observer attaches to a
    // process that does not listen yet. A gate file, not a fixed pause: CI once took 2.3 s to
    // start the observer, longer than the 2 s sleep this test had.
    let dir = TempDir::new("late-listener");
    let gate = dir.path().join("listen");
    let serve_later = format!(
        "import os, time, http.server\n\
         while not os.path.exists({gate:?}): time.sleep(0.05)\n\
         http.server.ThreadingHTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()"
    );
    let mut server = ChildGuard::spawn(
        "python http.server (late listener)",
        Command::new("python3").args(["-c", &serve_later]).stdout(Stdio::null()).stderr(Stdio::null()),
    );
    let observer = Observer::attach(&[server.pid()]);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the server listened before attach");
    std::fs::write(&gate, b"").expect("opening the gate");
    wait_for_port(port);
    server.assert_running();
    let urls: Vec<String> = (0..5).map(|_| format!("http://127.0.0.1:{port}/")).collect();
    assert_eq!(curl(&[], &urls), vec![200; 5]);
    let scrape = observer.scrape_settled(5.0);
    assert_eq!(
        scrape.sum("http_requests_total", &[("endpoint", "/"), ("status", "200")]),
        5.0,
        "{}",
        scrape.0
    );
    assert!(observer.log().contains("following a new listener"), "{}", observer.log());
}

#[test]
fn a_reset_mid_response_ends_it_as_incomplete() {
    require_root();
    require_command("nginx");
    let dir = TempDir::new("sock-reset");
    let port = free_port();
    let nginx = start_nginx(&dir, port, free_port());
    // A large file (sparse), so the response is still being written when the client resets.
    let big = std::fs::File::create(dir.path().join("www/files/big.img")).unwrap();
    big.set_len(512 << 20).unwrap();
    let observer = Observer::attach(&[nginx.pid()]);

    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /files/big.img HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = 0;
    let mut chunk = [0u8; 65536];
    while got < 1 << 20 {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "nginx closed early");
        got += n;
    }
    observer.scrape_until("the download in flight", |s| s.sum("http_requests_in_flight", &[]) == 1.0);
    // SO_LINGER with a zero timeout: close() sends a reset instead of a FIN.
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on an open socket with a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(stream);
    let scrape = observer.scrape_until("the reset download ended", |s| {
        s.sum("observer_requests_incomplete_total", &[]) == 1.0
            && s.sum("http_requests_in_flight", &[]) == 0.0
    });
    assert_eq!(
        scrape.sum("http_requests_total", &[]),
        0.0,
        "a reset response is not answered:\n{}",
        scrape.0
    );
    // The server is still counted right afterwards.
    assert_eq!(curl(&[], &[format!("http://127.0.0.1:{port}/local")]), vec![200]);
    observer.scrape_settled(1.0);
}

/// The BPF links `pid` holds, as the kernel describes them in /proc/PID/fdinfo: the
/// tracepoint names of its raw-tracepoint links (tp_btf included) and of its perf-event
/// (classic tracepoint) links.
fn attachments_of(pid: u32) -> (Vec<String>, Vec<String>) {
    let (mut raw, mut classic) = (Vec::new(), Vec::new());
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().filter_map(Result::ok) {
        if !std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf_link") {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
                .unwrap_or_default();
        let field = |name: &str| info.lines().find_map(|l| Some(l.strip_prefix(name)?.trim().to_owned()));
        match (field("link_type:").as_deref(), field("tp_name:")) {
            (Some("raw_tracepoint"), Some(tp)) => raw.push(tp),
            (Some("perf"), Some(tp)) => classic.push(tp),
            (kind, tp) => panic!("an unexpected link: {kind:?} {tp:?}\n{info}"),
        }
    }
    raw.sort();
    (raw, classic)
}

#[test]
fn socket_hooks_attach_no_syscall_tracepoint() {
    require_root();
    let (server, _addr) = start_demo_server();
    let observer = Observer::attach(&[server.pid()]);
    let (raw, classic) = attachments_of(observer.guard.pid());
    eprintln!("sock: raw/tp_btf {raw:?}, classic {classic:?}");
    assert_eq!(raw, ["inet_sock_set_state", "sock_recv_length", "sock_send_length", "tcp_destroy_sock"]);
    assert!(classic.iter().all(|t| !t.starts_with("sys_")), "syscall tracepoints attached: {classic:?}");
    assert!(classic.iter().any(|t| t == "sched_process_fork"), "children are followed: {classic:?}");
    assert!(observer.log().contains("hooks=sock"), "sock is the default here:\n{}", observer.log());
    drop(observer);

    // The same query sees the syscall hooks when they are asked for.
    let observer = Observer::on(&[server.pid()]).args(&["--hooks", "btf"]).start();
    let (raw, classic) = attachments_of(observer.guard.pid());
    eprintln!("btf: raw/tp_btf {raw:?}, classic {classic:?}");
    assert_eq!(raw, ["sys_exit"]);
    assert!(classic.iter().any(|t| t == "sys_enter_close"), "{classic:?}");
    assert!(classic.iter().any(|t| t == "sched_process_fork"), "{classic:?}");
}
