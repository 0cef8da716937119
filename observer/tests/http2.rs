//! HTTP/2, server side, against real servers and clients: nginx in clear text (h2c, prior
//! knowledge) and over TLS (ALPN `h2`), driven by h2load with many concurrent streams per
//! connection; every stream counted as the server's own access log counts it.

mod common;

use std::{collections::BTreeMap, process::Command};

use common::*;

/// Requests per status in nginx's access log.
fn per_status(dir: &TempDir) -> BTreeMap<u16, f64> {
    let mut counts = BTreeMap::new();
    for (_, status) in access_log(dir) {
        *counts.entry(status).or_insert(0.0) += 1.0;
    }
    counts
}

const LOCATIONS: &str = "        location = /ok { return 200 \"ok\\n\"; }\n";

/// `h2load` with `args` against `urls` (round robin); panics unless every request got a
/// response (h2load counts 4xx as failed: those are the 404s asked for).
fn h2load(args: &[&str], urls: &[String]) -> String {
    let out = Command::new("h2load").args(args).args(urls).output().expect("running h2load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "h2load failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(" 0 errored, 0 timeout"), "h2load saw errors:\n{text}");
    text
}

/// nginx (master and 2 workers) with `conf`, observed (with `args`); h2load's requests (200s
/// and 404s, `-c 8 -m 50`) counted per status as nginx logged them.
fn nginx_h2_counted_exactly(name: &str, tls: bool, args: &[&str]) -> Scrape {
    require_root();
    require_command("nginx");
    require_command("h2load");
    let dir = TempDir::new(name);
    let (port, tls_port) = (free_port(), free_port());
    let conf = NginxConf {
        processes: "worker_processes 2;",
        access_log: true,
        locations: LOCATIONS,
        h2c: !tls,
        http2: tls,
        tls_port: tls.then_some(tls_port),
        ..Default::default()
    };
    let conf = write_nginx_conf_with(&dir, port, conf);
    let nginx = start_nginx_conf(&conf, port);
    if tls {
        wait_for_port(tls_port);
    }
    let observer = Observer::on(&[nginx.pid()]).args(args).start();
    let base = if tls { format!("https://127.0.0.1:{tls_port}") } else { format!("http://127.0.0.1:{port}") };
    let urls: Vec<String> =
        ["/ok", "/files/small.txt", "/ok", "/missing"].iter().map(|p| format!("{base}{p}")).collect();
    let n = 20_000;
    h2load(&["-n", &n.to_string(), "-c", "8", "-m", "50"], &urls);

    let scrape = observer.scrape_settled(f64::from(n));
    let logged = per_status(&dir);
    assert_eq!(logged.values().sum::<f64>(), f64::from(n), "nginx's own count");
    assert_eq!(logged.len(), 2, "200s and 404s: {logged:?}");
    for (status, count) in &logged {
        let ours = scrape.sum("http_requests_total", &[("status", &status.to_string())]);
        assert_eq!(ours, *count, "status {status}:\n{}", scrape.0);
    }
    let ok = scrape.sum("http_requests_total", &[("endpoint", "/ok"), ("method", "GET")]);
    assert_eq!(ok, f64::from(n) / 2.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_request_duration_seconds_count", &[]), f64::from(n));
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_events_lost_total", &[]), 0.0);
    scrape
}

#[test]
fn nginx_h2c_streams_are_counted_exactly() {
    nginx_h2_counted_exactly("h2c-nginx", false, &[]);
}

#[test]
fn nginx_h2_over_tls_streams_are_counted_exactly() {
    require_command("openssl");
    nginx_h2_counted_exactly("h2-tls-nginx", true, &[]);
}

/// The same with only the handshake hooked (TLS 1.2, nginx's default here): each session's
/// ALPN says h2, its ciphertext is copied whole and its frames walked after decrypting.
#[test]
fn nginx_h2_over_tls_streams_are_counted_exactly_from_session_keys() {
    require_command("openssl");
    let scrape = nginx_h2_counted_exactly("h2-tls-keys-nginx", true, &["--tls", "keys"]);
    assert_eq!(
        scrape.sum("observer_tls_keyed_verified_total", &[]),
        8.0,
        "h2load's connections:\n{}",
        scrape.0
    );
    assert_eq!(scrape.sum("observer_tls_keyed_lost_total", &[]), 0.0, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_tls_keyed_fall_backs_total", &[]), 0.0, "{}", scrape.0);
}

/// Debian's python with Debian's grpcio (`python3` on PATH may be another one).
const GRPC_PYTHON: &str = "/usr/bin/python3";

fn grpc_script(name: &str) -> String {
    format!("{}/tests/servers/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn grpc_calls_are_counted_by_code_and_a_stream_is_timed_whole() {
    require_root();
    assert!(
        Command::new(GRPC_PYTHON).args(["-c", "import grpc"]).status().is_ok_and(|s| s.success()),
        "{GRPC_PYTHON} cannot import grpc: run `cargo xtask setup` (python3-grpcio)"
    );
    let dir = TempDir::new("grpc");
    let port = free_port();
    let log = dir.path().join("calls.log");
    let server = ChildGuard::spawn(
        "grpc server",
        Command::new(GRPC_PYTHON).arg(grpc_script("grpc-server.py")).arg(port.to_string()).arg(&log),
    );
    wait_for_port(port);
    let observer = Observer::attach(&[server.pid()]);
    let client = |args: &[&str]| {
        let out = Command::new(GRPC_PYTHON)
            .arg(grpc_script("grpc-client.py"))
            .arg(port.to_string())
            .args(args)
            .output()
            .expect("running the gRPC client");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(client(&["unary", "60", "25", "15"]).trim(), "INTERNAL=15 NOT_FOUND=25 OK=60");

    // A 2 s server-streaming call: in flight while it runs, timed whole when it ends.
    let stream = std::thread::scope(|scope| {
        let watching = scope.spawn(|| client(&["watch"]));
        observer.scrape_until("the stream in flight", |s| {
            s.sum("http_requests_in_flight", &[("endpoint", "/observer.test.Boot/Watch")]) == 1.0
        });
        watching.join().unwrap()
    });
    let client_seconds: f64 = stream.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(client_seconds >= 2.0, "{stream}");

    let scrape = observer.scrape_settled(101.0);
    let logged = std::fs::read_to_string(&log).unwrap();
    let server_count = |line: &str| logged.lines().filter(|l| *l == line).count() as f64;
    let handled = |method: &str, code: &str| {
        scrape.sum(
            "grpc_server_handled_total",
            &[("grpc_service", "observer.test.Boot"), ("grpc_method", method), ("grpc_code", code)],
        )
    };
    for (code, ours) in [("OK", "OK"), ("NotFound", "NotFound"), ("Internal", "Internal")] {
        assert_eq!(handled("Get", ours), server_count(&format!("Get {code}")), "{code}:\n{}", scrape.0);
    }
    assert_eq!(handled("Watch", "OK"), 1.0, "{}", scrape.0);
    assert_eq!(scrape.sum("grpc_server_started_total", &[]), 101.0);
    assert_eq!(scrape.sum("grpc_server_handled_total", &[]), 101.0);
    let watch = [("grpc_method", "Watch")];
    let stream_seconds = scrape.sum("grpc_server_handling_seconds_sum", &watch);
    assert!(
        (1.9..=client_seconds).contains(&stream_seconds),
        "the stream took {stream_seconds} s by us, {client_seconds} s by the client"
    );
    // gRPC calls are HTTP/2 requests too: 200 each, in the seed's metrics.
    assert_eq!(scrape.sum("http_requests_total", &[("status", "200")]), 101.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
}

/// curl over one connection with `args`, certificates not checked: each response's status.
fn curl_statuses(args: &[&str], urls: &[String]) -> Vec<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--insecure", "--max-time", "10"]).args(args);
    for url in urls {
        cmd.args(["--output", "/dev/null", "--write-out", "%{http_code} %{http_version}\\n", url]);
    }
    let out = cmd.output().expect("running curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            assert!(line.ends_with(" 2"), "not HTTP/2: {line}");
            line.split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// `curl --http2` on `http://` asks for `Upgrade: h2c`; Apache's mod_http2 answers 101 and
/// stream 1 carries the upgrading request's response. Apache logs that request twice (its 101
/// as HTTP/1.1 and its answer as HTTP/2.0); it is one request, counted once, by its final
/// status. One request per connection: Apache 2.4.71 often sends GOAWAY (last stream 1,
/// "timeout") right after an upgraded stream 1, and curl's next request on the connection
/// fails (the refused stream is not counted: unit-tested in `http2::conn_tests`).
#[test]
fn apache_h2c_upgrades_count_the_upgrading_request_once_by_its_http2_answer() {
    require_root();
    require_command("curl");
    let apache2 = "/usr/sbin/apache2";
    assert!(std::path::Path::new(apache2).exists(), "{apache2} is missing: run `cargo xtask setup`");
    let dir = TempDir::new("h2c-apache");
    let port = free_port();
    let apache = start_apache_h2c(&dir, port);
    let observer = Observer::attach(&[apache.pid()]);
    let paths = ["/index.html", "/missing", "/index.html"];
    let connections = 5 * paths.len();
    for path in paths.iter().cycle().take(connections) {
        let expected = if *path == "/missing" { 404 } else { 200 };
        assert_eq!(curl_statuses(&["--http2"], &[format!("http://127.0.0.1:{port}{path}")]), [expected]);
    }

    let requests = connections;
    let scrape = observer.scrape_settled(requests as f64);
    let log = apache_log(&dir);
    let logged =
        |status: u16, protocol: &str| log.iter().filter(|(s, p)| *s == status && p == protocol).count();
    assert_eq!(logged(101, "HTTP/1.1"), connections, "one upgrade per connection: {log:?}");
    assert_eq!(logged(200, "HTTP/2.0") + logged(404, "HTTP/2.0"), requests, "{log:?}");
    for status in [200, 404] {
        let ours = scrape.sum("http_requests_total", &[("status", &status.to_string())]);
        assert_eq!(ours, logged(status, "HTTP/2.0") as f64, "status {status}:\n{}", scrape.0);
    }
    assert_eq!(scrape.sum("http_requests_total", &[("status", "101")]), 0.0, "{}", scrape.0);
    let upgraded = scrape.sum("http_requests_total", &[("endpoint", "/index.html"), ("status", "200")]);
    assert_eq!(upgraded, 10.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_request_duration_seconds_count", &[]), requests as f64);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
}

#[test]
fn node_http2_in_clear_text_and_over_tls_with_continuation_frames_and_a_reset() {
    require_root();
    for command in ["node", "curl", "nghttp", "openssl"] {
        require_command(command);
    }
    let dir = TempDir::new("h2-node");
    let (cert, key) = self_signed_cert(&dir);
    let (h2c_port, tls_port, count_port) = (free_port(), free_port(), free_port());
    let server = ChildGuard::spawn(
        "node http2",
        Command::new("node")
            .arg(format!("{}/tests/servers/node-http2-server.js", env!("CARGO_MANIFEST_DIR")))
            .args([h2c_port.to_string(), tls_port.to_string(), count_port.to_string()])
            .args([&cert, &key]),
    );
    for port in [h2c_port, tls_port, count_port] {
        wait_for_port(port);
    }
    let observer = Observer::attach(&[server.pid()]);

    let urls = |base: &str, path: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{base}{path}{i}")).collect()
    };
    let (h2c, tls) = (format!("http://127.0.0.1:{h2c_port}"), format!("https://127.0.0.1:{tls_port}"));
    // h2c: h2load (curl's prior-knowledge mode fails its second request on node's h2c, with or
    // without the observer).
    let text =
        h2load(&["-n", "20", "-c", "1", "-m", "5"], &[format!("{h2c}/boot/a"), format!("{h2c}/missing/b")]);
    assert!(text.contains("status codes: 10 2xx, 0 3xx, 10 4xx"), "{text}");
    assert_eq!(curl_statuses(&["--http2", "--data", "mac=aa"], &urls(&tls, "/boot/", 4)), vec![201; 4]);
    assert_eq!(curl_statuses(&["--http2"], &urls(&tls, "/boot/", 10)), vec![200; 10]);
    // A header block too large for one frame: HEADERS and CONTINUATION frames.
    let big = format!("x-big: {}", "b".repeat(40_000));
    let nghttp = Command::new("nghttp")
        .args(["--null-out", "--continuation", "-H", &big, &format!("{h2c}/boot/continued")])
        .status()
        .expect("running nghttp");
    assert!(nghttp.success());
    // A stream reset mid-response: incomplete, not in flight.
    let reset = Command::new("curl")
        .args(["--silent", "--http2-prior-knowledge", "--output", "/dev/null", &format!("{h2c}/reset")])
        .status()
        .unwrap();
    assert!(!reset.success(), "curl should see the stream reset");

    let scrape = observer.scrape_until("35 requests answered, one incomplete", |s| {
        s.sum("http_requests_total", &[]) >= 35.0
            && s.sum("observer_requests_incomplete_total", &[]) >= 1.0
            && s.sum("http_requests_in_flight", &[]) == 0.0
    });
    let theirs = http_get_text(([127, 0, 0, 1], count_port).into(), "/");
    assert_eq!(theirs, r#"{"200":21,"201":4,"404":10,"reset":1}"#, "node's own count");
    let count = |status: &str| scrape.sum("http_requests_total", &[("status", status)]);
    assert_eq!((count("200"), count("201"), count("404")), (21.0, 4.0, 10.0), "{}", scrape.0);
    assert_eq!(scrape.sum("observer_requests_incomplete_total", &[("endpoint", "/reset")]), 1.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
}

/// An HTTP/2 client over one connection, by hand: HPACK against the static table and the
/// entries it inserts itself, so what it sends is exactly known.
struct RawH2 {
    stream: std::net::TcpStream,
    next_id: u32,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
}

impl RawH2 {
    fn connect(port: u16) -> Self {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
        RawH2 { stream, next_id: 1, input: Vec::new() }
    }

    /// Sends a GET with header block `block` (`:method GET` and `:scheme http` first) and
    /// waits for its response's END_STREAM.
    fn get(&mut self, block: &[u8]) {
        use std::io::{Read, Write};
        let block = [&[0x82, 0x86][..], block].concat();
        let id = self.next_id;
        self.next_id += 2;
        let mut frame = vec![0, 0, block.len() as u8, 0x1, 0x5];
        frame.extend(id.to_be_bytes());
        frame.extend(block);
        self.stream.write_all(&frame).unwrap();
        loop {
            while self.input.len() >= 9 {
                let len = usize::from(self.input[1]) << 8 | usize::from(self.input[2]);
                if self.input.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (self.input[3], self.input[4]);
                let on = u32::from_be_bytes(self.input[5..9].try_into().unwrap());
                self.input.drain(..9 + len);
                if on == id && (kind == 0x0 || kind == 0x1) && flags & 0x1 != 0 {
                    return;
                }
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).expect("nginx's response");
            assert!(n > 0, "nginx closed the connection");
            self.input.extend_from_slice(&buf[..n]);
        }
    }
}

/// A literal field with incremental indexing, its name from the static table (`index`).
fn indexed_literal(index: u8, value: &str) -> Vec<u8> {
    [&[0x40 | index, value.len() as u8][..], value.as_bytes()].concat()
}

#[test]
fn an_http2_connection_from_before_attach_has_every_later_request_counted() {
    require_root();
    require_command("nginx");
    let dir = TempDir::new("h2-late");
    let port = free_port();
    let conf = NginxConf {
        processes: "master_process off;\nworker_processes 1;",
        access_log: true,
        locations: "        location / { return 200 \"ok\\n\"; }\n",
        h2c: true,
        ..Default::default()
    };
    let nginx = start_nginx_conf(&write_nginx_conf_with(&dir, port, conf), port);
    let mut client = RawH2::connect(port);
    // Before attach: `:path /before` and `:authority b` go into both peers' tables (62, 63).
    client.get(&[indexed_literal(4, "/before"), indexed_literal(1, "b")].concat());
    let observer = Observer::attach(&[nginx.pid()]);
    // After: 5 requests with a literal path (known), 3 whose path is the entry from before
    // attach (unknown to the observer: counted under `unknown`); all reuse the authority.
    for _ in 0..5 {
        client.get(&[&[0x04, 5][..], b"/late", &[0xbe]].concat());
    }
    for _ in 0..3 {
        client.get(&[0xbf, 0xbe]);
    }
    let scrape = observer.scrape_settled(8.0);
    assert_eq!(access_log(&dir).len(), 9, "nginx's own count");
    assert_eq!(
        scrape.sum("http_requests_total", &[("endpoint", "/late"), ("status", "200")]),
        5.0,
        "{}",
        scrape.0
    );
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "unknown"), ("status", "200")]), 3.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[("reason", "http2_path_unknown")]), 3.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 3.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
}
