//! The client role: the connections a target opens to its upstreams are followed from their
//! connect, their requests counted per peer against the upstream's own log, and failed
//! connects counted with their reasons. The server side stays what it was.

mod common;

use std::{net::TcpStream, path::Path, process::Command, time::Duration};

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
    let _upstream = start_python_upstream(&upstream_dir, upstream_port, Some(&upstream_log));
    let (_stuck, _filler) = start_stuck_listener(stuck);
    let port = free_port();
    let nginx = start_nginx(&dir, port, upstream_port, closed, stuck);
    // One upstream named on the command line, one in the routes file.
    let named = format!("127.0.0.1:{upstream_port}=boot-files");
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, format!("[[peer]]\naddress = \"127.0.0.1:{closed}\"\nname = \"down\"\n"))
        .unwrap();
    let routes = routes.display().to_string();
    let observer = Observer::on(&[nginx.pid()]).args(&["--peer-name", &named, "--routes", &routes]).start();

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
    let down = "down";
    let stuck_peer = format!("127.0.0.1:{stuck}");
    let failures =
        |peer: &str, reason| scrape.sum("tcp_connect_failures_total", &[("peer", peer), ("reason", reason)]);
    assert_eq!(failures(down, "refused"), 5.0, "{text}");
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
    let gate = GatedClient::gate(&dir);
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
    let run = GatedClient::start("python client", &dir, Command::new("python3").args(["-c", &script]), &[]);
    let out = run.output_when("both connects to fail", Duration::from_secs(20), |o| o.lines().count() == 2);
    assert_eq!(out, "110\n110\n", "ETIMEDOUT, as the client saw it");
    let observer = &run.observer;
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
    let gate = GatedClient::gate(&dir);
    let wrapper = format!(
        "import os, runpy, sys, time\n\
         while not os.path.exists({gate:?}): time.sleep(0.05)\n\
         sys.argv = ['grpc-client.py', '{port}', 'unary', '40', '15', '5']\n\
         runpy.run_path('{scripts}/grpc-client.py', run_name='__main__')\n\
         sys.stdout.flush()\n\
         time.sleep(60)\n",
        gate = gate.display().to_string()
    );
    let run = GatedClient::start("grpc client", &dir, Command::new(python).args(["-c", &wrapper]), &[]);
    let out = run.output_when("the client's calls", Duration::from_secs(20), |o| !o.is_empty());
    assert_eq!(out.trim(), "INTERNAL=5 NOT_FOUND=15 OK=40");
    let observer = &run.observer;

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

/// Waits for `gate` to exist, then runs `body` (python, indented one level), then stays.
fn gated_python(gate: &Path, body: &str) -> String {
    format!(
        "import os, socket, sys, time\nwhile not os.path.exists({:?}): time.sleep(0.05)\nif True:\n{body}\nprint('done', flush=True)\ntime.sleep(60)\n",
        gate.display().to_string()
    )
}

/// A target that connects to 10,000 distinct peers (127.x.y.1:9, nothing listening: each
/// refused at once): at most the cap of peer series plus `other`, every failure counted.
#[test]
fn ten_thousand_peers_stay_within_the_label_cap() {
    require_root();
    require_command("python3");
    let dir = TempDir::new("outbound-peers");
    let gate = GatedClient::gate(&dir);
    let body = "    for i in range(10000):\n\
                \x20       s = socket.socket()\n\
                \x20       s.connect_ex(('127.%d.%d.1' % (1 + i // 200, 1 + i % 200), 9))\n\
                \x20       s.close()";
    let mut python = Command::new("python3");
    python.args(["-c", &gated_python(&gate, body)]);
    let run = GatedClient::start("python client", &dir, &mut python, &["--max-peers", "50"]);
    run.output_when("10,000 connects", Duration::from_secs(60), |o| o.contains("done"));
    let observer = &run.observer;
    let scrape =
        observer.scrape_until("every failure", |s| s.sum("tcp_connect_failures_total", &[]) >= 10_000.0);
    assert_eq!(scrape.sum("tcp_connect_failures_total", &[("reason", "refused")]), 10_000.0, "{}", scrape.0);
    let series = scrape.samples("tcp_connect_failures_total").count();
    assert_eq!(series, 51, "50 peers and other");
    assert_eq!(scrape.sum("tcp_connect_failures_total", &[("peer", "other")]), 9_950.0);
    assert_eq!(scrape.sum("observer_peers_overflowed_total", &[]), 9_950.0);
    assert_eq!(scrape.sum("observer_events_lost_total", &[]), 0.0);
    let status = std::fs::read_to_string(format!("/proc/{}/status", observer.guard.pid())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    eprintln!("observer RSS after 10,000 peers: {} MiB", rss_kb / 1024);
    assert!(rss_kb < 96 * 1024, "{rss_kb} kB");
}

/// node's `http2` client as the target, calling node's server in clear text and over TLS:
/// its requests counted per peer and status against the server's own counts.
#[test]
fn a_node_http2_client_s_requests_are_counted_per_status() {
    require_root();
    require_command("node");
    let dir = TempDir::new("outbound-node");
    let (cert, key) = self_signed_cert(&dir);
    let (h2c_port, tls_port, count_port) = (free_port(), free_port(), free_port());
    let servers = format!("{}/tests/servers", env!("CARGO_MANIFEST_DIR"));
    let _server = ChildGuard::spawn(
        "node http2 server",
        Command::new("node")
            .arg(format!("{servers}/node-http2-server.js"))
            .args([h2c_port.to_string(), tls_port.to_string(), count_port.to_string()])
            .args([&cert, &key]),
    );
    for port in [h2c_port, tls_port, count_port] {
        wait_for_port(port);
    }
    let gate = GatedClient::gate(&dir);
    let script = format!(
        r#"const fs = require('fs'); const http2 = require('http2');
const wait = () => fs.existsSync({gate:?}) ? run() : setTimeout(wait, 50);
function request(session, method, path) {{
  return new Promise((done) => {{
    const req = session.request({{ ':method': method, ':path': path }});
    req.on('response', (h) => {{ req.on('data', () => {{}}); req.on('end', () => done(h[':status'])); }});
    if (method === 'POST') req.end('mac=aa'); else req.end();
  }});
}}
async function requests(url) {{
  const session = http2.connect(url, {{ rejectUnauthorized: false }});
  const paths = [];
  for (let i = 0; i < 20; i++) paths.push(['GET', '/boot/' + i]);
  for (let i = 0; i < 10; i++) paths.push(['GET', '/missing/' + i]);
  for (let i = 0; i < 5; i++) paths.push(['POST', '/boot/p' + i]);
  const statuses = await Promise.all(paths.map(([m, p]) => request(session, m, p)));
  session.close();
  return statuses.join(' ');
}}
async function run() {{
  console.log(await requests('http://127.0.0.1:{h2c_port}'));
  console.log(await requests('https://127.0.0.1:{tls_port}'));
  setTimeout(() => {{}}, 60000);
}}
wait();
"#,
        gate = gate.display().to_string()
    );
    let run = GatedClient::start("node http2 client", &dir, Command::new("node").args(["-e", &script]), &[]);
    let out = run.output_when("the client's requests", Duration::from_secs(20), |o| o.lines().count() == 2);
    assert_eq!(out.split_whitespace().count(), 70, "the client's statuses: {out}");
    let observer = &run.observer;
    let counts = http_get_text(format!("127.0.0.1:{count_port}").parse().unwrap(), "/");
    assert_eq!(counts, r#"{"200":40,"201":10,"404":20}"#, "the server's own counts");
    let scrape = observer.scrape_until("70 requests", |s| s.sum("http_client_requests_total", &[]) >= 70.0);
    // In clear text, and over TLS: node's static OpenSSL on memory BIOs moves no socket bytes
    // inside its calls, so its sessions are tied to no socket and their peer is not known.
    for peer in [format!("127.0.0.1:{h2c_port}"), "unknown".to_owned()] {
        let count = |method, status| {
            scrape
                .sum("http_client_requests_total", &[("peer", &peer), ("method", method), ("status", status)])
        };
        assert_eq!(
            (count("GET", "200"), count("GET", "404"), count("POST", "201")),
            (20.0, 10.0, 5.0),
            "{peer}\n{}",
            scrape.0
        );
    }
    assert_eq!(scrape.sum("http_client_requests_total", &[]), 70.0);
    assert_eq!(scrape.sum("http_requests_total", &[]), 0.0, "nothing served: {}", scrape.0);
    let connects = |port: u16| {
        scrape.sum("tcp_connect_duration_seconds_count", &[("peer", &format!("127.0.0.1:{port}"))])
    };
    assert_eq!((connects(h2c_port), connects(tls_port)), (1.0, 1.0), "{}", scrape.0);
    assert_eq!(scrape.sum("http_client_requests_in_flight", &[]), 0.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
}

/// nginx `proxy_pass https://` to two upstreams, TLS 1.3 and TLS 1.2 (sessions resumed after
/// the first): its upstream requests counted per peer and status against each upstream's own
/// log, from session keys (the default) and from per-call uprobes (`--tls calls`).
#[test]
fn nginx_https_upstream_requests_are_counted_from_keys_and_from_calls() {
    require_root();
    require_command("nginx");
    let (up13_dir, up12_dir) = (TempDir::new("outbound-up13"), TempDir::new("outbound-up12"));
    let (_up13, tls13) = start_nginx_tls(&up13_dir, "master_process off;", "TLSv1.3", false);
    let (_up12, tls12) = start_nginx_tls(&up12_dir, "master_process off;", "TLSv1.2", false);
    let dir = TempDir::new("outbound-https");
    let port = free_port();
    let locations = format!(
        "        location /up13/ {{ proxy_pass https://127.0.0.1:{tls13}/; proxy_ssl_protocols TLSv1.3; }}\n\
         location /up12/ {{ proxy_pass https://127.0.0.1:{tls12}/; proxy_ssl_protocols TLSv1.2; }}"
    );
    let conf = write_nginx_conf_with(
        &dir,
        port,
        NginxConf {
            processes: "master_process off;",
            access_log: true,
            locations: &locations,
            ..Default::default()
        },
    );
    let nginx = start_nginx_conf(&conf, port);
    let urls = |path: &str, n: usize| {
        (0..n).map(|i| format!("http://127.0.0.1:{port}{path}?n={i}")).collect::<Vec<_>>()
    };
    let logged =
        |dir: &TempDir, status: u16| access_log(dir).iter().filter(|(_, s)| *s == status).count() as f64;
    for mode in ["keys", "calls"] {
        let before =
            [logged(&up13_dir, 200), logged(&up13_dir, 404), logged(&up12_dir, 200), logged(&up12_dir, 404)];
        let observer = Observer::on(&[nginx.pid()]).args(&["--tls", mode]).start();
        assert_eq!(curl(&[], &urls("/up13/files/small.txt", 20)), vec![200; 20]);
        assert_eq!(curl(&[], &urls("/up13/files/none", 5)), vec![404; 5]);
        assert_eq!(curl(&[], &urls("/up12/files/small.txt", 15)), vec![200; 15]);
        assert_eq!(curl(&[], &urls("/up12/files/none", 4)), vec![404; 4]);
        let scrape = observer
            .scrape_until("44 upstream requests", |s| s.sum("http_client_requests_total", &[]) >= 44.0);
        let text = &scrape.0;
        let (peer13, peer12) = (format!("127.0.0.1:{tls13}"), format!("127.0.0.1:{tls12}"));
        let count = |peer: &str, status| {
            scrape.sum("http_client_requests_total", &[("peer", peer), ("status", status)])
        };
        assert_eq!(count(&peer13, "200"), logged(&up13_dir, 200) - before[0], "{mode}: {text}");
        assert_eq!(count(&peer13, "404"), logged(&up13_dir, 404) - before[1], "{mode}: {text}");
        assert_eq!(count(&peer12, "200"), logged(&up12_dir, 200) - before[2], "{mode}: {text}");
        assert_eq!(count(&peer12, "404"), logged(&up12_dir, 404) - before[3], "{mode}: {text}");
        assert_eq!((count(&peer13, "200"), count(&peer12, "404")), (20.0, 4.0), "{mode}");
        assert_eq!(scrape.sum("http_client_requests_total", &[]), 44.0, "{mode}: {text}");
        assert_eq!(scrape.sum("http_requests_total", &[]), 44.0, "{mode}: the served side");
        assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{mode}: {text}");
        assert_eq!(scrape.sum("observer_tls_keyed_lost_total", &[]), 0.0, "{mode}: {text}");
        assert_eq!(scrape.sum("observer_tls_keyed_fall_backs_total", &[]), 0.0, "{mode}: {text}");
    }
}
