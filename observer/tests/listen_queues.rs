//! Starvation before the handler: a server too slow to accept fills its listen queue, the
//! kernel drops connection attempts, and connections wait long before their first read,
//! while every request's own duration looks fine. The observer must show all three.

mod common;

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use common::*;

/// python's http.server answering every GET after 30 ms, one request at a time
/// (`threading` false) or a thread each, with a listen backlog of `backlog`; it logs one
/// line per answered request to stderr (`log`).
fn start_python(port: u16, backlog: u32, threading: bool, log: &std::path::Path) -> ChildGuard {
    let server = ChildGuard::spawn(
        "python http.server",
        Command::new("python3")
            .args(["-c", &python_script(port, backlog, threading)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap()),
    );
    wait_for_port(port);
    server
}

fn python_script(port: u16, backlog: u32, threading: bool) -> String {
    let server = if threading { "ThreadingHTTPServer" } else { "HTTPServer" };
    let script = format!(
        r##"
import http.server, sys, time
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.03)
        body = b"#!ipxe\nboot\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, format, *args):
        sys.stderr.write("answered %s\n" % self.path)
        sys.stderr.flush()
class Server(http.server.{server}):
    request_queue_size = {backlog}
Server(("127.0.0.1", {port}), Handler).serve_forever()
"##
    );
    script
}

/// A command run in the network namespace of `pid` (none: ours).
fn in_namespace_of(pid: Option<u32>, program: &str) -> Command {
    match pid {
        None => Command::new(program),
        Some(pid) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/proc/{pid}/ns/net")).arg(program);
            cmd
        }
    }
}

/// `clients` simultaneous curl transfers, one connection each; the status of each (0 for a
/// transfer that gave up).
fn storm(port: u16, clients: usize, namespace_of: Option<u32>) -> Vec<u16> {
    let mut cmd = in_namespace_of(namespace_of, "curl");
    cmd.args(["--silent", "--parallel", "--parallel-immediate", "--parallel-max", &clients.to_string()])
        .args(["--connect-timeout", "45", "--max-time", "60", "--write-out", "%{http_code}\\n"]);
    for i in 0..clients {
        cmd.args(["--output", "/dev/null", &format!("http://127.0.0.1:{port}/boot/52:54:00:00:00:{i:02x}")]);
    }
    let out = cmd.output().expect("running curl");
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.trim().parse().unwrap_or(0)).collect()
}

/// The kernel's own drop count for the listener on `port` (`ss -m`: skmem's `d` field).
fn kernel_drops(port: u16, namespace_of: Option<u32>) -> f64 {
    let out = in_namespace_of(namespace_of, "ss")
        .args(["-ltnmH", &format!("sport = :{port}")])
        .output()
        .expect("running ss");
    let text = String::from_utf8(out.stdout).unwrap();
    let skmem = text.split("skmem:(").nth(1).unwrap_or_else(|| panic!("no listener on {port}: {text}"));
    skmem
        .split([',', ')'])
        .find_map(|field| field.strip_prefix('d')?.parse().ok())
        .unwrap_or_else(|| panic!("no drop count in {text}"))
}

fn answered(log: &std::path::Path) -> f64 {
    std::fs::read_to_string(log).unwrap().lines().filter(|l| l.starts_with("answered /boot/")).count() as f64
}

#[test]
fn a_starved_listener_shows_its_queue_its_drops_and_the_waits() {
    require_root();
    require_command("python3");
    require_command("curl");
    require_command("ss");
    let dir = TempDir::new("starved");
    let log = dir.path().join("server.log");
    let port = free_port();
    let server = start_python(port, 4, false, &log);
    let observer = Observer::attach(&[server.pid()]);
    let port_label = port.to_string();

    // Watch the queue while the storm runs.
    let running = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (running, addr) = (running.clone(), observer.addr);
        let port_label = port_label.clone();
        thread::spawn(move || {
            let (mut longest, mut limit) = (0.0f64, 0.0f64);
            while running.load(Ordering::Relaxed) {
                if let Some(text) = try_http_get(addr, "/metrics") {
                    let scrape = Scrape(text);
                    longest = longest.max(scrape.sum("tcp_listen_queue_length", &[("port", &port_label)]));
                    limit = scrape.sum("tcp_listen_queue_limit", &[("port", &port_label)]);
                }
                thread::sleep(Duration::from_millis(50));
            }
            (longest, limit)
        })
    };
    let statuses = storm(port, 60, None);
    running.store(false, Ordering::Relaxed);
    let (longest, limit) = watcher.join().unwrap();

    let served = answered(&log);
    let ok = statuses.iter().filter(|&&s| s == 200).count() as f64;
    eprintln!("{ok} of 60 answered ({served} by the server's log), longest queue {longest}, limit {limit}");
    assert_eq!(ok, served, "the server's count and the clients'");
    assert!(longest >= 1.0, "a queue was seen while the storm ran");
    assert_eq!(limit, 4.0, "the backlog in force");

    let scrape = observer.scrape_settled(served);
    let drops = scrape.sum("tcp_listen_drops_total", &[("port", &port_label)]);
    let kernel = kernel_drops(port, None);
    eprintln!("drops: observer {drops}, kernel {kernel}");
    assert!(drops > 0.0, "the kernel dropped attempts:\n{}", scrape.0);
    assert_eq!(drops, kernel, "the listener's own drop count");

    // Every request the server answered, exactly; one wait per answered connection, and the
    // waits, not the requests, are where the time went.
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/boot/{id}"), ("status", "200")]), served);
    let waits = scrape.sum("http_connection_wait_seconds_count", &[("endpoint", "/boot/{id}")]);
    // Which path each connection's open took, should a sample go missing again (kernel
    // counters reach the metrics at the daemon's once-a-second tick).
    thread::sleep(Duration::from_millis(1100));
    let counters = observer.scrape();
    eprintln!(
        "opens unseen {}, waits missing {}, skipped program runs {:?}",
        counters.sum("observer_connection_opens_unseen_total", &[]),
        counters.sum("observer_connection_waits_missing_total", &[]),
        counters.samples("observer_kernel_program_misses_total").collect::<Vec<_>>()
    );
    assert_eq!(waits, served, "one wait sample per answered connection");
    let waited = scrape.sum("http_connection_wait_seconds_sum", &[("endpoint", "/boot/{id}")]);
    let handled = scrape.sum("http_request_duration_seconds_sum", &[("endpoint", "/boot/{id}")]);
    eprintln!("total wait {waited:.3} s, total request duration {handled:.3} s");
    assert!(waited > handled, "waited {waited} s, handled {handled} s");
    // Series only for the target's listener.
    assert_eq!(scrape.label_values("tcp_listen_queue_limit", "port"), vec![port_label]);
}

#[test]
fn an_unstarved_listener_drops_nothing_and_connections_do_not_wait() {
    require_root();
    require_command("python3");
    require_command("curl");
    require_command("ss");
    let dir = TempDir::new("unstarved");
    let log = dir.path().join("server.log");
    let port = free_port();
    let server = start_python(port, 1024, true, &log);
    let observer = Observer::attach(&[server.pid()]);
    let statuses = storm(port, 60, None);
    assert_eq!(statuses, vec![200; 60]);
    let served = answered(&log);
    assert_eq!(served, 60.0);
    let scrape = observer.scrape_settled(served);
    let port_label = port.to_string();
    assert_eq!(scrape.sum("tcp_listen_drops_total", &[("port", &port_label)]), 0.0, "{}", scrape.0);
    assert_eq!(kernel_drops(port, None), 0.0);
    assert_eq!(scrape.sum("tcp_listen_queue_limit", &[("port", &port_label)]), 1024.0, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/boot/{id}")]), served);
    let waits = scrape.sum("http_connection_wait_seconds_count", &[]);
    let mean = scrape.sum("http_connection_wait_seconds_sum", &[]) / waits;
    eprintln!("mean wait {:.1} ms over {waits} connections", mean * 1e3);
    assert_eq!(waits, served);
    assert!(mean < 0.05, "connections waited {mean} s on average with room to spare");
}

/// A server in a network namespace of its own (as in a pod, seen from a node's observer):
/// its listener is sampled there, where the observer's namespace has no such listener.
#[test]
fn a_listener_in_another_network_namespace_is_sampled_there() {
    require_root();
    require_command("python3");
    require_command("unshare");
    require_command("nsenter");
    require_command("ip");
    let dir = TempDir::new("netns");
    let log = dir.path().join("server.log");
    let port = free_port();
    // unshare and sh exec into python: the guard's pid is the server's.
    let server = ChildGuard::spawn(
        "python http.server in a new network namespace",
        Command::new("unshare")
            .args(["--net", "sh", "-ec", "ip link set lo up; exec python3 -c \"$0\""])
            .arg(python_script(port, 4, false))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let pid = server.pid();
    wait_until("the server to listen in its namespace", Duration::from_secs(10), || {
        in_namespace_of(Some(pid), "ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    });
    let observer = Observer::attach(&[pid]);
    let statuses = storm(port, 30, Some(pid));
    let served = answered(&log);
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count() as f64, served);
    let scrape = observer.scrape_settled(served);
    let port_label = port.to_string();
    assert_eq!(scrape.sum("tcp_listen_queue_limit", &[("port", &port_label)]), 4.0, "{}", scrape.0);
    let drops = scrape.sum("tcp_listen_drops_total", &[("port", &port_label)]);
    assert_eq!(drops, kernel_drops(port, Some(pid)), "the listener's own count, in its namespace");
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/boot/{id}")]), served);
    assert_eq!(scrape.sum("http_connection_wait_seconds_count", &[]), served);
}

/// Connections in `port`'s accept queue (`ss`: a listener's Recv-Q).
fn accept_queue(port: u16) -> u32 {
    let out = Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output().expect("running ss");
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).and_then(|q| q.parse().ok()).unwrap_or(0)
}

fn signal(pid: u32, name: &str) {
    assert!(Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap().success());
}

/// The path that lost wait samples, taken on purpose: the kernel program never sees these
/// connections' handshakes complete (they complete while the server is stopped, before the
/// observer attaches), so their first read finds no entry made at the open. The socket
/// itself says they are new (nothing read or sent before that read) and when they were
/// made: each still gets its one wait sample, as long as the server kept it waiting, and is
/// counted as an unseen open.
#[test]
fn connections_whose_open_was_not_seen_still_get_their_wait() {
    require_root();
    require_command("python3");
    require_command("curl");
    require_command("ss");
    let dir = TempDir::new("unseen");
    let log = dir.path().join("server.log");
    let port = free_port();
    let server = start_python(port, 16, false, &log);
    const CLIENTS: usize = 8;
    signal(server.pid(), "STOP");
    let clients = thread::spawn(move || storm(port, CLIENTS, None));
    wait_until("the handshakes to fill the accept queue", Duration::from_secs(10), || {
        accept_queue(port) == CLIENTS as u32
    });
    let observer = Observer::attach(&[server.pid()]);
    const STOPPED: Duration = Duration::from_secs(1);
    thread::sleep(STOPPED);
    signal(server.pid(), "CONT");
    let statuses = clients.join().unwrap();
    assert_eq!(statuses, vec![200; CLIENTS]);
    let served = answered(&log);
    assert_eq!(served, CLIENTS as f64);

    let scrape = observer.scrape_settled(served);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/boot/{id}")]), served);
    assert_eq!(
        scrape.sum("http_connection_wait_seconds_count", &[]),
        served,
        "one wait sample each:\n{}",
        scrape.0
    );
    // Kernel counters reach the metrics at the daemon's once-a-second tick.
    observer.scrape_until("each connection counted as found new at its first read", |s| {
        s.sum("observer_connection_opens_unseen_total", &[]) == served
    });
    assert_eq!(scrape.sum("observer_connection_waits_missing_total", &[]), 0.0);
    let waited = scrape.sum("http_connection_wait_seconds_sum", &[]);
    eprintln!("total wait {waited:.3} s over {served} connections");
    assert!(waited >= served * STOPPED.as_secs_f64(), "each waited at least while the server was stopped");
    // A bound from above: no more than the whole test took (a wrong clock would be way off).
    assert!(waited <= served * 30.0, "waited {waited} s");
}
