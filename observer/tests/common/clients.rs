//! The clients the tests drive servers with: curl, a one-connection keep-alive client, and
//! a plain GET for `/metrics`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

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

/// curl over one connection (`--http1.1`, keep-alive), certificates not checked: the status
/// and client-measured total time of each response.
pub fn curl_timed(extra: &[&str], urls: &[String]) -> Vec<(u16, f64)> {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--insecure", "--http1.1", "--max-time", "30"])
        .args(["--write-out", "%{http_code} %{time_total}\\n"])
        .args(extra);
    for url in urls {
        cmd.args(["--output", "/dev/null", url]);
    }
    let out = cmd.output().expect("running curl");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (code, time) = l.split_once(' ').expect("code and time");
            (code.parse().unwrap(), time.parse().unwrap())
        })
        .collect()
}

pub fn statuses(answers: &[(u16, f64)]) -> Vec<u16> {
    answers.iter().map(|(code, _)| *code).collect()
}
