//! Response heads of any practical size: the first write of each response is captured far
//! enough (8 KiB) to hold a head with dozens of security-policy headers, so a keep-alive
//! connection that goes idle after its requests leaves none of them in flight. And heads
//! written piecemeal (wsgiref: status line, then each header) stay exact.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// `count` headers of about 120 bytes each: `X-Policy-N: <value>`.
fn policy_headers(count: usize) -> String {
    (0..count)
        .map(|i| format!("        add_header X-Policy-{i} \"default-src 'self'; script-src 'self' https://cdn{i}.example.net; frame-ancestors 'none'; report-to csp-{i}\" always;\n"))
        .collect()
}

fn start_nginx(dir: &TempDir, port: u16) -> ChildGuard {
    let locations = format!(
        "        location = /head-1k7 {{\n{small}            return 200 \"ok\\n\";\n        }}\n\
         location = /head-6k {{\n{large}            return 200 \"ok\\n\";\n        }}",
        small = policy_headers(13),
        large = policy_headers(50),
    );
    let conf = write_nginx_conf_with(
        dir,
        port,
        NginxConf {
            processes: "master_process off;",
            access_log: false,
            locations: &locations,
            ..Default::default()
        },
    );
    start_nginx_conf(&conf, port)
}

#[test]
fn long_response_heads_end_with_their_last_byte_on_an_idle_keep_alive_connection() {
    require_root();
    require_command("nginx");
    let dir = TempDir::new("response-heads");
    let port = free_port();
    let nginx = start_nginx(&dir, port);
    let addr = ([127, 0, 0, 1], port).into();
    // The heads really are that long.
    let head = |path: &str| {
        let out = Command::new("curl")
            .args(["--silent", "--head"])
            .arg(format!("http://{addr}{path}"))
            .output()
            .unwrap();
        out.stdout.len()
    };
    let (small, large) = (head("/head-1k7"), head("/head-6k"));
    assert!(
        (1_600..2_000).contains(&small) && (6_000..7_000).contains(&large),
        "heads of {small} and {large} bytes"
    );
    let observer = Observer::attach(&[nginx.pid()]);

    // Five requests each, on one keep-alive connection per head size, timed by the client;
    // then the connections stay open and idle while we look.
    let mut client_seconds = 0.0;
    let mut clients = Vec::new();
    for path in ["/head-1k7", "/head-6k"] {
        let mut client = RawClient::connect(addr).nodelay();
        for _ in 0..5 {
            let started = Instant::now();
            assert_eq!(client.get(path), 200);
            client_seconds += started.elapsed().as_secs_f64();
        }
        clients.push(client);
    }
    let scrape = observer.scrape_settled(10.0);
    std::thread::sleep(Duration::from_millis(500));
    let scrape_idle = observer.scrape();
    for s in [&scrape, &scrape_idle] {
        assert_eq!(
            s.sum("http_requests_total", &[("endpoint", "/head-1k7"), ("status", "200")]),
            5.0,
            "{}",
            s.0
        );
        assert_eq!(
            s.sum("http_requests_total", &[("endpoint", "/head-6k"), ("status", "200")]),
            5.0,
            "{}",
            s.0
        );
        assert_eq!(s.sum("http_requests_in_flight", &[]), 0.0, "{}", s.0);
        assert_eq!(s.sum("observer_parse_errors_total", &[("reason", "truncated_capture")]), 0.0, "{}", s.0);
        assert_eq!(s.sum("observer_parse_errors_total", &[]), 0.0, "{}", s.0);
    }
    let observed = scrape_idle.sum("http_request_duration_seconds_sum", &[]);
    assert!(observed <= client_seconds, "observer {observed}s > client {client_seconds}s");
    // Response sizes include the whole head.
    let bytes = scrape_idle.sum("http_response_size_bytes_sum", &[("endpoint", "/head-6k")]);
    assert!(bytes >= 5.0 * large as f64, "{bytes} response bytes for five {large}-byte heads");
    drop(clients);
}

#[test]
fn a_head_written_one_header_at_a_time_is_counted_exactly() {
    require_root();
    require_command("python3");
    require_command("curl");
    let dir = TempDir::new("wsgiref");
    let port = free_port();
    // wsgiref's simple server writes the status line and each header in writes of their own.
    let serve = format!(
        "from wsgiref.simple_server import make_server, demo_app\n\
         make_server('127.0.0.1', {port}, demo_app).serve_forever()"
    );
    let log = dir.path().join("requests.log");
    let server = ChildGuard::spawn(
        "python wsgiref",
        Command::new("python3")
            .args(["-c", &serve])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_for_port(port);
    let observer = Observer::attach(&[server.pid()]);
    let urls: Vec<String> = (0..20).map(|i| format!("http://127.0.0.1:{port}/boot/{i}")).collect();
    assert_eq!(curl(&[], &urls), vec![200; 20]);
    let scrape = observer.scrape_settled(20.0);
    let logged =
        std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("\"GET /boot/")).count();
    assert_eq!(logged, 20, "the server's own count");
    assert_eq!(scrape.sum("http_requests_total", &[("status", "200")]), 20.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_total", &[]), 20.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
}
