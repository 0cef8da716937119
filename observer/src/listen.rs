//! The targets' listen queues, sampled from the kernel's sock_diag (what `ss -ltnm` shows):
//! per listening port, the accept queue's length and limit and the connection attempts the
//! kernel dropped there. Only something outside the server sees these: a server whose
//! accept queue overflows never learns of the connections it lost.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use tracing::{debug, warn};

use crate::metrics::{Metrics, PortLabels};

/// One listener as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub inode: u32,
    /// Connections waiting for accept, and the accept queue's limit.
    pub queued: u32,
    pub limit: u32,
    /// Attempts dropped at this listener since it was created (`SK_MEMINFO_DROPS`).
    pub drops: u32,
}

/// Samples the listeners on the targets' ports, in each network namespace a target lives in.
pub struct ListenQueues {
    /// A sock_diag socket per network namespace (by nsfs inode): a socket stays in the
    /// namespace it was made in, so ones opened while the observer could still enter other
    /// namespaces keep working after it dropped that right.
    namespaces: BTreeMap<u64, Socket>,
    /// Namespaces of targets that could not be entered (said once each).
    unreachable: BTreeSet<u64>,
    ports: BTreeSet<u16>,
    /// Last drop count per listener (namespace, inode) ever seen, with its port: a listener
    /// that closes keeps what it counted.
    drops: BTreeMap<(u64, u32), (u16, u32)>,
}

impl ListenQueues {
    pub fn new() -> Self {
        ListenQueues {
            namespaces: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            ports: BTreeSet::new(),
            drops: BTreeMap::new(),
        }
    }

    /// Follows `port`, a target's listening port.
    pub fn add_port(&mut self, port: u16) {
        self.ports.insert(port);
    }

    /// Samples in `pid`'s network namespace from now on: a socket made there (entering the
    /// namespace needs CAP_SYS_ADMIN when it is not ours; before the observer drops its
    /// capabilities, that is at attach).
    pub fn add_namespace_of(&mut self, pid: u32) {
        let path = format!("/proc/{pid}/ns/net");
        let Ok(ns) = std::fs::metadata(&path).map(|m| m.ino()) else {
            return; // gone already
        };
        if self.namespaces.contains_key(&ns) || self.unreachable.contains(&ns) {
            return;
        }
        let ours = std::fs::metadata("/proc/self/ns/net").is_ok_and(|m| m.ino() == ns);
        let socket = if ours { diag_socket() } else { diag_socket_in(&path) };
        match socket {
            Ok(socket) => {
                debug!(pid, ns, "sampling listen queues in the process's network namespace");
                self.namespaces.insert(ns, socket);
            }
            Err(e) => {
                warn!(pid, "listen queues of this process's network namespace are not sampled: {e}");
                self.unreachable.insert(ns);
            }
        }
    }

    /// Reads every namespace's listeners and updates the listen metrics: gauges for the
    /// listeners there now, the drop counters by what each listener added since last time.
    pub fn sample(&mut self, metrics: &Metrics) {
        let mut queued: BTreeMap<u16, (i64, i64)> = self.ports.iter().map(|&p| (p, (0, 0))).collect();
        for (&ns, socket) in &self.namespaces {
            let listeners = match dump_listeners(socket) {
                Ok(listeners) => listeners,
                Err(e) => {
                    debug!(ns, "sock_diag dump failed: {e}");
                    continue;
                }
            };
            for l in listeners.into_iter().filter(|l| self.ports.contains(&l.port)) {
                let sum = queued.entry(l.port).or_default();
                sum.0 += i64::from(l.queued);
                sum.1 += i64::from(l.limit);
                let seen = self.drops.entry((ns, l.inode)).or_insert((l.port, 0));
                let added = l.drops.saturating_sub(seen.1);
                seen.1 = seen.1.max(l.drops);
                metrics.listen.drops.get_or_create(&PortLabels { port: l.port }).inc_by(u64::from(added));
            }
        }
        for (port, (length, limit)) in queued {
            let labels = PortLabels { port };
            metrics.listen.queue_length.get_or_create(&labels).set(length);
            metrics.listen.queue_limit.get_or_create(&labels).set(limit);
            // A counter for every followed port, zero until something is dropped.
            let _ = metrics.listen.drops.get_or_create(&labels);
        }
    }
}

impl Default for ListenQueues {
    fn default() -> Self {
        Self::new()
    }
}

fn diag_socket() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// A sock_diag socket made in the network namespace at `path`, on a thread of its own (the
/// namespace is per thread; this one ends with it).
fn diag_socket_in(path: &str) -> std::io::Result<Socket> {
    let ns = File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) on an open nsfs fd; it changes only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                diag_socket()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

/// Every TCP listener (IPv4 and IPv6) in the socket's namespace.
pub fn dump_listeners(socket: &Socket) -> std::io::Result<Vec<Listener>> {
    let mut found = Vec::new();
    for (family, socket_id) in [(AF_INET, SocketId::new_v4()), (AF_INET6, SocketId::new_v6())] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let request = InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::SKMEMINFO,
            states: StateFlags::LISTEN,
            socket_id,
        };
        let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        socket.send(&buf, 0)?;
        receive_dump(socket, &mut found)?;
    }
    Ok(found)
}

fn receive_dump(socket: &Socket, found: &mut Vec<Listener>) -> std::io::Result<()> {
    loop {
        let (bytes, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < bytes.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&bytes[offset..])
                .map_err(|e| std::io::Error::other(format!("sock_diag reply: {e}")))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    found.push(listener(&response));
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(std::io::Error::other(format!("sock_diag: {e:?}"))),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// For a listener, inet_diag's queue fields are the accept queue's length (`recv_queue`,
/// `sk_ack_backlog`) and limit (`send_queue`, `sk_max_ack_backlog`).
fn listener(response: &InetResponse) -> Listener {
    let drops = response
        .nlas
        .iter()
        .find_map(|nla| match nla {
            Nla::MemInfo(info) => Some(info.drops),
            _ => None,
        })
        .unwrap_or(0);
    Listener {
        port: response.header.socket_id.source_port,
        inode: response.header.inode,
        queued: response.header.recv_queue,
        limit: response.header.send_queue,
        drops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the kernel: a listener of this test process, with a backlog of 3 and two
    /// connections it has not accepted.
    #[test]
    fn reads_a_listeners_queue_and_limit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // SAFETY: listen(2) again on our own socket, to set a known backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 3) }, 0);
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let socket = diag_socket().unwrap();
        let found = dump_listeners(&socket).unwrap();
        let ours = found.iter().find(|l| l.port == port).expect("our listener in the dump");
        assert_eq!((ours.queued, ours.limit, ours.drops), (2, 3, 0), "{ours:?}");
    }
}
