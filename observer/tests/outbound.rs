//! The client role: the connections a target opens to its upstreams are followed from their
//! connect, their requests counted per peer against the upstream's own log, and failed
//! connects counted with their reasons. The server side stays what it was.

mod common;

use std::{
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

/// nginx, one process, on `port`: `/up/` proxied to `upstream` (HTTP/1.0, a fresh upstream
/// connection per request), `/down/` to `closed` (nothing listens), `/stuck/` to `stuck`
/// (SYNs dropped) with a 1 s connect timeout; every request logged to `dir/access.log`.
fn start_nginx(dir: &TempDir, port: u16, upstream: u16, closed: u16, stuck: u16) -> ChildGuard {
    let locations = format!(
        "        location /up/ {{ proxy_pass http://127.0.0.1:{upstream}/; }}\n\
         location /down/ {{ proxy_pass http://127.0.0.1:{closed}/; }}\n\
         location /stuck/ {{ proxy_pass http://127.0.0.1:{stuck}/; proxy_connect_timeout 1s; }}"
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

/// python's http.server on `port`, serving `dir`, its log (a line per request, with the
/// status) in `log`.
fn start_python_upstream(dir: &Path, port: u16, log: &Path) -> ChildGuard {
    let upstream = ChildGuard::spawn(
        "python upstream",
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap()),
    );
    wait_for_port(port);
    upstream
}

/// How many requests python's log shows answered with `status`.
fn python_log_count(log: &Path, status: u16) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter(|l| l.contains("\"GET ") && l.contains(&format!("\" {status} "))).count()
}

/// A listener whose accept queue is full: the kernel drops the SYNs that come next (a peer
/// that does not answer). Python, `listen(0)`, never accepting; one connection made here
/// fills it. Returns the listener and that connection.
fn start_stuck_listener(port: u16) -> (ChildGuard, TcpStream) {
    let script = format!(
        "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\ns.listen(0)\ntime.sleep(120)\n"
    );
    let listener = ChildGuard::spawn("stuck listener", Command::new("python3").args(["-c", &script]));
    wait_until("the stuck listener", Duration::from_secs(10), || {
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap_or_default()
            .contains(&format!(":{port:04X} 00000000:0000 0A"))
    });
    let filler = TcpStream::connect(("127.0.0.1", port)).expect("the first connection fits");
    (listener, filler)
}

#[test]
fn nginx_upstream_requests_and_connects_are_counted_per_peer() {
    require_root();
    require_command("nginx");
    require_command("python3");
    let dir = TempDir::new("outbound-nginx");
    let upstream_dir = dir.path().join("upstream");
    std::fs::create_dir_all(&upstream_dir).unwrap();
    std::fs::write(upstream_dir.join("script.ipxe"), "#!ipxe\nboot\n").unwrap();
    let upstream_log = dir.path().join("upstream.log");
    let (upstream_port, closed, stuck) = (free_port(), free_port(), free_port());
    let _upstream = start_python_upstream(&upstream_dir, upstream_port, &upstream_log);
    let (_stuck, _filler) = start_stuck_listener(stuck);
    let port = free_port();
    let nginx = start_nginx(&dir, port, upstream_port, closed, stuck);
    let named = format!("127.0.0.1:{upstream_port}=boot-files");
    let observer = Observer::on(&[nginx.pid()]).args(&["--peer-name", &named]).start();

    let found: Vec<String> =
        (0..30).map(|i| format!("http://127.0.0.1:{port}/up/script.ipxe?n={i}")).collect();
    let missing: Vec<String> = (0..10).map(|i| format!("http://127.0.0.1:{port}/up/none-{i}.ipxe")).collect();
    assert_eq!(curl(&[], &found), vec![200; 30]);
    assert_eq!(curl(&[], &missing), vec![404; 10]);
    let refused: Vec<String> = (0..5).map(|_| format!("http://127.0.0.1:{port}/down/x")).collect();
    assert_eq!(curl(&[], &refused), vec![502; 5]);
    let timed_out: Vec<String> = (0..2).map(|_| format!("http://127.0.0.1:{port}/stuck/x")).collect();
    assert_eq!(curl(&["--max-time", "10"], &timed_out), vec![504; 2]);

    let scrape = observer.scrape_until("the upstream's answers and the failed connects", |s| {
        s.sum("http_client_requests_total", &[]) >= 40.0
            && s.sum("tcp_connect_failures_total", &[]) >= 7.0
            && s.sum("http_requests_total", &[]) >= 47.0
    });
    let text = &scrape.0;
    // The upstream's own log, per status.
    assert_eq!((python_log_count(&upstream_log, 200), python_log_count(&upstream_log, 404)), (30, 10));
    let peer = ("peer", "boot-files");
    assert_eq!(
        scrape.sum("http_client_requests_total", &[peer, ("status", "200"), ("method", "GET")]),
        30.0,
        "{text}"
    );
    assert_eq!(scrape.sum("http_client_requests_total", &[peer, ("status", "404")]), 10.0, "{text}");
    assert_eq!(scrape.sum("http_client_requests_total", &[]), 40.0, "no request invented: {text}");
    assert_eq!(scrape.sum("http_client_request_duration_seconds_count", &[peer]), 40.0);
    assert_eq!(scrape.sum("http_client_requests_in_flight", &[]), 0.0);
    assert_eq!(scrape.sum("tcp_connect_duration_seconds_count", &[peer]), 40.0, "a connection per request");
    // Failed connects, by peer and reason; nothing else failed.
    let down = format!("127.0.0.1:{closed}");
    let stuck_peer = format!("127.0.0.1:{stuck}");
    let failures =
        |peer: &str, reason| scrape.sum("tcp_connect_failures_total", &[("peer", peer), ("reason", reason)]);
    assert_eq!(failures(&down, "refused"), 5.0, "{text}");
    assert_eq!(failures(&stuck_peer, "abandoned"), 2.0, "nginx's own connect timeout: {text}");
    assert_eq!(scrape.sum("tcp_connect_failures_total", &[]), 7.0);
    // The server side is what nginx logged, unchanged.
    let served = access_log(&dir);
    assert_eq!(served.len(), 47);
    for status in [200u16, 404, 502, 504] {
        let logged = served.iter().filter(|(_, s)| *s == status).count() as f64;
        assert_eq!(scrape.sum("http_requests_total", &[("status", &status.to_string())]), logged, "{text}");
    }
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{text}");
    // The upstream's part of each request is inside nginx's.
    let upstream_time = scrape.sum("http_client_request_duration_seconds_sum", &[peer]);
    let served_time = scrape.sum("http_request_duration_seconds_sum", &[("endpoint", "/up/*")]);
    assert!(
        upstream_time > 0.0 && upstream_time <= served_time,
        "upstream {upstream_time} s, served {served_time} s"
    );
}

#[test]
fn a_connect_the_kernel_gives_up_on_is_a_timeout() {
    require_root();
    require_command("python3");
    let dir = TempDir::new("outbound-timeout");
    let stuck = free_port();
    let (_stuck, _filler) = start_stuck_listener(stuck);
    let gate = dir.path().join("go");
    // One SYN retry (TCP_SYNCNT=1): the kernel gives up after ~3 s with ETIMEDOUT.
    let script = format!(
        "import os, socket, time\n\
         while not os.path.exists({gate:?}): time.sleep(0.05)\n\
         for _ in range(2):\n\
         \x20   s = socket.socket()\n\
         \x20   s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)\n\
         \x20   try: s.connect(('127.0.0.1', {stuck}))\n\
         \x20   except OSError as e: print(e.errno, flush=True)\n\
         \x20   s.close()\n\
         time.sleep(60)\n",
        gate = gate.display().to_string()
    );
    let out = dir.path().join("client.out");
    let client = ChildGuard::spawn(
        "python client",
        Command::new("python3").args(["-c", &script]).stdout(std::fs::File::create(&out).unwrap()),
    );
    let observer = Observer::attach(&[client.pid()]);
    std::fs::write(&gate, "").unwrap();
    wait_until("both connects to fail", Duration::from_secs(20), || {
        std::fs::read_to_string(&out).unwrap_or_default().lines().count() == 2
    });
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "110\n110\n", "ETIMEDOUT, as the client saw it");
    let peer = format!("127.0.0.1:{stuck}");
    let scrape = observer.scrape_until("two timeouts", |s| s.sum("tcp_connect_failures_total", &[]) >= 2.0);
    assert_eq!(
        scrape.sum("tcp_connect_failures_total", &[("peer", &peer), ("reason", "timeout")]),
        2.0,
        "{}",
        scrape.0
    );
    assert_eq!(scrape.sum("tcp_connect_duration_seconds_count", &[]), 0.0);
    assert_eq!(scrape.sum("http_client_requests_total", &[]), 0.0);
}

/// A gRPC client (python's grpcio, HTTP/2 in clear text) as the target, calling a local
/// server: its calls counted per code against the server's log, and as HTTP/2 requests of
/// that peer.
#[test]
fn a_grpc_client_s_calls_are_counted_by_code() {
    require_root();
    let python = "/usr/bin/python3";
    assert!(
        Command::new(python).args(["-c", "import grpc"]).status().is_ok_and(|s| s.success()),
        "{python} cannot import grpc: run `cargo xtask setup` (python3-grpcio)"
    );
    let scripts = format!("{}/tests/servers", env!("CARGO_MANIFEST_DIR"));
    let dir = TempDir::new("outbound-grpc");
    let port = free_port();
    let log = dir.path().join("calls.log");
    let _server = ChildGuard::spawn(
        "grpc server",
        Command::new(python).arg(format!("{scripts}/grpc-server.py")).arg(port.to_string()).arg(&log),
    );
    wait_for_port(port);
    // The client waits for the observer before it connects, then stays until killed.
    let gate = dir.path().join("go");
    let wrapper = format!(
        "import os, runpy, sys, time\n\
         while not os.path.exists({gate:?}): time.sleep(0.05)\n\
         sys.argv = ['grpc-client.py', '{port}', 'unary', '40', '15', '5']\n\
         runpy.run_path('{scripts}/grpc-client.py', run_name='__main__')\n\
         sys.stdout.flush()\n\
         time.sleep(60)\n",
        gate = gate.display().to_string()
    );
    let out = dir.path().join("client.out");
    let client = ChildGuard::spawn(
        "grpc client",
        Command::new(python).args(["-c", &wrapper]).stdout(std::fs::File::create(&out).unwrap()),
    );
    let observer = Observer::attach(&[client.pid()]);
    std::fs::write(&gate, "").unwrap();
    wait_until("the client's calls", Duration::from_secs(20), || {
        !std::fs::read_to_string(&out).unwrap_or_default().is_empty()
    });
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "INTERNAL=5 NOT_FOUND=15 OK=40");

    let scrape = observer.scrape_until("60 calls", |s| s.sum("grpc_client_handled_total", &[]) >= 60.0);
    let logged = std::fs::read_to_string(&log).unwrap();
    let server_count = |line: &str| logged.lines().filter(|l| *l == line).count() as f64;
    for (code, ours) in [("OK", "OK"), ("NotFound", "NotFound"), ("Internal", "Internal")] {
        let handled = scrape.sum(
            "grpc_client_handled_total",
            &[("grpc_service", "observer.test.Boot"), ("grpc_method", "Get"), ("grpc_code", ours)],
        );
        assert_eq!(handled, server_count(&format!("Get {code}")), "{code}:\n{}", scrape.0);
    }
    assert_eq!(scrape.sum("grpc_client_handled_total", &[]), 60.0);
    let peer = format!("127.0.0.1:{port}");
    let requests = [("peer", peer.as_str()), ("method", "POST"), ("status", "200")];
    assert_eq!(scrape.sum("http_client_requests_total", &requests), 60.0, "{}", scrape.0);
    assert_eq!(scrape.sum("tcp_connect_duration_seconds_count", &[("peer", &peer)]), 1.0, "one channel");
    assert_eq!(scrape.sum("grpc_server_handled_total", &[]), 0.0, "nothing served");
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
}
