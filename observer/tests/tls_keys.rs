//! `--tls keys`: nginx's HTTPS (TLS 1.3 through libssl.so.3) seen with only the handshake
//! hooked. Each session's keys come from its handshake, its records are decrypted from the
//! socket hooks' copies, and every request is counted exactly against nginx's own log.

mod common;

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;

/// `openssl s_client` (`extra`: its version, sessions), fed `lines` a moment apart (a line `k` or `K` is its
/// KeyUpdate command; `K` asks the server to update too); what it printed.
fn s_client(tls_port: u16, extra: &[&str], lines: &[&str]) -> String {
    s_client_paced(tls_port, extra, lines, Duration::from_millis(300))
}

/// `s_client`, its lines `gap` apart.
fn s_client_paced(tls_port: u16, extra: &[&str], lines: &[&str], gap: Duration) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{tls_port}")])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()); // where it says KEYUPDATE
    let mut client = ChildGuard::spawn("openssl s_client", &mut cmd);
    let mut stdin = client.child.stdin.take().expect("stdin");
    for line in lines {
        thread::sleep(gap);
        stdin.write_all(line.as_bytes()).expect("writing to s_client");
    }
    thread::sleep(Duration::from_millis(500));
    drop(stdin); // EOF: s_client ends
    let mut out = String::new();
    let mut stdout = client.child.stdout.take().expect("stdout");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.child.try_wait().expect("s_client").is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    stdout.read_to_string(&mut out).expect("reading s_client");
    if let Some(mut stderr) = client.child.stderr.take() {
        stderr.read_to_string(&mut out).expect("reading s_client");
    }
    out
}

fn get(path: &str, close: bool) -> String {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{connection}\r\n")
}

/// Every suite curl can pick, a KeyUpdate each way, a resumed session and responses longer
/// than one record: nginx's count, by method and status, and nothing lost.
#[test]
fn nginx_tls13_is_counted_exactly_from_session_keys() {
    require_root();
    require_command("nginx");
    require_command("curl");
    require_command("openssl");
    let dir = TempDir::new("tls-keys");
    let (_nginx, observer, tls_port) = nginx_keyed(&dir, "TLSv1.3", &[], false);
    let suites = ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"];
    let mut answers = curl_suites(tls_port, &["--tlsv1.3", "--tls13-ciphers"], &suites);
    // A first response of several records: numbered after the tickets as learned.
    let big = format!("https://127.0.0.1:{tls_port}/files/big.bin");
    answers.extend(curl_timed(&["--tlsv1.3"], &[big.clone(), big]));
    let session = dir.path().join("session.pem");
    let session = session.to_str().unwrap();
    let out = s_client(
        tls_port,
        &["-tls1_3", "-sess_out", session],
        &[
            &get("/files/small.txt", false),
            "k\n",
            &get("/files/small.txt", false),
            "K\n",
            &get("/files/missing/k", true),
        ],
    );
    assert_eq!(out.matches("KEYUPDATE").count(), 2, "{out}");
    assert_eq!((out.matches("HTTP/1.1 200").count(), out.matches("HTTP/1.1 404").count()), (2, 1), "{out}");
    let out = s_client(tls_port, &["-tls1_3", "-sess_in", session], &[&get("/files/small.txt", true)]);
    assert!(out.contains("Reused, TLSv1.3") && out.contains("HTTP/1.1 200"), "{out}");

    let total = 3.0 * 14.0 + 2.0 + 3.0 + 1.0;
    counted_exactly(&dir, &observer, total, 9.0, &answers);
    let log = observer.log();
    assert!(log.contains("handshake only (--tls keys)"), "only the handshake is hooked:\n{log}");
    assert!(log.contains("learned where this libssl keeps TLS secrets"), "{log}");
}

/// nginx's log and ours agree by method and status, nothing was lost, `connections` first
/// records opened, durations within what the clients saw.
fn counted_exactly(dir: &TempDir, observer: &Observer, total: f64, connections: f64, answers: &[(u16, f64)]) {
    let scrape = observer.scrape_settled(total);
    let logged = access_log(dir);
    assert_eq!(logged.len() as f64, total, "nginx's own count");
    for (method, status) in [("GET", 200), ("GET", 404), ("HEAD", 200)] {
        let theirs = logged.iter().filter(|(m, s)| m == method && *s == status).count() as f64;
        let ours = scrape.sum("http_requests_total", &[("method", method), ("status", &status.to_string())]);
        assert_eq!(ours, theirs, "{method} {status}:\n{}", scrape.0);
    }
    assert_eq!(scrape.sum("http_requests_total", &[]), total, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_tls_keyed_lost_total", &[]), 0.0, "{}", scrape.0);
    // Every connection's first record opened under the keys its handshake handed over.
    assert_eq!(scrape.sum("observer_tls_keyed_verified_total", &[]), connections, "{}", scrape.0);
    assert_eq!(scrape.sum("http_requests_in_flight", &[]), 0.0);
    let big = 3.0 * BIG as f64;
    assert!(scrape.sum("http_response_size_bytes_sum", &[]) >= big, "{}", scrape.0);
    let server_seconds = scrape.sum("http_request_duration_seconds_sum", &[("endpoint", "/files/small.txt")]);
    let client_seconds: f64 = answers.iter().map(|(_, t)| t).sum();
    assert!(server_seconds > 0.0 && server_seconds <= client_seconds, "{server_seconds} vs {client_seconds}");
}

/// nginx with `protocols` (and HTTP/2 if `http2`) and a response of several records,
/// observed with `--tls keys`.
fn nginx_keyed(dir: &TempDir, protocols: &str, wrapper: &[&str], http2: bool) -> (ChildGuard, Observer, u16) {
    std::fs::create_dir_all(dir.path().join("www/files")).unwrap();
    std::fs::write(dir.path().join("www/files/big.bin"), vec![b'x'; BIG]).unwrap();
    let (nginx, tls_port) = start_nginx_tls(dir, "worker_processes 2;", protocols, http2);
    let observer = Observer::on(&[nginx.pid()]).args(&["--tls", "keys"]).wrapped_in(wrapper).start();
    (nginx, observer, tls_port)
}

/// Three and a half records of 16 KiB: a response whose records are not copied whole.
const BIG: usize = 58_000;

/// Per suite, over one connection: 8 small, 2 missing, the big one, a small one, then 2
/// HEADs over another.
fn curl_suites(tls_port: u16, version: &[&str], suites: &[&str]) -> Vec<(u16, f64)> {
    let https = |path: &str| format!("https://127.0.0.1:{tls_port}{path}");
    let mut urls: Vec<String> = (0..8).map(|_| https("/files/small.txt")).collect();
    urls.extend((0..2).map(|i| https(&format!("/files/missing/{i}"))));
    urls.push(https("/files/big.bin"));
    urls.push(https("/files/small.txt"));
    let mut answers = Vec::new();
    for suite in suites {
        let args: Vec<&str> = version.iter().copied().chain([*suite]).collect();
        let got = curl_timed(&args, &urls);
        let mut expected = vec![200; 8];
        expected.extend([404, 404, 200, 200]);
        assert_eq!(statuses(&got), expected, "{suite}");
        answers.extend(got);
        let head: Vec<&str> = args.iter().copied().chain(["--head"]).collect();
        let head = curl_timed(&head, &urls[..2]);
        assert_eq!(statuses(&head), vec![200; 2]);
        answers.extend(head);
    }
    answers
}

/// TLS 1.2 (nginx 1.22's default protocols): the master secret and the randoms, read where
/// the helper found them in this libssl; each AEAD suite, a resumed session.
#[test]
fn nginx_tls12_is_counted_exactly_from_session_keys() {
    require_root();
    require_command("nginx");
    require_command("curl");
    require_command("openssl");
    let dir = TempDir::new("tls-keys-12");
    let (_nginx, observer, tls_port) = nginx_keyed(&dir, "TLSv1.2", &[], false);
    let suites =
        ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"];
    let mut answers = curl_suites(tls_port, &["--tls-max", "1.2", "--ciphers"], &suites);
    // A first response of several records: numbered without a whole record to check, as
    // the record after the server's Finished (GCM's explicit nonces count from a random
    // start), and checked at the first whole one.
    let big = format!("https://127.0.0.1:{tls_port}/files/big.bin");
    answers.extend(curl_timed(&["--tls-max", "1.2"], &[big.clone(), big]));
    let session = dir.path().join("session.pem");
    let session = session.to_str().unwrap();
    let out = s_client(tls_port, &["-tls1_2", "-sess_out", session], &[&get("/files/small.txt", true)]);
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let out = s_client(tls_port, &["-tls1_2", "-sess_in", session], &[&get("/files/missing/r", true)]);
    assert!(out.contains("Reused, TLSv1.2") && out.contains("HTTP/1.1 404"), "{out}");
    answers.push((200, 0.0));
    counted_exactly(&dir, &observer, 3.0 * 14.0 + 2.0 + 2.0, 9.0, &answers);
    let log = observer.log();
    assert!(log.contains("learned where this libssl keeps TLS secrets"), "{log}");
}

/// HTTP/2 over TLS 1.3 (ALPN h2, which the helper found where this libssl keeps): the
/// sessions' ciphertext copied whole and their frames walked after decrypting, each suite,
/// several streams per connection, a response of several records. Nothing falls back.
#[test]
fn nginx_http2_over_tls13_is_counted_exactly_from_session_keys() {
    require_root();
    require_command("nginx");
    require_command("curl");
    require_command("openssl");
    let dir = TempDir::new("tls-keys-h2-13");
    let (_nginx, observer, tls_port) = nginx_keyed(&dir, "TLSv1.3", &[], true);
    let suites = ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"];
    let mut answers = curl_suites(tls_port, &["--http2", "--tlsv1.3", "--tls13-ciphers"], &suites);
    let big = format!("https://127.0.0.1:{tls_port}/files/big.bin");
    answers.extend(curl_timed(&["--http2", "--tlsv1.3"], &[big.clone(), big]));
    counted_exactly(&dir, &observer, 3.0 * 14.0 + 2.0, 7.0, &answers);
    let scrape = observer.scrape();
    assert_eq!(scrape.sum("observer_tls_keyed_fall_backs_total", &[]), 0.0, "{}", scrape.0);
    let log = observer.log();
    assert!(!log.contains("fall back to per-call uprobes"), "{log}");
}

/// Without the helper (`OBSERVER_TLS_HELPER=off`), each process's first TLS 1.3 sessions
/// teach where its secrets are: still exact. A TLS 1.2 connection cannot be seen then, and
/// is counted as lost, not guessed at.
#[test]
fn without_the_helper_tls13_is_learned_from_the_first_sessions() {
    require_root();
    require_command("nginx");
    require_command("curl");
    require_command("openssl");
    let dir = TempDir::new("tls-keys-live");
    let (_nginx, observer, tls_port) =
        nginx_keyed(&dir, "TLSv1.2 TLSv1.3", &["env", "OBSERVER_TLS_HELPER=off"], false);
    let suites = ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"];
    let answers = curl_suites(tls_port, &["--tlsv1.3", "--tls13-ciphers"], &suites);
    counted_exactly(&dir, &observer, 3.0 * 14.0, 6.0, &answers);
    let tls12 = format!("https://127.0.0.1:{tls_port}/files/small.txt");
    assert_eq!(statuses(&curl_timed(&["--tls-max", "1.2"], &[tls12])), vec![200]);
    let scrape = observer.scrape_until("the TLS 1.2 connection counted as lost", |s| {
        s.sum("observer_tls_keyed_lost_total", &[("reason", "not_found")]) == 1.0
    });
    assert_eq!(scrape.sum("http_requests_total", &[]), 3.0 * 14.0, "{}", scrape.0);
    let log = observer.log();
    assert!(
        log.contains("cannot learn where this libssl keeps TLS secrets (OBSERVER_TLS_HELPER=off)"),
        "{log}"
    );
    assert!(log.contains("learned where the process's OpenSSL keeps TLS 1.3 secrets"), "{log}");
}

/// HTTP/2 over TLS is not followed from keys: the first h2 connection is counted as lost and
/// the process falls back to per-call uprobes, which count every later one. A keyed HTTP/1
/// connection that spans the fall back is still counted once per request.
#[test]
fn http2_over_tls_without_the_helper_falls_back_to_per_call_uprobes_and_stays_exact() {
    require_root();
    require_command("nginx");
    require_command("curl");
    require_command("openssl");
    let dir = TempDir::new("tls-keys-h2");
    let (nginx, tls_port) = start_nginx_tls(&dir, "worker_processes 1;", "TLSv1.3", true);
    // Without the helper the selected ALPN's place is not known: an h2 session is found by
    // its first bytes, too late to copy its records whole.
    let observer = Observer::on(&[nginx.pid()])
        .args(&["--tls", "keys"])
        .wrapped_in(&["env", "OBSERVER_TLS_HELPER=off"])
        .start();
    let small = format!("https://127.0.0.1:{tls_port}/files/small.txt");
    let h2 = |urls: usize| -> Vec<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--insecure", "--http2", "--write-out", "%{http_code} %{http_version}\\n"]);
        for _ in 0..urls {
            cmd.args(["--output", "/dev/null", &small]);
        }
        let out = cmd.output().expect("curl");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    };
    let spanning = thread::spawn(move || {
        let lines =
            [get("/files/small.txt", false), get("/files/small.txt", false), get("/files/missing/s", true)];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        s_client_paced(tls_port, &["-tls1_3", "-alpn", "http/1.1"], &lines, Duration::from_millis(1500))
    });
    thread::sleep(Duration::from_millis(2000)); // its first request answered, keyed
    assert_eq!(h2(1), vec!["200 2"], "one h2 request");
    wait_until("the fall back", Duration::from_secs(10), || {
        observer.log().contains("fall back to per-call uprobes")
    });
    for _ in 0..3 {
        assert_eq!(h2(5), vec!["200 2"; 5]);
    }
    let out = spanning.join().expect("s_client");
    assert_eq!((out.matches("HTTP/1.1 200").count(), out.matches("HTTP/1.1 404").count()), (2, 1), "{out}");

    let logged = access_log(&dir);
    assert_eq!(logged.len(), 1 + 15 + 3, "nginx's own count");
    let scrape = observer.scrape_settled(18.0);
    assert_eq!(
        scrape.sum("http_requests_total", &[("status", "200")]),
        17.0,
        "all but the first h2 one:\n{}",
        scrape.0
    );
    assert_eq!(scrape.sum("http_requests_total", &[("status", "404")]), 1.0, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_tls_keyed_lost_total", &[("reason", "http2")]), 1.0, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_tls_keyed_lost_total", &[]), 1.0, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_tls_keyed_fall_backs_total", &[]), 1.0, "{}", scrape.0);
    assert_eq!(scrape.sum("observer_parse_errors_total", &[]), 0.0, "{}", scrape.0);
}

/// A libssl whose calibration fails (`OBSERVER_TLS_HELPER=fail` stands for a helper that
/// cannot make sense of it): its process is followed by per-call uprobes from the start,
/// TLS 1.3 and 1.2 alike, and nothing is lost.
#[test]
fn a_failed_calibration_falls_back_to_per_call_uprobes_and_stays_exact() {
    require_root();
    require_command("nginx");
    require_command("curl");
    require_command("openssl");
    let dir = TempDir::new("tls-keys-failed");
    let (_nginx, observer, tls_port) =
        nginx_keyed(&dir, "TLSv1.2 TLSv1.3", &["env", "OBSERVER_TLS_HELPER=fail"], false);
    let mut answers = curl_suites(tls_port, &["--tlsv1.3", "--tls13-ciphers"], &["TLS_AES_128_GCM_SHA256"]);
    answers.extend(curl_suites(
        tls_port,
        &["--tls-max", "1.2", "--ciphers"],
        &["ECDHE-RSA-AES256-GCM-SHA384"],
    ));
    let total = 2.0 * 14.0;
    let scrape = observer.scrape_settled(total);
    let logged = access_log(&dir);
    assert_eq!(logged.len() as f64, total, "nginx's own count");
    for status in [200, 404] {
        let theirs = logged.iter().filter(|(_, s)| *s == status).count() as f64;
        let ours = scrape.sum("http_requests_total", &[("status", &status.to_string())]);
        assert_eq!(ours, theirs, "{status}:\n{}", scrape.0);
    }
    assert_eq!(statuses(&answers).len() as f64, total);
    assert_eq!(scrape.sum("observer_tls_keyed_lost_total", &[]), 0.0, "{}", scrape.0);
    assert_eq!(
        scrape.sum("observer_tls_keyed_verified_total", &[]),
        0.0,
        "no session was keyed:\n{}",
        scrape.0
    );
    // Each process that maps the library (nginx's master and workers), counted and said.
    let log = observer.log();
    let said = log.matches("calibration failed").count() as f64;
    assert!(said >= 2.0, "said in the log for each worker:\n{log}");
    assert_eq!(scrape.sum("observer_tls_keyed_fall_backs_total", &[]), said, "{}", scrape.0);
}

/// The secrets the observer holds never reach its log, even at trace level: every secret
/// of the client's sessions (curl's SSLKEYLOGFILE, TLS 1.3 and 1.2) is looked for in it, in
/// hex and as a byte list.
#[test]
fn no_secret_reaches_the_log_at_trace_level() {
    require_root();
    require_command("nginx");
    require_command("curl");
    require_command("openssl");
    let dir = TempDir::new("tls-keys-trace");
    let (nginx, tls_port) = start_nginx_tls(&dir, "worker_processes 1;", "TLSv1.2 TLSv1.3", false);
    let observer = Observer::on(&[nginx.pid()]).args(&["--tls", "keys"]).log_level("trace").start();
    let keylog = dir.path().join("keys.log");
    let url = format!("https://127.0.0.1:{tls_port}/files/small.txt");
    for version in [["--tlsv1.3", "--tls-max", "1.3"], ["--tlsv1.2", "--tls-max", "1.2"]] {
        let out = Command::new("curl")
            .env("SSLKEYLOGFILE", &keylog)
            .args(["--silent", "--insecure", "--http1.1", "--write-out", "%{http_code}"])
            .args(version)
            .args(["--output", "/dev/null", &url, "--output", "/dev/null", &url])
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200200");
    }
    let scrape = observer.scrape_settled(4.0);
    assert_eq!(
        scrape.sum("observer_tls_keyed_verified_total", &[]),
        2.0,
        "both sessions keyed:\n{}",
        scrape.0
    );
    let secrets: Vec<String> = std::fs::read_to_string(&keylog)
        .expect("curl's key log")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    assert!(secrets.len() >= 5, "TLS 1.3's and TLS 1.2's secrets logged by curl: {secrets:?}");
    let log = observer.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "the log is at trace level");
    for secret in &secrets {
        let bytes: Vec<u8> = (0..secret.len() / 2)
            .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let listed = format!("{:?}", &bytes[..6]);
        let listed = listed.trim_end_matches(']');
        for needle in
            [secret.to_lowercase(), secret.to_uppercase(), secret[..16].to_lowercase(), listed.to_owned()]
        {
            assert!(!log.contains(&needle), "a secret ({needle}) in the observer's log");
        }
    }
}

/// The helper that learns where a libssl keeps its secrets loads the target's own file, and
/// loading a library runs its code: that code must run as nobody, without capabilities and
/// without a way back. A library whose constructor writes down its credentials shows it (it
/// has no OpenSSL in it: the helper then fails, naming the file).
#[test]
fn the_libssl_helper_runs_a_target_s_library_as_nobody() {
    use std::os::unix::fs::PermissionsExt as _;
    require_root();
    require_command("cc");
    let dir = TempDir::new("helper-privileges");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let library = dir.path().join("libspy.so");
    let source = format!("{}/tests/clients/spy.c", env!("CARGO_MANIFEST_DIR"));
    let built =
        Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&library).arg(&source).status().unwrap();
    assert!(built.success(), "cc could not build the spy library");
    std::fs::set_permissions(&library, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = dir.path().join("credentials");
    let helper =
        Command::new(observer_bin()).arg("tls-offsets").arg(&library).env("SPY_OUT", &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&helper.stderr);
    assert!(!helper.status.success() && stderr.contains("libspy.so"), "{stderr}");
    let seen = std::fs::read_to_string(&out).unwrap_or_else(|e| {
        panic!("the library's constructor wrote nothing ({e}); the helper said: {stderr}")
    });
    let field = |name: &str| {
        seen.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name}: {seen}"))
    };
    assert_eq!(field("uid "), "65534 65534 gid 65534 65534 groups 0", "{seen}");
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(set), "0000000000000000", "{set}\n{seen}");
    }
    assert_eq!(field("NoNewPrivs:"), "1", "{seen}");

    // Root without CAP_SETUID/CAP_SETGID (a daemon whose bounding set lacks them) cannot
    // become nobody: the helper refuses to load the library at all.
    require_command("setpriv");
    std::fs::remove_file(&out).unwrap();
    let helper = Command::new("setpriv")
        .args(["--bounding-set=-setuid,-setgid", "--"])
        .arg(observer_bin())
        .arg("tls-offsets")
        .arg(&library)
        .env("SPY_OUT", &out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&helper.stderr);
    assert!(!helper.status.success() && stderr.contains("cannot drop privileges"), "{stderr}");
    assert!(!out.exists(), "the library was loaded: {}", std::fs::read_to_string(&out).unwrap_or_default());
}
