//! Startup failures: one clear line on stderr and a non-zero exit.

mod common;

use std::{
    net::TcpListener,
    process::{Command, Output},
};

use common::*;

fn observer(args: &[&str]) -> Output {
    Command::new(observer_bin()).args(args).env("RUST_LOG", "off").output().expect("running observer")
}

/// The observer run in a private mount namespace after `setup` (shell) changed what it sees.
fn observer_after(setup: &str, args: &[&str]) -> Output {
    require_root();
    require_command("unshare");
    Command::new("unshare")
        .args(["--mount", "sh", "-ec", &format!("{setup}\nexec \"$@\""), "sh", observer_bin()])
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("running unshare")
}

/// tracefs mounted in the namespace whatever the host has.
const MOUNT_TRACEFS: &str =
    "[ -d /sys/kernel/tracing/events/syscalls ] || mount -t tracefs nodev /sys/kernel/tracing";

fn assert_one_line_error(out: &Output, expected: &str) {
    assert!(!out.status.success(), "expected failure, got {}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{stderr}");
    assert!(lines[0].starts_with("observer: error: "), "{stderr}");
    assert!(lines[0].contains(expected), "expected {expected:?} in {stderr}");
}

#[test]
fn unknown_pid_is_a_clear_error() {
    let unused = 4_000_000; // above the kernel's pid_max limit (2^22)
    assert_one_line_error(
        &observer(&["run", "--pid", &unused.to_string(), "--listen", "127.0.0.1:0"]),
        "no such process: 4000000",
    );
}

#[test]
fn listen_address_in_use_is_a_clear_error() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let me = std::process::id().to_string();
    assert_one_line_error(
        &observer(&["run", "--pid", &me, "--listen", &addr]),
        &format!("listen address {addr} is already in use"),
    );
}

#[test]
fn missing_privileges_are_a_clear_error() {
    require_root();
    require_command("setpriv");
    // Still uid 0, but with no capabilities at all: what a container without CAP_BPF gets.
    let me = std::process::id().to_string();
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(observer_bin())
        .args(["run", "--pid", &me, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "off")
        .output()
        .expect("running setpriv");
    assert_one_line_error(&out, "not permitted");
}

#[test]
fn a_missing_tracepoint_is_a_clear_error() {
    // What a kernel built without CONFIG_FTRACE_SYSCALLS looks like: no syscalls:sys_enter_close.
    let me = std::process::id().to_string();
    let setup =
        format!("{MOUNT_TRACEFS}\nmount -t tmpfs none /sys/kernel/tracing/events/syscalls/sys_enter_close");
    for hooks in ["raw", "tracepoints"] {
        assert_one_line_error(
            &observer_after(&setup, &["run", "--pid", &me, "--listen", "127.0.0.1:0", "--hooks", hooks]),
            "tracepoint syscalls:sys_enter_close does not exist on this kernel",
        );
    }
    let setup =
        format!("{MOUNT_TRACEFS}\nmount -t tmpfs none /sys/kernel/tracing/events/sched/sched_process_fork");
    assert_one_line_error(
        &observer_after(&setup, &["run", "--pid", &me, "--listen", "127.0.0.1:0"]),
        "tracepoint sched:sched_process_fork does not exist on this kernel",
    );
}

#[test]
fn no_tracefs_and_no_right_to_mount_it_is_a_clear_error() {
    require_command("setpriv");
    let me = std::process::id().to_string();
    // tracefs hidden, and the documented minimal capabilities, which cannot mount it.
    let setup = "mount -t tmpfs none /sys/kernel/tracing\nmount -t tmpfs none /sys/kernel/debug\n\
                 set -- setpriv --bounding-set=-all,+bpf,+perfmon,+sys_ptrace -- \"$@\"";
    assert_one_line_error(
        &observer_after(setup, &["run", "--pid", &me, "--listen", "127.0.0.1:0"]),
        "tracefs is not mounted and mounting it on /sys/kernel/tracing failed: Operation not permitted",
    );
}

#[test]
fn btf_hooks_without_kernel_btf_are_a_clear_error() {
    let me = std::process::id().to_string();
    for hooks in ["btf", "sock"] {
        assert_one_line_error(
            &observer_after(
                "mount -t tmpfs none /sys/kernel/btf",
                &["run", "--pid", &me, "--listen", "127.0.0.1:0", "--hooks", hooks],
            ),
            &format!("--hooks {hooks} needs the kernel's BTF (/sys/kernel/btf/vmlinux)"),
        );
    }
}

#[test]
fn bad_sizes_are_refused_before_anything_is_bound() {
    // The listen address is taken: had the values been checked after binding, that would be
    // the error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    for (flag, value, expected) in
        [("--ring-bytes", "1000", "power of two"), ("--max-connections", "0", "--max-connections")]
    {
        let out = observer(&["run", "--pid", "1", "--listen", &listen, flag, value]);
        assert_eq!(out.status.code(), Some(2), "a usage error");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag) && stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("in use"), "{stderr}");
    }
}
