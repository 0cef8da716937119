//! The files in deploy/ do what they say: the Kubernetes manifests' and the systemd unit's
//! command lines start an observer that counts nginx's requests with exactly the capabilities
//! they grant; the unit passes systemd-analyze; the Dockerfile's stages fit together.
//! (deploy/prometheus and deploy/grafana are checked against a real Prometheus in
//! tests/prometheus.rs.)

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one document of a manifest.
fn manifest(name: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(&deploy(name))).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(docs.len(), 1, "{name}");
    docs.remove(0)
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec().expect("a list").iter().map(|s| s.as_str().expect("a string").to_owned()).collect()
}

/// Starts nginx (one process) on a free loopback port, and the observer with `args` (the
/// deployment's, its --listen moved to loopback) under a bounding set of `caps` only; checks
/// that it counts nginx's requests.
fn observer_with(args: &[String], caps: &[String]) {
    require_root();
    require_command("nginx");
    require_command("setpriv");
    require_command("curl");
    // The manifests mount the host's tracefs and grant no CAP_SYS_ADMIN: have it mounted.
    if !Path::new("/sys/kernel/tracing/events/syscalls").is_dir() {
        let status = Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]).status();
        assert!(status.unwrap().success(), "mounting tracefs");
    }
    let dir = TempDir::new("deploy-nginx");
    let port = free_port();
    let conf = write_nginx_conf(&dir, port, "master_process off;\nworker_processes 1;");
    let _nginx = ChildGuard::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stderr(Stdio::null()),
    );
    wait_for_port(port);

    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut args: Vec<String> = args.to_vec();
    match args.iter().position(|a| a == "--listen") {
        Some(i) => args[i + 1] = listen.to_string(),
        None => args.extend(["--listen".into(), listen.to_string()]),
    }
    let bounding: Vec<String> =
        caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    let mut observer = ChildGuard::spawn(
        "observer as deployed",
        Command::new("setpriv")
            .arg(format!("--bounding-set=-all,{}", bounding.join(",")))
            .arg("--")
            .arg(observer_bin())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    wait_until("the observer's /metrics", Duration::from_secs(30), || {
        observer.assert_running();
        try_http_get(listen, "/metrics").is_some()
    });
    let urls: Vec<String> =
        (0..10).map(|i| format!("http://127.0.0.1:{port}/files/small.txt?n={i}")).collect();
    assert_eq!(curl(&[], &urls), vec![200; 10]);
    wait_until("10 requests counted", Duration::from_secs(10), || {
        try_http_get(listen, "/metrics").is_some_and(|m| Scrape(m).sum("http_requests_total", &[]) == 10.0)
    });
}

/// The observer container of a pod spec, checked for what every manifest must have.
fn observer_container(pod: &Yaml) -> &Yaml {
    let container = pod["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("observer"))
        .expect("an observer container");
    let security = &container["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let port =
        container["ports"].as_vec().unwrap().iter().find(|p| p["name"].as_str() == Some("metrics")).unwrap();
    assert_eq!(port["containerPort"].as_i64(), Some(9464));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/metrics"));
    let mounts = container["volumeMounts"].as_vec().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"].as_str() == Some("/sys/kernel/tracing")), "tracefs mounted");
    container
}

fn scrape_annotations(template: &Yaml) {
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9464"));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
}

#[test]
fn the_sidecar_pod_runs_with_the_capabilities_it_grants() {
    let doc = manifest("kubernetes/sidecar.yaml");
    let template = &doc["spec"]["template"];
    scrape_annotations(template);
    let pod = &template["spec"];
    assert_eq!(
        pod["shareProcessNamespace"].as_bool(),
        Some(true),
        "the sidecar must see the server's processes"
    );
    assert!(pod["hostPID"].is_badvalue(), "a sidecar stays in its pod's PID namespace");
    let container = observer_container(pod);
    let caps = strings(&container["securityContext"]["capabilities"]["add"]);
    assert_eq!(caps, ["BPF", "PERFMON", "SYS_PTRACE"], "the README's documented set");
    observer_with(&strings(&container["args"]), &caps);
}

#[test]
fn the_daemonset_runs_with_the_capabilities_it_grants() {
    let doc = manifest("kubernetes/daemonset.yaml");
    assert_eq!(doc["kind"].as_str(), Some("DaemonSet"));
    let template = &doc["spec"]["template"];
    scrape_annotations(template);
    let pod = &template["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let container = observer_container(pod);
    observer_with(
        &strings(&container["args"]),
        &strings(&container["securityContext"]["capabilities"]["add"]),
    );
}

#[test]
fn the_systemd_unit_verifies_and_runs_with_its_bounding_set() {
    require_command("systemd-analyze");
    let unit = read(&deploy("systemd/observer.service"));
    let value = |key: &str| {
        unit.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key}="))
    };
    let exec: Vec<String> = value("ExecStart").split_whitespace().map(str::to_owned).collect();
    assert_eq!(exec[0], "/usr/local/bin/observer");
    // systemd-analyze checks that the binary exists: point it at the one under test.
    let dir = TempDir::new("systemd");
    let copy = dir.path().join("observer.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/observer", observer_bin())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains(&*copy.to_string_lossy()),
        "systemd-analyze verify: {stderr}"
    );
    let caps: Vec<String> = value("CapabilityBoundingSet").split_whitespace().map(str::to_owned).collect();
    observer_with(&exec[1..], &caps);
}

#[test]
fn the_dockerfile_stages_fit_together() {
    let dockerfile = read(&deploy("Dockerfile"));
    let instructions: Vec<(&str, &str)> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(' '))
        .collect();
    let froms: Vec<&str> = instructions.iter().filter(|(i, _)| *i == "FROM").map(|(_, a)| *a).collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage: {froms:?}");
    // The builder's Rust is the pinned toolchain (rust-toolchain.toml), whose LLVM bpf-linker
    // is built against.
    let toolchain = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../rust-toolchain.toml"));
    let channel = toolchain.lines().find_map(|l| l.strip_prefix("channel = ")).unwrap().trim_matches('"');
    let minor = channel.rsplit_once('.').map_or(channel, |(m, _)| m);
    assert!(froms[0].starts_with(&format!("rust:{minor}-")) && froms[0].ends_with(" AS build"), "{froms:?}");
    let runs: Vec<&str> = instructions.iter().filter(|(i, _)| *i == "RUN").map(|(_, a)| *a).collect();
    assert!(runs.contains(&"cargo xtask setup --build-only"), "{runs:?}");
    assert!(runs.contains(&"cargo build --release -p observer"), "{runs:?}");
    let xtask = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/src/main.rs"));
    assert!(xtask.contains("build_only: bool"), "xtask setup has --build-only");
    let copy = instructions.iter().find(|(i, a)| *i == "COPY" && a.starts_with("--from=build")).unwrap().1;
    assert_eq!(copy, "--from=build /src/target/release/observer /usr/local/bin/observer");
    let entrypoint = instructions.iter().find(|(i, _)| *i == "ENTRYPOINT").unwrap().1;
    assert_eq!(entrypoint, r#"["/usr/local/bin/observer"]"#);
    // The default command is one the binary accepts.
    let cmd: Vec<String> = serde_json::from_str(instructions.iter().find(|(i, _)| *i == "CMD").unwrap().1)
        .expect("CMD in exec form");
    let out = Command::new(observer_bin()).args(&cmd).output().unwrap();
    assert!(out.status.success(), "observer {cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}
