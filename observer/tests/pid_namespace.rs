//! The observer inside a container's PID namespace (`unshare --pid --fork --mount-proc`, as a
//! sidecar sharing the server's namespace): `--pid` and `--exe` work with the pids seen
//! there, and children forked there are followed.

mod common;

use std::{path::Path, time::Duration};

use common::*;

/// Runs `script` as pid 1's shell in a new PID namespace; it ends by running the observer
/// (`exec "$@"`). Killing unshare (the guard) kills the namespace and everything in it.
fn in_new_pid_namespace(script: &str, extra: &[&str]) -> Observer {
    require_root();
    require_command("unshare");
    let wrapper = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-ec", script, "sh"];
    Observer::on(&[]).args(extra).wrapped_in(&wrapper).start()
}

/// Host pids of the processes in the PID namespace of host pid `member`, with their pid in
/// that namespace and their command line.
fn namespace_processes(member: u32) -> Vec<(u32, u32, String)> {
    let ns = std::fs::read_link(format!("/proc/{member}/ns/pid")).unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if std::fs::read_link(entry.path().join("ns/pid")).ok().as_deref() != Some(ns.as_path()) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let Some(inner) = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        found.push((pid, inner, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    found
}

/// The namespace's pid 1 (the observer), as a host pid.
fn namespace_init(observer: &Observer) -> u32 {
    let unshare = observer.guard.pid();
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    children.split_whitespace().next().expect("unshare's child").parse().unwrap()
}

#[test]
fn pid_is_the_one_seen_in_the_observers_pid_namespace() {
    require_command("python3");
    require_command("curl");
    let www = TempDir::new("pidns-python");
    std::fs::write(www.path().join("hello.txt"), "hello\n").unwrap();
    let port = free_port();
    // python3 is a shim that execs: `$!` is the server itself.
    let script = format!(
        "cd {www}\npython3 -m http.server --bind 127.0.0.1 {port} >/dev/null 2>&1 &\nexec \"$@\" --pid $!",
        www = www.path().display()
    );
    let observer = in_new_pid_namespace(&script, &[]);
    wait_for_port(port);
    let inside = namespace_processes(namespace_init(&observer));
    let (host_pid, ns_pid, _) =
        inside.iter().find(|(_, _, cmd)| cmd.contains("http.server")).expect("the server in the namespace");
    assert_ne!(host_pid, ns_pid, "the namespace gives the server a pid of its own");
    assert!(observer.log().contains("running in a child PID namespace"), "{}", observer.log());

    let urls: Vec<String> = (0..25).map(|_| format!("http://127.0.0.1:{port}/hello.txt")).collect();
    assert_eq!(curl(&[], &urls), vec![200; 25]);
    assert_eq!(curl(&[], &[format!("http://127.0.0.1:{port}/missing")]), vec![404]);
    let scrape = observer.scrape_settled(26.0);
    assert_eq!(scrape.sum("http_requests_total", &[("endpoint", "/hello.txt"), ("status", "200")]), 25.0);
    assert_eq!(scrape.sum("http_requests_total", &[("status", "404")]), 1.0);
    assert_eq!(scrape.sum("http_requests_total", &[]), 26.0, "{}", scrape.0);
}

#[test]
fn exe_and_forked_workers_are_followed_inside_a_pid_namespace() {
    require_command("nginx");
    require_command("curl");
    let dir = TempDir::new("pidns-nginx");
    let port = free_port();
    let conf = write_nginx_conf(&dir, port, "master_process on;\nworker_processes 2;\nuser root;");
    let script = format!(
        "nginx -c {conf} -e {log} >/dev/null 2>&1 &\nexec \"$@\"",
        conf = conf.display(),
        log = dir.path().join("error.log").display()
    );
    // The sidecar's way: by program name, since the server's pid is not known in advance.
    let observer = in_new_pid_namespace(&script, &["--exe", "nginx"]);
    wait_for_port(port);
    let init = namespace_init(&observer);
    let workers = || -> Vec<u32> {
        namespace_processes(init)
            .into_iter()
            .filter(|(_, _, cmd)| cmd.starts_with("nginx: worker"))
            .map(|(host, _, _)| host)
            .collect()
    };
    wait_until("two nginx workers", Duration::from_secs(10), || workers().len() == 2);

    let url = |i: usize| format!("http://127.0.0.1:{port}/files/small.txt?i={i}");
    assert_eq!(curl(&[], &(0..20).map(url).collect::<Vec<_>>()), vec![200; 20]);
    let scrape = observer.scrape_settled(20.0);
    assert_eq!(scrape.sum("http_requests_total", &[("status", "200")]), 20.0, "{}", scrape.0);

    // The master forks new workers inside the namespace: followed from their first syscall.
    kill_workers_and_wait_for_new(workers);
    for round in 0..3 {
        // A connection each: the new workers share them out.
        let more: Vec<String> = (0..10).map(|i| url(100 * round + i)).collect();
        assert_eq!(curl(&[], &more), vec![200; 10]);
    }
    let scrape = observer.scrape_settled(50.0);
    assert_eq!(scrape.sum("http_requests_total", &[("status", "200")]), 50.0, "{}", scrape.0);
    assert!(Path::new(&format!("/proc/{init}")).exists());
}
