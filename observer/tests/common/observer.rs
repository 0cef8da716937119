//! The observer under test: `observer run` started as a child, its log kept, its
//! `/metrics` scraped until the asynchronous events have arrived.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{ChildGuard, Scrape, TempDir, free_port, http_get_text, try_http_get, wait_until};

pub fn observer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_observer")
}

/// A running `observer run` attached to some PIDs, serving on a free loopback port.
pub struct Observer {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// How to start an `observer run`: `Observer::on(pids)`, then what differs, then `start`.
pub struct Start<'a> {
    pids: &'a [u32],
    args: &'a [&'a str],
    level: &'a str,
    wrapper: &'a [&'a str],
}

impl<'a> Start<'a> {
    /// Extra `observer run` arguments.
    pub fn args(self, args: &'a [&'a str]) -> Self {
        Start { args, ..self }
    }

    /// The `RUST_LOG` level (`info` unless set).
    pub fn log_level(self, level: &'a str) -> Self {
        Start { level, ..self }
    }

    /// Started through `wrapper` (a command line that ends by running its arguments, such
    /// as `unshare -m sh -c '…; exec "$@"' sh`).
    pub fn wrapped_in(self, wrapper: &'a [&'a str]) -> Self {
        Start { wrapper, ..self }
    }

    /// Starts it and waits until it serves `/metrics` (its probes attached).
    pub fn start(self) -> Observer {
        Observer::start(self)
    }
}

impl Observer {
    /// `observer run --pid …` for each of `pids`, with defaults.
    pub fn attach(pids: &[u32]) -> Self {
        Self::on(pids).start()
    }

    pub fn on(pids: &[u32]) -> Start<'_> {
        Start { pids, args: &[], level: "info", wrapper: &[] }
    }

    fn start(Start { pids, args: extra, level, wrapper }: Start<'_>) -> Self {
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

/// A client that waits for a gate file before it connects, so that the observer attached to
/// it sees its connections from their start; what it prints is kept in a file.
pub struct GatedClient {
    pub client: ChildGuard,
    pub observer: Observer,
    out: std::path::PathBuf,
}

impl GatedClient {
    /// The gate file the script of a client started in `dir` waits for.
    pub fn gate(dir: &TempDir) -> std::path::PathBuf {
        dir.path().join("go")
    }

    /// Starts `command` (its script waiting for [`GatedClient::gate`]), attaches an observer
    /// (with `observer_args`) to it, then opens the gate.
    pub fn start(what: &str, dir: &TempDir, command: &mut Command, observer_args: &[&str]) -> Self {
        let out = dir.path().join("client.out");
        let client = ChildGuard::spawn(what, command.stdout(std::fs::File::create(&out).unwrap()));
        let observer = Observer::on(&[client.pid()]).args(observer_args).start();
        std::fs::write(Self::gate(dir), "").unwrap();
        GatedClient { client, observer, out }
    }

    /// What the client printed, once `done` says it is all there (`timeout` at most).
    pub fn output_when(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let read = || std::fs::read_to_string(&self.out).unwrap_or_default();
        wait_until(what, timeout, || done(&read()));
        read()
    }
}
