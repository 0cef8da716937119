//! The floor for benchmarks: attached to the same tracepoints as the observer, it only
//! filters the tgid and counts, so `cargo xtask bench` can tell the cost of hooking at all
//! from the cost of what the observer does once hooked.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::{Array, PerCpuArray},
    programs::{
        BtfTracePointContext, ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext,
    },
};
use observer_common::{TARGET_WORDS, target_bit};

/// The observer's target bitmap, the same map and the same test (see main.rs).
#[map]
static TARGETS: Array<u64> = Array::with_max_entries(TARGET_WORDS, BPF_F_MMAPABLE);

#[map]
static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    count_target();
    0
}

/// The same for `--hooks raw`: one raw tracepoint at sys_exit.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_raw(_ctx: RawTracePointContext) -> i32 {
    count_target();
    0
}

/// The same for `--hooks sock`: the socket I/O tracepoints.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn floor_sock_recv(_ctx: BtfTracePointContext) -> i32 {
    count_target();
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn floor_sock_send(_ctx: BtfTracePointContext) -> i32 {
    count_target();
    0
}

/// The same for the OpenSSL uprobes (every entry point; the return program on all but
/// `SSL_free`): what the traps cost before the observer does anything.
#[uprobe]
pub fn floor_uprobe(_ctx: ProbeContext) -> u32 {
    count_target();
    0
}

#[uretprobe]
pub fn floor_uretprobe(_ctx: RetProbeContext) -> u32 {
    count_target();
    0
}

#[inline(always)]
fn count_target() {
    let (word, bit) = target_bit((bpf_get_current_pid_tgid() >> 32) as u32);
    // SAFETY: a u64 in a map slot.
    if TARGETS.get_ptr(word).is_some_and(|w| unsafe { core::ptr::read_volatile(w) } & bit != 0)
        && let Some(hits) = HITS.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot.
        unsafe { *hits += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
