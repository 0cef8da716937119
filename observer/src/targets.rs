//! Which processes are observed and why: the pids asked for, their children (`--children`),
//! processes of the programs named by `--exe`, and the kernel's own view kept in step.

use std::sync::Mutex;

use observer_common::Kind;
use tracing::{info, warn};

use crate::{
    conn::Connections,
    events::Event,
    listen::ListenQueues,
    probes::{ProbeError, Probes},
    procfs::{all_pids, descendants, descends_from, listening_ports, process_exists, runs_one_of, tgid_of},
};

/// The live target processes, and what the kernel said about their process trees and
/// listeners since the last `follow`.
pub struct Targets<'a> {
    live: Vec<u32>,
    forks: Vec<Fork>,
    execs: Vec<u32>,
    listeners: Vec<Listener>,
    /// Processes that started a watched program, with the sweeps left in which to look
    /// again for the OpenSSL they map (see `sweep`).
    started: Vec<(u32, u8)>,
    exes: &'a [String],
    follow_children: bool,
    listen: &'a Mutex<ListenQueues>,
}

/// A target forked (a process or a thread). `child` is 0 in a child PID namespace, where the
/// kernel knows only the child's pid in the initial namespace.
struct Fork {
    parent: u32,
    child: u32,
}

/// `--hooks sock`: a target's listener opened (the kernel follows its port at once) or closed.
struct Listener {
    pid: u32,
    port: u16,
    open: bool,
}

impl<'a> Targets<'a> {
    pub fn new(exes: &'a [String], follow_children: bool, listen: &'a Mutex<ListenQueues>) -> Self {
        Targets {
            live: Vec::new(),
            forks: Vec::new(),
            execs: Vec::new(),
            listeners: Vec::new(),
            started: Vec::new(),
            exes,
            follow_children,
            listen,
        }
    }

    /// At start: `pids`, every running process of the `--exe` programs, and with
    /// `--children` their descendants.
    pub fn attach(&mut self, pids: &[u32], probes: &mut Probes) -> Result<(), ProbeError> {
        let running = all_pids().into_iter().filter(|&pid| runs_one_of(pid, self.exes));
        for pid in pids.iter().copied().chain(running) {
            let tree = if self.follow_children { descendants(pid) } else { Vec::new() };
            for pid in std::iter::once(pid).chain(tree) {
                probes.add_target(pid)?;
                follow_listen_queues(self.listen, pid);
                self.live.push(pid);
            }
        }
        Ok(())
    }

    /// Takes a record about the process trees or listeners (fork, exec, listen); false for
    /// any other, which belongs to a connection.
    pub fn take(&mut self, event: &Event<'_>) -> bool {
        match event.kind {
            Kind::Fork => self.forks.push(Fork { parent: event.tgid, child: event.child }),
            Kind::Exec => self.execs.push(event.tgid),
            Kind::Listen | Kind::Unlisten => self.listeners.push(Listener {
                pid: event.tgid,
                port: event.port,
                open: event.kind == Kind::Listen,
            }),
            Kind::Data | Kind::Open | Kind::Close | Kind::Keys => return false,
        }
        true
    }

    /// Whether `take` collected fork or exec records not yet followed.
    pub fn changing(&self) -> bool {
        !self.forks.is_empty() || !self.execs.is_empty()
    }

    /// Acts on what `take` collected: new processes followed (their listen queues sampled
    /// too), threads dropped again, listeners followed or let go.
    pub fn follow(&mut self, probes: &mut Probes) {
        let known = self.live.len();
        self.follow_forks(probes);
        self.follow_execs(probes);
        for &pid in &self.live[known..] {
            follow_listen_queues(self.listen, pid);
        }
        self.follow_listeners(probes);
    }

    /// Live targets whose process is gone.
    pub fn exited(&self) -> Vec<u32> {
        self.live.iter().copied().filter(|&pid| !process_exists(pid)).collect()
    }

    /// Once a second: targets that exited (`gone`, found by `exited` before their last
    /// records were drained) are let go (their metrics stay served), and with `--children`
    /// strays the kernel has are adopted or cleared.
    pub fn sweep(&mut self, probes: &mut Probes, conns: &mut Connections<'_>, gone: &[u32]) {
        self.live.retain(|&pid| {
            if !gone.contains(&pid) {
                return true;
            }
            warn!(pid, "target process exited; its metrics stay served");
            probes.remove_target(pid);
            conns.forget_process(pid);
            false
        });
        if self.follow_children {
            self.adopt_strays(probes);
        }
        // At exec only the program and its loader are mapped; the loader maps libssl later,
        // and the daemon can be quicker (it is woken at once for an exec).
        self.started.retain_mut(|(pid, sweeps_left)| {
            probes.follow_tls(*pid);
            *sweeps_left -= 1;
            *sweeps_left > 0 && self.live.contains(pid)
        });
    }

    /// Every target has exited and none can come back (no `--exe` to wait for).
    pub fn all_gone(&self) -> bool {
        self.live.is_empty() && self.exes.is_empty()
    }

    /// New children of targets, already targets in the kernel: threads are dropped again,
    /// processes get their inherited sockets learned and join the live set.
    fn follow_forks(&mut self, probes: &mut Probes) {
        for Fork { parent, child } in self.forks.drain(..) {
            if child == 0 {
                // The kernel adopts the child at its first syscall; find it here to learn its sockets.
                for child in descendants(parent) {
                    if !self.live.contains(&child) && probes.add_target(child).is_ok() {
                        self.live.push(child);
                    }
                }
                continue;
            }
            match tgid_of(child) {
                Some(tgid) if tgid == child => {
                    probes.learn_sockets(child);
                    probes.follow_tls(child);
                    if !self.live.contains(&child) {
                        self.live.push(child);
                    }
                }
                Some(_) => probes.forget_thread(child),
                None => probes.forget_thread(child), // already gone
            }
        }
    }

    /// Processes that started a program named by `--exe` become targets (a restarted server),
    /// with `--children` any children they forked before this (the kernel could not know
    /// they were targets).
    fn follow_execs(&mut self, probes: &mut Probes) {
        for pid in std::mem::take(&mut self.execs) {
            if self.live.contains(&pid) || !runs_one_of(pid, self.exes) {
                continue;
            }
            if let Err(e) = probes.add_target(pid) {
                warn!(pid, "cannot follow a new process of a watched program: {e}");
                continue;
            }
            info!(pid, "a watched program started");
            self.live.push(pid);
            self.started.push((pid, EXEC_TLS_SWEEPS));
            let children = if self.follow_children { descendants(pid) } else { Vec::new() };
            for child in children {
                if !self.live.contains(&child) && probes.add_target(child).is_ok() {
                    self.live.push(child);
                }
            }
        }
    }

    fn follow_listeners(&mut self, probes: &mut Probes) {
        for Listener { pid, port, open } in self.listeners.drain(..) {
            if open {
                info!(pid, port, "following a new listener");
                if let Ok(mut queues) = self.listen.lock() {
                    queues.add_port(port);
                }
            } else {
                probes.listener_closed(port, &self.live);
            }
        }
    }

    /// Targets the kernel has that the daemon does not know of: a fork whose record was lost
    /// (ring full) left its child's bit set, or a thread's. A child process of a live target
    /// is followed (its inherited sockets learned); anything else is cleared, so a pid reused
    /// later by an unrelated process is not observed.
    fn adopt_strays(&mut self, probes: &mut Probes) {
        for pid in probes.targets() {
            if self.live.contains(&pid) {
                continue;
            }
            if tgid_of(pid) == Some(pid) && descends_from(pid, &self.live) {
                info!(pid, "following a child whose fork record was missed");
                probes.learn_sockets(pid);
                probes.follow_tls(pid);
                self.live.push(pid);
            } else {
                probes.forget_thread(pid);
            }
        }
    }
}

/// Sweeps (seconds) after an exec in which its OpenSSL is looked for again.
const EXEC_TLS_SWEEPS: u8 = 3;

/// Samples `pid`'s listeners: its network namespace, and the ports it listens on now.
fn follow_listen_queues(listen: &Mutex<ListenQueues>, pid: u32) {
    let Ok(mut queues) = listen.lock() else { return };
    queues.add_namespace_of(pid);
    for port in listening_ports(pid) {
        queues.add_port(port);
    }
}
