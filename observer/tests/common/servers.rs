//! Servers nobody here wrote, and the demo server, started for a test: nginx configurations,
//! certificates, the demo's axum server.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use super::{ChildGuard, TempDir, free_port, http_get_text, observer_bin, wait_for_port, wait_until};

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
    /// The plain listener speaks HTTP/2 with prior knowledge (h2c) instead of HTTP/1.
    pub h2c: bool,
    /// The plain listener's address instead of 127.0.0.1 (one in a namespace the test made).
    pub address: Option<&'a str>,
    /// Parameters of both listeners, e.g. ` sndbuf=32k`.
    pub listen_params: &'a str,
    /// The TLS listener's `ssl_protocols` instead of nginx's default (1.22: TLS 1.2 and older).
    pub tls_protocols: Option<&'a str>,
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
            let protocols =
                extra.tls_protocols.map(|p| format!("        ssl_protocols {p};\n")).unwrap_or_default();
            format!(
                "        listen 127.0.0.1:{port} ssl{}{};\n        ssl_certificate {};\n        ssl_certificate_key {};\n{protocols}",
                if extra.http2 { " http2" } else { "" },
                extra.listen_params,
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
        listen {address}:{port}{h2c}{params};
{tls}        root {root}/www;
{locations}
    }}
}}
"#,
        processes = extra.processes,
        locations = extra.locations,
        h2c = if extra.h2c { " http2" } else { "" },
        address = extra.address.unwrap_or("127.0.0.1"),
        params = extra.listen_params,
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

/// nginx (`processes`, access log on) serving HTTPS with `protocols` (and HTTP/2 by ALPN if
/// `http2`) on a loopback port besides its plain one, once both accept: (nginx, TLS port).
pub fn start_nginx_tls(dir: &TempDir, processes: &str, protocols: &str, http2: bool) -> (ChildGuard, u16) {
    let (port, tls_port) = (free_port(), free_port());
    let conf = write_nginx_conf_with(
        dir,
        port,
        NginxConf {
            processes,
            access_log: true,
            tls_port: Some(tls_port),
            tls_protocols: Some(protocols),
            http2,
            ..Default::default()
        },
    );
    let nginx = start_nginx_conf(&conf, port);
    wait_for_port(tls_port);
    (nginx, tls_port)
}

/// The children of `pid` (its main thread's), e.g. an nginx master's workers.
pub fn children_of(pid: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Kills (SIGKILL) the nginx workers `workers` lists, waits until the master has forked as
/// many new ones, and returns those.
pub fn kill_workers_and_wait_for_new(workers: impl Fn() -> Vec<u32>) -> Vec<u32> {
    let old = workers();
    for pid in &old {
        assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    }
    wait_until("new nginx workers", Duration::from_secs(10), || {
        let now = workers();
        now.len() == old.len() && now.iter().all(|p| !old.contains(p))
    });
    workers()
}

/// (method, status) of each request in nginx's access log (the combined format): the
/// server's own count. Empty if nginx wrote none.
pub fn access_log(dir: &TempDir) -> Vec<(String, u16)> {
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
    log.lines()
        .map(|line| {
            let request = line.split('"').nth(1).expect("a request line");
            let status = line.split('"').nth(2).and_then(|s| s.split_whitespace().next()).expect("a status");
            (request.split(' ').next().unwrap().to_owned(), status.parse().unwrap())
        })
        .collect()
}

/// Apache httpd (Debian's `apache2-bin`, event MPM, mod_http2) in the foreground, serving
/// `index.html` from `dir` on `port` in HTTP/1.1 and h2c (by prior knowledge, or by
/// `Upgrade: h2c`), with an access log of `STATUS PROTOCOL` lines; once it accepts.
pub fn start_apache_h2c(dir: &TempDir, port: u16) -> ChildGuard {
    let root = dir.path();
    std::fs::create_dir_all(root.join("htdocs")).unwrap();
    std::fs::write(root.join("htdocs/index.html"), "hello\n").unwrap();
    let modules = "/usr/lib/apache2/modules";
    let conf = format!(
        "ServerRoot {root}\nListen 127.0.0.1:{port}\nServerName localhost\n\
         LoadModule mpm_event_module {modules}/mod_mpm_event.so\n\
         LoadModule http2_module {modules}/mod_http2.so\n\
         LoadModule authz_core_module {modules}/mod_authz_core.so\n\
         User nobody\nGroup nogroup\nPidFile {root}/httpd.pid\nErrorLog {root}/error.log\n\
         LogFormat \"%>s %H\" statuses\nCustomLog {root}/access.log statuses\n\
         DocumentRoot {root}/htdocs\nProtocols h2c http/1.1\nH2Upgrade on\n\
         StartServers 1\nServerLimit 1\nThreadsPerChild 8\nMaxRequestWorkers 8\n",
        root = root.display(),
    );
    std::fs::write(root.join("httpd.conf"), conf).unwrap();
    let apache = ChildGuard::spawn(
        "apache2",
        Command::new("/usr/sbin/apache2")
            .arg("-f")
            .arg(root.join("httpd.conf"))
            .arg("-DFOREGROUND")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    apache
}

/// (status, protocol) of each request in Apache's access log (`start_apache_h2c`'s format).
pub fn apache_log(dir: &TempDir) -> Vec<(u16, String)> {
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
    log.lines()
        .map(|line| {
            let (status, protocol) = line.split_once(' ').expect("status and protocol");
            (status.parse().expect("a status"), protocol.to_owned())
        })
        .collect()
}

/// The demo server's own view (its middleware, around the handler): (endpoint's first path
/// segment, method, status) → (count, duration sum in seconds).
pub fn demo_server_stats(addr: SocketAddr) -> std::collections::BTreeMap<(String, String, u16), (f64, f64)> {
    http_get_text(addr, "/internal/stats")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            (
                (f[0].to_owned(), f[1].to_owned(), f[2].parse().unwrap()),
                (f[3].parse().unwrap(), f[4].parse().unwrap()),
            )
        })
        .collect()
}

/// python's http.server on `port`, serving `dir`; its log (a line per request, with the
/// status) in `log` if given.
pub fn start_python_upstream(dir: &Path, port: u16, log: Option<&Path>) -> ChildGuard {
    let stderr = log.map_or_else(Stdio::null, |log| Stdio::from(std::fs::File::create(log).unwrap()));
    let upstream = ChildGuard::spawn(
        "python upstream",
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(stderr),
    );
    wait_for_port(port);
    upstream
}
