//! Whose calls are followed: the target bitmap, PID namespaces, children forked in them.

use aya_ebpf::{
    bindings::bpf_pidns_info,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_ns_current_pid_tgid},
    maps::Array,
};
use observer_common::{port_bit, target_bit};

use crate::maps::{FORKED, PORTS, TARGETS};

/// The observer's PID namespace (device and inode of its nsfs file), set by userspace when it
/// runs in a child namespace (a container): then every pid and tgid here, in maps and in
/// records, is the one seen in that namespace, as `--pid` and /proc there give them.
/// Inode 0 means the initial namespace, where the plain helper is the cheaper answer.
#[unsafe(no_mangle)]
static PIDNS_DEV: u64 = 0;
#[unsafe(no_mangle)]
static PIDNS_INO: u64 = 0;

/// Reads a constant the loader patched; volatile so the compiler keeps the load.
#[inline(always)]
pub fn patched(value: &'static u64) -> u64 {
    // SAFETY: a plain load of a static.
    unsafe { core::ptr::read_volatile(value) }
}

/// (pid_tgid, tgid) of the current task, in the observer's PID namespace; tgid 0 for a task
/// outside it.
#[inline(always)]
pub fn current() -> (u64, u32) {
    let ino = patched(&PIDNS_INO);
    if ino == 0 {
        let id = bpf_get_current_pid_tgid();
        return (id, (id >> 32) as u32);
    }
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    let size = core::mem::size_of::<bpf_pidns_info>() as u32;
    // SAFETY: the helper writes `size` bytes into `info`.
    if unsafe { bpf_get_ns_current_pid_tgid(patched(&PIDNS_DEV), ino, &mut info, size) } != 0 {
        return (0, 0);
    }
    ((u64::from(info.tgid) << 32) | u64::from(info.pid), info.tgid)
}

/// Whether we run in a child PID namespace.
#[inline(always)]
pub fn in_child_namespace() -> bool {
    patched(&PIDNS_INO) != 0
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper takes no arguments and touches no memory.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn bit_set(map: &Array<u64>, (word, bit): (u32, u64)) -> bool {
    // SAFETY: a u64 in a map slot that others only change atomically.
    map.get_ptr(word).is_some_and(|w| unsafe { core::ptr::read_volatile(w) } & bit != 0)
}

#[inline(always)]
fn set_bit(map: &Array<u64>, (word, bit): (u32, u64)) {
    if let Some(w) = map.get_ptr_mut(word) {
        // SAFETY: a u64 in a map slot; an atomic OR, as userspace's updates are atomic too.
        // (The BPF target has no compare-and-swap, so core's atomics offer no fetch_or.)
        unsafe {
            core::intrinsics::atomic_or::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(w, bit)
        };
    }
}

#[inline(always)]
pub fn is_target(tgid: u32) -> bool {
    bit_set(&TARGETS, target_bit(tgid)) || adopt_forked(tgid)
}

/// Makes `tgid` a target.
#[inline(always)]
pub fn add_target(tgid: u32) {
    set_bit(&TARGETS, target_bit(tgid));
}

/// Whether a target listens on local port `port`.
#[inline(always)]
pub fn is_listened(port: u16) -> bool {
    bit_set(&PORTS, port_bit(port))
}

#[inline(always)]
pub fn add_listened(port: u16) {
    set_bit(&PORTS, port_bit(port));
}

/// In a child PID namespace: whether the current task is a target's new child (see FORKED),
/// which then becomes a target.
#[inline(always)]
fn adopt_forked(tgid: u32) -> bool {
    if tgid == 0 || !in_child_namespace() {
        return false;
    }
    let global = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    if unsafe { FORKED.get(&global) }.is_none() {
        return false;
    }
    let _ = FORKED.remove(&global);
    add_target(tgid);
    true
}
