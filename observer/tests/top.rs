//! `observer top` in a real terminal (tmux, 80×24): rows per endpoint with live numbers,
//! sorting by keys, quitting; reading a running daemon or attaching to a PID itself.

mod common;

use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::*;

/// A tmux server of its own running one command in an 80×24 window; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        require_command("tmux");
        let tmux = Tmux { socket: format!("observer-test-{}", std::process::id()) };
        let _ = tmux.run(&["kill-server"]);
        let status =
            tmux.command().args(["new-session", "-d", "-x", "80", "-y", "24", command]).status().unwrap();
        assert!(status.success(), "tmux new-session");
        tmux
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Option<String> {
        let out = self.command().args(args).output().unwrap();
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"]).expect("the pane is there")
    }

    fn keys(&self, keys: &str) {
        assert!(self.run(&["send-keys", keys]).is_some(), "send-keys {keys}");
    }

    /// Waits until the screen satisfies `ok`; returns it.
    fn screen_until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what}:\n{screen}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn gone(&self) -> bool {
        self.run(&["has-session"]).is_none()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The columns of the row of `endpoint`: [endpoint, req/s, in flight, p50, p99, err%, bytes/s].
fn row(screen: &str, endpoint: &str) -> Option<Vec<String>> {
    let line = screen.lines().find(|l| l.split_whitespace().next() == Some(endpoint))?;
    Some(line.split_whitespace().map(str::to_owned).collect())
}

/// The endpoint of the row under the header (listener lines come above the header).
fn first_row(screen: &str) -> String {
    let mut lines = screen.lines().skip_while(|l| !l.contains("ENDPOINT"));
    lines.nth(1).and_then(|l| l.split_whitespace().next()).unwrap_or_default().to_owned()
}

/// Keep-alive requests until stopped (bounded: 60 s).
fn traffic(
    addr: SocketAddr,
    paths: &'static [&'static str],
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut client = RawClient::connect(addr).nodelay();
        let started = Instant::now();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            client.get(paths[i % paths.len()]);
            i += 1;
            thread::sleep(Duration::from_millis(5));
        }
    })
}

struct StopOnDrop(Arc<AtomicBool>, Vec<thread::JoinHandle<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for handle in self.1.drain(..) {
            let _ = handle.join();
        }
    }
}

#[test]
fn top_shows_a_running_daemons_endpoints_sorts_and_quits() {
    require_root();
    let (server, addr) = start_demo_server();
    let observer = Observer::attach(&[server.pid()]);
    let stop = Arc::new(AtomicBool::new(false));
    let _traffic = StopOnDrop(
        stop.clone(),
        vec![
            traffic(addr, &["/api/status", "/fail/503", "/boot/52:54:00:12:34:56"], stop.clone()),
            traffic(addr, &["/slow/50"], stop.clone()),
        ],
    );
    let tmux =
        Tmux::start(&format!("{} top --url http://{}/metrics --interval 0.5", observer_bin(), observer.addr));
    let screen = tmux.screen_until("live rows", |s| {
        ["/api/status", "/fail/{id}", "/slow/{id}", "/boot/{id}"]
            .iter()
            .all(|e| row(s, e).is_some_and(|r| r[1].parse::<f64>().is_ok_and(|rate| rate > 0.0)))
    });
    // Every column fits in 80: the last one's title is on screen.
    let header = screen.lines().find(|l| l.contains("ENDPOINT")).unwrap();
    assert!(header.contains("BYTES/S") && header.contains("WAIT99"), "{screen}");
    // The server's listener, above the endpoints.
    let listener = screen.lines().position(|l| l.starts_with(&format!("listener :{}", addr.port())));
    let header_at = screen.lines().position(|l| l.contains("ENDPOINT"));
    assert!(listener.is_some_and(|at| Some(at) < header_at), "{screen}");
    assert!(header.contains("REQ/S▼"), "sorted by rate first: {screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80));
    assert_eq!(row(&screen, "/fail/{id}").unwrap()[5], "100.0", "{screen}");
    assert_eq!(row(&screen, "/api/status").unwrap()[5], "0.0", "{screen}");
    // From the native buckets: within a bucket's width of the 50 ms the handler sleeps (plus
    // the timer's lateness), not interpolated inside a ×2.5 classic bucket.
    let slow_p50 = &row(&screen, "/slow/{id}").unwrap()[3];
    let ms: f64 = slow_p50.strip_suffix("ms").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!((50.0..55.0).contains(&ms), "50 ms requests: {screen}");
    // A loopback request to a handler that does nothing: a measured value in µs, not a bound.
    let fast_p50 = &row(&screen, "/api/status").unwrap()[3];
    assert!(fast_p50.ends_with("µs") && !fast_p50.starts_with('<'), "{screen}");

    tmux.keys("5"); // P99
    let screen = tmux.screen_until("sorted by p99", |s| s.contains("P99▼") && first_row(s) == "/slow/{id}");
    assert!(!screen.contains("REQ/S▼"));
    tmux.keys("r");
    tmux.screen_until("sorted by p99, smallest first", |s| {
        s.contains("P99▲") && first_row(s) != "/slow/{id}"
    });
    tmux.keys("s"); // next column: ERR%
    tmux.screen_until("sorted by errors", |s| s.contains("ERR%▲"));

    tmux.keys("q");
    wait_until("top to quit", Duration::from_secs(5), || tmux.gone());
}

#[test]
fn top_attaches_to_a_pid_by_itself() {
    require_root();
    let (server, addr) = start_demo_server();
    let stop = Arc::new(AtomicBool::new(false));
    let _traffic = StopOnDrop(stop.clone(), vec![traffic(addr, &["/api/status"], stop.clone())]);
    let tmux = Tmux::start(&format!("{} top --pid {} --interval 0.5", observer_bin(), server.pid()));
    let screen = tmux.screen_until("the server's requests", |s| {
        row(s, "/api/status").is_some_and(|r| r[1].parse::<f64>().is_ok_and(|rate| rate > 0.0))
    });
    assert!(screen.lines().next().unwrap().starts_with("attached here"), "{screen}");
    tmux.keys("q");
    wait_until("top to quit", Duration::from_secs(5), || tmux.gone());
}

#[test]
fn top_without_a_daemon_to_read_is_a_clear_error() {
    let closed = free_port();
    let out = Command::new(observer_bin())
        .args(["top", "--url", &format!("http://127.0.0.1:{closed}/metrics")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("observer: error: reading http://127.0.0.1:{closed}/metrics")),
        "{stderr}"
    );
}
