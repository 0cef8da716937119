//! What /proc says about a process's sockets: which fds are sockets, which of them listen on
//! which TCP ports, whether it listens on unix sockets.

use std::{collections::BTreeSet, fs};

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
