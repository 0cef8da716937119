//! Following the targets' process trees: `sched:sched_process_fork` and
//! `sched:sched_process_exec` (scheduler tracepoints, not syscall ones: they do not put
//! anything on the syscall slow path).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use observer_common::Kind;

use crate::{
    emit::{Record, emit_process},
    maps::FORKED,
    target::{add_target, current, in_child_namespace, is_target},
};

/// Offset of `child_pid` in the `sched:sched_process_fork` record. Userspace sets it from the
/// tracepoint's format file before loading: it moved (44 → 20) when the comm fields became
/// `__data_loc` strings.
#[unsafe(no_mangle)]
static CHILD_PID_OFFSET: u32 = 20;

/// A record about a process, not a connection.
#[inline(always)]
fn process_record(id: u64, tgid: u32, child: u32, kind: Kind) -> Record {
    Record { child, ..Record::of(kind, 0, id, tgid) }
}

/// sched_process_fork, in the parent's context: a target's child becomes a target at once, so
/// not even its first call is missed. Threads show up here too; userspace tells them apart
/// (from /proc) and removes them again.
#[tracepoint]
pub fn fork(ctx: TracePointContext) -> u32 {
    let (id, tgid) = current();
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: a constant patched by the loader; volatile so the compiler keeps the load.
    let offset = unsafe { core::ptr::read_volatile(&CHILD_PID_OFFSET) } as usize;
    // SAFETY: a field of the tracepoint record, at the offset its format file gives.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(offset & 0xff) }) else {
        return 0;
    };
    if child <= 0 {
        return 0;
    }
    if in_child_namespace() {
        // `child` is the initial namespace's pid: adopted at its first call (FORKED);
        // userspace is told of a fork of `tgid` without the child's pid.
        let _ = FORKED.insert(&(child as u32), &0, 0);
        emit_process(&ctx, &process_record(id, tgid, 0, Kind::Fork));
        return 0;
    }
    if child as u32 == tgid {
        return 0;
    }
    add_target(child as u32);
    emit_process(&ctx, &process_record(id, tgid, child as u32, Kind::Fork));
    0
}

/// sched_process_exec, attached only for `--exe`: every program start on the machine is
/// reported (they are rare) and userspace decides whether it is one to observe.
#[tracepoint]
pub fn exec(ctx: TracePointContext) -> u32 {
    let (id, tgid) = current();
    if tgid == 0 {
        return 0; // outside the observer's PID namespace
    }
    emit_process(&ctx, &process_record(id, tgid, 0, Kind::Exec));
    0
}
