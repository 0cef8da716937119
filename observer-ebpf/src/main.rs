//! The kernel programs: hooks on the targets' socket I/O, filtered by tgid first, that copy
//! the first and last bytes each call moved into ring-buffer records.
//!
//! `probes::sock` (the default) hooks socket I/O itself; `probes::sys_exit` and
//! `probes::tracepoints` hook syscalls, for kernels without the socket tracepoints;
//! `probes::process` follows the targets' process trees; `probes::tls` reads plaintext at
//! OpenSSL's calls (uprobes).
#![no_std]
#![no_main]
// `atomic_or`: the target has no compare-and-swap, so core's atomics offer no fetch_or; the
// BPF instruction set has an atomic OR all the same.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod capture;
mod emit;
mod frames;
mod maps;
mod probes;
mod scratch;
mod sk;
mod target;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_task_pt_regs` is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
