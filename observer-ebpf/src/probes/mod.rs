//! The programs, one file per hook family.

pub mod process;
pub mod sock;
pub mod sys_exit;
pub mod tls;
pub mod tracepoints;

use observer_common::socket_key;

use crate::maps::SOCKETS;

/// Syscall hooks: the state word of `fd` of `tgid` if it is a socket we follow.
#[inline(always)]
fn followed_socket(tgid: u32, fd: i32) -> Option<*mut u32> {
    SOCKETS.get_ptr_mut(&socket_key(tgid, fd))
}
