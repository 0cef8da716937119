//! What /proc says about processes: which exist, their parents, children and threads, which
//! program they run; and about their sockets: which fds are sockets, which of them listen
//! on which TCP ports, whether they listen on unix sockets.

use std::{collections::BTreeSet, fs, path::Path};

/// Socket fds of `tgid` now, with their inodes, from /proc/PID/fd (`socket:[inode]` links).
pub fn socket_fds(tgid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{tgid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let link = fs::read_link(entry.path()).ok()?;
            let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
            Some((entry.file_name().to_str()?.parse().ok()?, inode))
        })
        .collect()
}

/// TCP ports `tgid`'s own sockets listen on, from /proc/PID/net/tcp{,6} (the process's
/// network namespace) matched against its socket inodes.
pub fn listening_ports(tgid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<u64> = socket_fds(tgid).into_iter().map(|(_, inode)| inode).collect();
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{tgid}/net/{table}")).unwrap_or_default();
        ports.extend(
            text.lines()
                .skip(1)
                .filter_map(tcp_listener)
                .filter(|(_, inode)| inodes.contains(inode))
                .map(|(port, _)| port),
        );
    }
    ports
}

/// `TCP_LISTEN` in /proc/net/tcp's `st` column.
const LISTEN: &str = "0A";

/// (local port, inode) of a /proc/net/tcp line if it is a listener.
fn tcp_listener(line: &str) -> Option<(u16, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
    if *state != LISTEN {
        return None;
    }
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    Some((port, inode.parse().ok()?))
}

/// `__SO_ACCEPTCON` in /proc/net/unix's `Flags` column: a listening unix socket.
const UNIX_ACCEPTCON: u32 = 0x0001_0000;

/// Whether `tgid` listens on a unix-domain socket (which `--hooks sock` does not follow).
pub fn listens_on_unix(tgid: u32) -> bool {
    let inodes: BTreeSet<u64> = socket_fds(tgid).into_iter().map(|(_, inode)| inode).collect();
    let text = fs::read_to_string(format!("/proc/{tgid}/net/unix")).unwrap_or_default();
    text.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = fields.get(3).and_then(|f| u32::from_str_radix(f, 16).ok()).unwrap_or(0);
        let inode = fields.get(6).and_then(|i| i.parse::<u64>().ok());
        flags & UNIX_ACCEPTCON != 0 && inode.is_some_and(|i| inodes.contains(&i))
    })
}

/// Generations walked up at most: a loop in a racing /proc read (a pid reused mid-walk)
/// cannot spin, and no real process tree is this deep.
const MAX_ANCESTRY: usize = 64;

/// Whether one of `pid`'s ancestors is in `ancestors`.
pub fn descends_from(pid: u32, ancestors: &[u32]) -> bool {
    let mut pid = pid;
    for _ in 0..MAX_ANCESTRY {
        let Some(parent) = parent_of(pid) else { return false };
        if ancestors.contains(&parent) {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        pid = parent;
    }
    false
}

fn parent_of(pid: u32) -> Option<u32> {
    status_number(pid, "PPid:")
}

/// Every pid in /proc now.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The thread group a pid belongs to, from /proc.
pub fn tgid_of(pid: u32) -> Option<u32> {
    status_number(pid, "Tgid:")
}

/// A numeric field of /proc/PID/status (`field` with its colon).
fn status_number(pid: u32, field: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .parse()
        .ok()
}

/// Every process below `pid` now (children of all its threads, recursively).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for task in tasks.filter_map(Result::ok) {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                if !found.contains(&child) && child != pid {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` runs one of `exes`: a path is compared with /proc/PID/exe, a name with its
/// file name (and with the process name, for interpreters started through a wrapper).
pub fn runs_one_of(pid: u32, exes: &[String]) -> bool {
    if exes.is_empty() || pid == std::process::id() {
        return false;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    exes.iter().any(|want| match &exe {
        _ if want.contains('/') => exe.as_deref() == Some(Path::new(want)),
        Some(path) => path.file_name().is_some_and(|n| n == want.as_str()) || comm.trim() == want,
        None => comm.trim() == want,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listeners_from_proc_net_tcp_lines() {
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0";
        assert_eq!(tcp_listener(listen), Some((8080, 41234)));
        let established = "   1: 0100007F:1F90 0100007F:D4E2 01 00000000:00000000 00:00000000 00000000     0        0 41299 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(tcp_listener(established), None);
        let v6 = "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        assert_eq!(tcp_listener(v6), Some((80, 777)));
    }

    #[test]
    fn finds_this_test_process_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
        drop(listener);
        assert!(!listening_ports(std::process::id()).contains(&port));
    }
}
