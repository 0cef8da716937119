//! Shared pieces of the privileged integration tests: process guards, the observer under
//! test, scraping and reading `/metrics`, and the real clients (curl) the tests drive.
#![allow(dead_code)] // each test file uses its own subset

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Stops and reaps the child when dropped, whatever happened in the test: SIGTERM first, so a
/// server that has children of its own (an nginx master) takes them down with it, then
/// SIGKILL if it is still there after two seconds.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ChildGuard { child, name: name.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the child's stderr if it already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let mut err = String::new();
            if let Some(mut stderr) = self.child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            panic!("{} exited early ({status}): {err}", self.name);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails loudly when the tests cannot do what they are for.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(uid, Some("0"), "privileged integration test: must run as root (use `cargo xtask test`)");
}

pub fn require_command(cmd: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{cmd} is not installed: run `cargo xtask setup`");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_for_port(port: u16) {
    wait_until(&format!("127.0.0.1:{port} to accept"), Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

pub fn observer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_observer")
}

/// The demo's axum server (`observer demo-server`) on a free loopback port.
pub fn start_demo_server() -> (ChildGuard, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = ChildGuard::spawn(
        "axum demo server",
        Command::new(observer_bin())
            .args(["demo-server", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    (server, addr)
}

/// A running `observer run` attached to some PIDs, serving on a free loopback port.
pub struct Observer {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Observer {
    pub fn attach(pids: &[u32]) -> Self {
        Self::attach_with(pids, &[])
    }

    /// With extra `observer run` arguments.
    pub fn attach_with(pids: &[u32], extra: &[&str]) -> Self {
        Self::attach_logging(pids, extra, "info")
    }

    /// With extra arguments and a `RUST_LOG` level.
    pub fn attach_logging(pids: &[u32], extra: &[&str], level: &str) -> Self {
        Self::attach_wrapped(&[], pids, extra, level)
    }

    /// Started through `wrapper` (a command line that ends by running its arguments, such
    /// as `unshare -m sh -c '…; exec "$@"' sh`).
    pub fn attach_wrapped(wrapper: &[&str], pids: &[u32], extra: &[&str], level: &str) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = match wrapper {
            [] => Command::new(observer_bin()),
            [program, args @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(observer_bin());
                cmd
            }
        };
        cmd.arg("run").arg("--listen").arg(addr.to_string()).args(extra);
        for pid in pids {
            cmd.arg("--pid").arg(pid.to_string());
        }
        cmd.env("RUST_LOG", level).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn("observer", &mut cmd);
        // Drain the log from the start so the observer never blocks on a full pipe (trace
        // logging fills one during start-up); keep it for tests that read it.
        let stderr = guard.child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[observer] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        // The port is bound before the probes load, but /metrics answers only once the
        // probes are attached and the targets followed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_http_get(addr, "/metrics").is_none() {
            if let Ok(Some(status)) = guard.child.try_wait() {
                thread::sleep(Duration::from_millis(100)); // the last lines
                panic!("observer exited early ({status}):\n{}", log.lock().unwrap().join("\n"));
            }
            assert!(Instant::now() < deadline, "observer did not serve /metrics within 30s");
            thread::sleep(Duration::from_millis(50));
        }
        Observer { guard, addr, log }
    }

    /// The observer's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn scrape(&self) -> Scrape {
        Scrape(http_get_text(self.addr, "/metrics"))
    }

    /// Scrapes until at least `requests` were counted and none is in flight (events arrive
    /// asynchronously), then returns that scrape.
    pub fn scrape_settled(&self, requests: f64) -> Scrape {
        self.scrape_until(&format!("{requests} requests, none in flight"), |s| {
            s.sum("http_requests_total", &[]) >= requests && s.sum("http_requests_in_flight", &[]) == 0.0
        })
    }

    /// Scrapes until `ok` holds (events arrive asynchronously), then returns that scrape.
    pub fn scrape_until(&self, what: &str, mut ok: impl FnMut(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::from("(no answer)");
        loop {
            if let Some(text) = try_http_get(self.addr, "/metrics") {
                let scrape = Scrape(text);
                if ok(&scrape) {
                    return scrape;
                }
                last = scrape.0;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last scrape:\n{last}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// GET over a fresh connection; returns the body. Panics unless the status is 200.
pub fn http_get_text(addr: SocketAddr, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|| panic!("GET http://{addr}{path} did not answer 200"))
}

/// GET over a fresh connection: the body of a 200 response, `None` for anything else.
pub fn try_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// One `/metrics` text, with lookups by metric name and labels.
pub struct Scrape(pub String);

impl Scrape {
    /// Sum of every sample named `name` whose labels include all of `labels`. A value ending
    /// in `*` matches by prefix (`("endpoint", "/images/*")`).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let has = |l: &str, k: &str, v: &str| match v.strip_suffix('*') {
            Some(prefix) => l.contains(&format!("{k}=\"{prefix}")),
            None => l.contains(&format!("{k}=\"{v}\"")),
        };
        self.samples(name).filter(|(l, _)| labels.iter().all(|(k, v)| has(l, k, v))).map(|(_, v)| v).sum()
    }

    /// `(labels, value)` of every sample named exactly `name`.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            Some((labels, value.parse().ok()?))
        })
    }

    /// Distinct values of `label` across samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .samples(name)
            .filter_map(|(labels, _)| {
                let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
                Some(labels[start..].split('"').next()?.to_owned())
            })
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

/// Runs curl on the given URLs (one connection, reused where the server allows) and
/// returns the status code of each response, in order.
pub fn curl(extra: &[&str], urls: &[String]) -> Vec<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "30", "--write-out", "%{http_code}\\n"]).args(extra);
    for url in urls {
        cmd.args(["--output", "/dev/null", url]);
    }
    let out = cmd.output().expect("running curl");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.trim().parse().expect("a status code")).collect()
}

/// A minimal keep-alive HTTP/1.1 client over one TCP connection, for tests that need to
/// control exactly which connection carries which request.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawClient { stream, buf: Vec::new() }
    }

    /// Without Nagle's algorithm: the second piece of a request is not held back until the
    /// server acknowledges the first (up to its 40 ms delayed ACK), as browsers do.
    pub fn nodelay(self) -> Self {
        self.stream.set_nodelay(true).unwrap();
        self
    }

    /// Sends a GET and reads its response (Content-Length framed); returns the status.
    pub fn get(&mut self, path: &str) -> u16 {
        // `write!` sends the format pieces as separate writes ("GET ", then the rest), as
        // some real clients do: the observer must not depend on one segment per request.
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        self.read_response()
    }

    fn read_response(&mut self) -> u16 {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + length {
                    self.fill();
                }
                self.buf.drain(..end + 4 + length);
                return status;
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("observer-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an nginx configuration holds beyond the parts every test shares.
#[derive(Default)]
pub struct NginxConf<'a> {
    /// The master/worker split, e.g. `master_process off;`.
    pub processes: &'a str,
    /// Log every request to `dir/access.log` (the server's own count).
    pub access_log: bool,
    /// `location` blocks of the server.
    pub locations: &'a str,
    /// A second listener on this loopback port, with TLS (a self-signed certificate made in
    /// the directory, see `self_signed_cert`).
    pub tls_port: Option<u16>,
    /// The TLS listener offers HTTP/2 by ALPN.
    pub http2: bool,
}

/// An nginx configuration in `dir` serving `dir/www` (with `files/small.txt` and
/// `files/empty.txt`) on loopback `port`, in the foreground; `processes` sets the
/// master/worker split. Returns its path.
pub fn write_nginx_conf(dir: &TempDir, port: u16, processes: &str) -> std::path::PathBuf {
    write_nginx_conf_with(dir, port, NginxConf { processes, ..Default::default() })
}

pub fn write_nginx_conf_with(dir: &TempDir, port: u16, extra: NginxConf<'_>) -> std::path::PathBuf {
    let root = dir.path();
    let www = root.join("www");
    std::fs::create_dir_all(www.join("files")).unwrap();
    std::fs::write(www.join("files/small.txt"), "hello from nginx\n").unwrap();
    std::fs::write(www.join("files/empty.txt"), "").unwrap();
    let access_log =
        if extra.access_log { format!("{}/access.log", root.display()) } else { "off".to_owned() };
    let tls = match extra.tls_port {
        Some(port) => {
            let (cert, key) = self_signed_cert(dir);
            format!(
                "        listen 127.0.0.1:{port} ssl{};\n        ssl_certificate {};\n        ssl_certificate_key {};\n",
                if extra.http2 { " http2" } else { "" },
                cert.display(),
                key.display()
            )
        }
        None => String::new(),
    };
    let conf = format!(
        r#"
daemon off;
{processes}
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {access_log};
    sendfile on;
    keepalive_timeout 30;
    keepalive_requests 10000;
    if_modified_since before;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
{tls}        root {root}/www;
{locations}
    }}
}}
"#,
        processes = extra.processes,
        locations = extra.locations,
        root = root.display()
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// A self-signed certificate for `localhost` and its key, made with openssl in `dir`:
/// (certificate, key).
pub fn self_signed_cert(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running openssl");
    assert!(status.success(), "openssl could not make a certificate");
    (cert, key)
}

/// Debian's nginx in the foreground with the configuration at `conf`, once it accepts on `port`.
pub fn start_nginx_conf(conf: &Path, port: u16) -> ChildGuard {
    let nginx = ChildGuard::spawn(
        "nginx",
        Command::new("nginx").arg("-c").arg(conf).stdout(Stdio::null()).stderr(Stdio::null()),
    );
    wait_for_port(port);
    nginx
}

/// Kills (SIGKILL) the nginx workers `workers` lists, waits until the master has forked as
/// many new ones, then sends 30 more requests (`url(i)`) through them and checks that the
/// observer counted `before + 30` answered requests in all.
pub fn respawn_workers_and_count(
    observer: &Observer,
    workers: impl Fn() -> Vec<u32>,
    url: impl Fn(usize) -> String,
    before: f64,
) {
    let old = workers();
    for pid in &old {
        assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    }
    wait_until("new nginx workers", Duration::from_secs(10), || {
        let now = workers();
        now.len() == old.len() && now.iter().all(|p| !old.contains(p))
    });
    for round in 0..3 {
        let more: Vec<String> = (0..10).map(|i| url(100 * round + i)).collect();
        assert_eq!(curl(&[], &more), vec![200; 10]);
    }
    let scrape = observer.scrape_settled(before + 30.0);
    assert_eq!(scrape.sum("http_requests_total", &[("status", "200")]), before + 30.0, "{}", scrape.0);
}
