//! `cargo xtask soak --minutes N`: the observer watching real servers under steady churn for
//! a long time, to show that nothing it holds grows and that its counts stay exact.
//!
//! nginx (master and worker, plain and TLS ports, started anew every minute and found again
//! through `--exe`) and a forking python server get, every second, short and keep-alive
//! requests, 404s, HTTPS handshakes and one download reset mid-response. Once a minute the
//! load pauses and a row is taken: daemon RSS, entries in each kernel map, the daemon's
//! connection table, series on /metrics, events lost, and the requests the servers logged
//! against those the observer counted. At the end every count must equal the servers' own,
//! and after the warm-up minute RSS stays within ±10 % and the tables hold no more than the
//! connections open.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use crate::bench::{Guard, cpu_seconds, free_port, http_get, metric, self_signed_cert, status_kib, wait_for};

/// Requests each second, per kind: a steady rate, not saturation.
const SHORT_PER_SECOND: usize = 20;
const MISSING_PER_SECOND: usize = 5;
const KEEPALIVE_PER_SECOND: usize = 20;
const HTTPS_PER_SECOND: usize = 4;
const PYTHON_PER_SECOND: usize = 5;
/// Seconds of load in each minute; the rest is the pause for the row and the restart.
const LOAD_SECONDS: u64 = 55;
/// The download that is reset after `RESET_AFTER` bytes: large enough to be mid-response.
const BIG_BYTES: u64 = 64 << 20;
const RESET_AFTER: usize = 256 << 10;
/// Kernel maps whose entries are counted (by name, as bpftool shows them).
const MAPS: [&str; 6] = ["CONNS", "TLS_CONNS", "TLS_CALLS", "SOCKETS", "PENDING", "FORKED"];
/// Entries a table may hold beyond the connections open at a row (a socket being torn down).
const SLACK: f64 = 2.0;

pub fn soak(observer: &Path, minutes: u64, out: &Path) -> anyhow::Result<()> {
    ensure!(minutes >= 2, "a soak needs a warm-up minute and at least one more");
    let dir = std::env::temp_dir().join(format!("observer-soak-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::File::create(dir.join("www/big.img"))?.set_len(BIG_BYTES)?;
    self_signed_cert(&dir)?;
    let (port, tls_port, py_port, metrics_port) = (free_port(), free_port(), free_port(), free_port());
    write_nginx_conf(&dir, port, tls_port)?;
    let python = start_python(&dir, py_port)?;
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let log = std::fs::File::create(dir.join("observer.log"))?;
    let observer = Guard(
        Command::new(observer)
            .args(["run", "--exe", "nginx", "--pid", &python.0.id().to_string()])
            .args(["--listen", &metrics.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the observer")?,
    );
    wait_for("the observer's /metrics", || http_get(metrics, "/metrics").is_some())?;
    let mut nginx = None;
    let mut sent = Sent::default();
    let mut rows = Vec::new();
    for minute in 1..=minutes {
        drop(nginx.take()); // a restart, as a deploy would do it
        nginx = Some(start_nginx(&dir, port)?);
        let until = Instant::now() + Duration::from_secs(LOAD_SECONDS);
        let mut keepalive = None;
        let mut busy_conns = None;
        while Instant::now() < until {
            let second = Instant::now();
            load_one_second(&mut sent, &mut keepalive, port, tls_port, py_port)?;
            if busy_conns.is_none()
                && until.saturating_duration_since(second) < Duration::from_secs(LOAD_SECONDS / 2)
            {
                // Under load, with the keep-alive connection open: CONNS is not always empty.
                busy_conns = Some(map_entries("CONNS")?);
            }
            thread::sleep(Duration::from_secs(1).saturating_sub(second.elapsed()));
        }
        drop(keepalive);
        thread::sleep(Duration::from_secs(2)); // the last responses and closes reach the daemon
        let mut row = Row::take(minute, observer.0.id(), metrics, &dir, &[port, tls_port, py_port])?;
        row.busy_conns = busy_conns.unwrap_or(f64::NAN);
        eprintln!("{}", row.line());
        rows.push(row);
    }
    drop(nginx);
    let report = verdict(&rows, &sent)?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("soak.md"), &report)?;
    println!("{report}");
    drop(observer);
    drop(python);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What the clients sent and saw.
#[derive(Default, Debug)]
struct Sent {
    hello: u64,
    missing: u64,
    https: u64,
    resets: u64,
    python: u64,
}

fn write_nginx_conf(dir: &Path, port: u16, tls_port: u16) -> anyhow::Result<()> {
    let root = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n\
         events {{ worker_connections 1024; }}\nhttp {{\n\
         log_format soak '$status $request_completion $uri';\n access_log {root}/access.log soak;\n\
         keepalive_requests 1000000;\n client_body_temp_path {root}/body;\n proxy_temp_path {root}/proxy;\n\
         fastcgi_temp_path {root}/fastcgi;\n uwsgi_temp_path {root}/uwsgi;\n scgi_temp_path {root}/scgi;\n\
         server {{\n  listen 127.0.0.1:{port};\n  listen 127.0.0.1:{tls_port} ssl;\n\
         ssl_certificate {root}/cert.pem;\n  ssl_certificate_key {root}/key.pem;\n  root {root}/www;\n\
         location = /hello {{ return 200 \"hello\\n\"; }}\n }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    Ok(())
}

/// nginx started anew; returns once it serves and the observer has hooked its worker's
/// OpenSSL (HTTPS before that would go unseen: the documented fork gap).
fn start_nginx(dir: &Path, port: u16) -> anyhow::Result<Guard> {
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let master = child.id();
    let guard = Guard(child);
    wait_for("nginx", || TcpStream::connect(("127.0.0.1", port)).is_ok())?;
    let log = dir.join("observer.log");
    wait_for("the observer to hook the new nginx worker", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let workers = children_of(master);
        !workers.is_empty()
            && workers.iter().all(|w| {
                text.lines().any(|l| l.contains("hooked OpenSSL") && l.contains(&format!("pid={w} ")))
            })
    })?;
    Ok(guard)
}

fn start_python(dir: &Path, port: u16) -> anyhow::Result<Guard> {
    let log = dir.join("python.log");
    let script = format!(
        r##"
import http.server, socketserver
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"#!ipxe\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, format, *args):
        with open({log:?}, "a") as f:
            f.write("answered\n")
class Server(socketserver.ForkingMixIn, http.server.HTTPServer):
    pass
Server(("127.0.0.1", {port}), Handler).serve_forever()
"##,
        log = log.display().to_string()
    );
    let child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3")?;
    let guard = Guard(child);
    wait_for("the python server", || TcpStream::connect(("127.0.0.1", port)).is_ok())?;
    Ok(guard)
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            rest.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
}

fn load_one_second(
    sent: &mut Sent,
    keepalive: &mut Option<BufReader<TcpStream>>,
    port: u16,
    tls_port: u16,
    py_port: u16,
) -> anyhow::Result<()> {
    for _ in 0..SHORT_PER_SECOND {
        ensure!(short_get(port, "/hello")? == 200, "nginx /hello");
        sent.hello += 1;
    }
    for _ in 0..MISSING_PER_SECOND {
        ensure!(short_get(port, "/missing")? == 404, "nginx /missing");
        sent.missing += 1;
    }
    for _ in 0..PYTHON_PER_SECOND {
        ensure!(short_get(py_port, &format!("/boot/{}", sent.python))? == 200, "python /boot");
        sent.python += 1;
    }
    let stream = match keepalive.take() {
        Some(stream) => stream,
        None => BufReader::new(TcpStream::connect(("127.0.0.1", port))?),
    };
    *keepalive = Some(keepalive_gets(stream, KEEPALIVE_PER_SECOND)?);
    sent.hello += KEEPALIVE_PER_SECOND as u64;
    sent.https += https_gets(tls_port, HTTPS_PER_SECOND)?;
    reset_download(port)?;
    sent.resets += 1;
    Ok(())
}

/// One request on a new connection (`Connection: close`): its status.
fn short_get(port: u16, path: &str) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")?;
    let mut text = Vec::new();
    s.read_to_end(&mut text)?;
    status_of(&text)
}

fn status_of(head: &[u8]) -> anyhow::Result<u16> {
    let line = std::str::from_utf8(&head[..head.len().min(12)]).unwrap_or_default();
    line.strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse().ok())
        .context("no status line")
}

/// `n` requests on one kept-alive connection, each response read whole (Content-Length).
fn keepalive_gets(mut s: BufReader<TcpStream>, n: usize) -> anyhow::Result<BufReader<TcpStream>> {
    for _ in 0..n {
        write!(s.get_mut(), "GET /hello HTTP/1.1\r\nHost: soak\r\n\r\n")?;
        let mut line = String::new();
        s.read_line(&mut line)?;
        ensure!(status_of(line.as_bytes())? == 200, "keep-alive /hello: {line}");
        let mut length = 0;
        loop {
            line.clear();
            s.read_line(&mut line)?;
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        s.read_exact(&mut body)?;
    }
    Ok(s)
}

/// `n` HTTPS requests, each on its own connection (a full handshake each): how many got 200.
fn https_gets(tls_port: u16, n: usize) -> anyhow::Result<u64> {
    let url = format!("https://127.0.0.1:{tls_port}/hello");
    let out = Command::new("curl")
        .args(["--silent", "--insecure", "--parallel", "--max-time", "10", "--write-out", "%{http_code}\\n"])
        .args((0..n).flat_map(|_| ["--output", "/dev/null", url.as_str()]))
        .output()
        .context("running curl")?;
    let ok = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim() == "200").count();
    ensure!(ok == n, "{ok} of {n} HTTPS requests answered");
    Ok(ok as u64)
}

/// A download reset by the client (SO_LINGER 0, then close) once it is well under way.
fn reset_download(port: u16) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /big.img HTTP/1.1\r\nHost: soak\r\n\r\n")?;
    let mut got = 0;
    let mut chunk = [0u8; 65536];
    while got < RESET_AFTER {
        let n = s.read(&mut chunk)?;
        ensure!(n > 0, "nginx closed the download early");
        got += n;
    }
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on an open socket with a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    Ok(())
}

/// One minute's figures, taken while the load pauses.
struct Row {
    minute: u64,
    rss_mib: f64,
    /// The daemon's CPU time since the start, in seconds.
    cpu_s: f64,
    maps: Vec<(&'static str, f64)>,
    /// CONNS entries mid-minute, under load (the keep-alive connection open).
    busy_conns: f64,
    table: f64,
    series: f64,
    lost: f64,
    /// Server-side connections open on the servers' ports (ss), which the tables may hold.
    open: f64,
    /// (the servers' own count, the observer's), cumulative.
    nginx: (f64, f64),
    python: (f64, f64),
    /// Downloads reset mid-response: (nginx's incomplete ones, the observer's incomplete).
    resets: (f64, f64),
    /// Reset downloads counted as answered: (nginx's completed ones, the observer's).
    downloads_answered: (f64, f64),
    in_flight: f64,
}

impl Row {
    fn take(
        minute: u64,
        observer: u32,
        metrics: std::net::SocketAddr,
        dir: &Path,
        ports: &[u16],
    ) -> anyhow::Result<Self> {
        let text = http_get(metrics, "/metrics").context("scraping the observer")?;
        let maps = MAPS.iter().map(|&name| Ok((name, map_entries(name)?))).collect::<anyhow::Result<_>>()?;
        let access = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
        let nginx_logged = access.lines().filter(|l| !l.contains("/big.img")).count() as f64;
        let downloads = || access.lines().filter(|l| l.ends_with(" /big.img"));
        let counted = |endpoint: &str| sum(&text, "http_requests_total", endpoint);
        Ok(Row {
            minute,
            rss_mib: status_kib(observer, "VmRSS:") / 1024.0,
            cpu_s: cpu_seconds(observer),
            maps,
            busy_conns: f64::NAN,
            table: metric(&text, "observer_connections "),
            series: text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count() as f64,
            lost: metric(&text, "observer_events_lost_total"),
            open: open_connections(ports),
            nginx: (nginx_logged, counted("/hello") + counted("/missing")),
            python: (
                std::fs::read_to_string(dir.join("python.log")).unwrap_or_default().lines().count() as f64,
                counted("/boot/{id}"),
            ),
            resets: (
                downloads().filter(|l| !l.contains(" OK ")).count() as f64,
                sum(&text, "observer_requests_incomplete_total", "/big.img"),
            ),
            downloads_answered: (
                downloads().filter(|l| l.contains(" OK ")).count() as f64,
                counted("/big.img"),
            ),
            in_flight: metric(&text, "http_requests_in_flight"),
        })
    }

    fn header() -> String {
        let maps: Vec<String> = MAPS.iter().map(|m| m.to_lowercase()).collect();
        format!(
            "| minute | RSS MiB | daemon CPU s | conns under load | {} | daemon table | open | series | lost | in flight | nginx log / counted | python log / counted | resets log / incomplete |\n|{}",
            maps.join(" | "),
            "---|".repeat(13 + MAPS.len())
        )
    }

    fn line(&self) -> String {
        let maps: Vec<String> = self.maps.iter().map(|(_, n)| format!("{n}")).collect();
        format!(
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |",
            self.minute,
            self.rss_mib,
            self.cpu_s,
            self.busy_conns,
            maps.join(" | "),
            self.table,
            self.open,
            self.series,
            self.lost,
            self.in_flight,
            self.nginx.0,
            self.nginx.1,
            self.python.0,
            self.python.1,
            self.resets.0,
            self.resets.1
        )
    }

    fn map(&self, name: &str) -> f64 {
        self.maps.iter().find(|(n, _)| *n == name).map_or(0.0, |(_, v)| *v)
    }
}

/// Sum of `name` samples whose endpoint label is `endpoint`.
fn sum(text: &str, name: &str, endpoint: &str) -> f64 {
    let label = format!("endpoint=\"{endpoint}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Entries in the kernel map(s) named `name` (bpftool, JSON).
fn map_entries(name: &str) -> anyhow::Result<f64> {
    let out = Command::new("bpftool").args(["--json", "map", "dump", "name", name]).output()?;
    ensure!(out.status.success(), "bpftool map dump name {name}: {}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let count = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
    // One map: an array of entries. Several of that name: an array of {"elements": [...]}?
    Ok(match value.as_array() {
        Some(items) if items.iter().all(|i| i.get("elements").is_some()) && !items.is_empty() => {
            items.iter().map(|i| count(&i["elements"])).sum::<usize>() as f64
        }
        _ => count(&value) as f64,
    })
}

/// Established TCP connections whose local port is one of `ports` (the servers' side).
fn open_connections(ports: &[u16]) -> f64 {
    let filter = ports.iter().map(|p| format!("sport = :{p}")).collect::<Vec<_>>().join(" or ");
    Command::new("ss")
        .args(["-tnH", "state", "established", &format!("( {filter} )")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count() as f64)
        .unwrap_or(f64::NAN)
}

/// The table, and whether the run held: counts exact, nothing growing after the first minute.
fn verdict(rows: &[Row], sent: &Sent) -> anyhow::Result<String> {
    let mut report = format!("{}\n", Row::header());
    for row in rows {
        let _ = writeln!(report, "{}", row.line());
    }
    let _ = writeln!(report, "\nclients: {sent:?}");
    let mut failures = Vec::new();
    let last = rows.last().expect("at least two rows");
    let first = &rows[0];
    for row in rows {
        if row.busy_conns.is_nan() || row.busy_conns < 1.0 {
            failures.push(format!(
                "minute {}: CONNS held {} entries under load: is it counted?",
                row.minute, row.busy_conns
            ));
        }
        if row.nginx.0 != row.nginx.1
            || row.python.0 != row.python.1
            || row.resets.0 != row.resets.1
            || row.downloads_answered.0 != row.downloads_answered.1
        {
            failures.push(format!("minute {}: counts differ from the servers' logs", row.minute));
        }
        if row.in_flight != 0.0 {
            failures.push(format!(
                "minute {}: {} requests in flight while the load paused",
                row.minute, row.in_flight
            ));
        }
        if row.lost != 0.0 {
            failures.push(format!("minute {}: {} events lost", row.minute, row.lost));
        }
    }
    let expected_nginx = (sent.hello + sent.missing + sent.https) as f64;
    if last.nginx.0 != expected_nginx
        || last.python.0 != sent.python as f64
        || last.resets.0 != sent.resets as f64
    {
        failures.push(format!("the servers logged other counts than the clients sent: {sent:?}"));
    }
    for row in &rows[1..] {
        if (row.rss_mib - first.rss_mib).abs() > first.rss_mib * 0.10 {
            failures.push(format!(
                "minute {}: RSS {:.1} MiB against {:.1} after warm-up",
                row.minute, row.rss_mib, first.rss_mib
            ));
        }
        for name in ["CONNS", "TLS_CONNS", "TLS_CALLS", "SOCKETS", "PENDING"] {
            if row.map(name) > row.open + SLACK {
                failures.push(format!(
                    "minute {}: {name} holds {} with {} connections open",
                    row.minute,
                    row.map(name),
                    row.open
                ));
            }
        }
        if row.table > row.open + SLACK {
            failures.push(format!(
                "minute {}: the daemon's table holds {} with {} open",
                row.minute, row.table, row.open
            ));
        }
        if row.series > first.series {
            failures.push(format!(
                "minute {}: {} series against {} after warm-up",
                row.minute, row.series, first.series
            ));
        }
    }
    if !failures.is_empty() {
        bail!("{report}\nthe soak failed:\n- {}", failures.join("\n- "));
    }
    Ok(report)
}

/// Where the report goes.
pub fn out_dir(root: &Path) -> PathBuf {
    root.join("target/soak")
}
