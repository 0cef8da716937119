//! Where the socket hooks find what they read in the running kernel's structs: byte offsets
//! from its BTF, patched into the programs at load (aya does no CO-RE for Rust programs, and
//! offsets differ between kernel builds).

use btf_rs::{Backend, Btf, Type};

use super::ProbeError;

/// (global in the eBPF object, struct, path of members). Anonymous struct and union members
/// on the way are searched too (`skc_num` sits in an anonymous struct in a union).
const FIELDS: [(&str, &str, &[&str]); 20] = [
    ("SK_NUM", "sock", &["__sk_common", "skc_num"]),
    ("SK_FAMILY", "sock", &["__sk_common", "skc_family"]),
    ("SK_COOKIE", "sock", &["__sk_common", "skc_cookie"]),
    // A target's own connection: its peer, and why its connect failed.
    ("SK_DADDR", "sock", &["__sk_common", "skc_daddr"]),
    ("SK_DPORT", "sock", &["__sk_common", "skc_dport"]),
    ("SK_V6_DADDR", "sock", &["__sk_common", "skc_v6_daddr"]),
    ("SK_ERR", "sock", &["sk_err"]),
    ("SK_PROTOCOL", "sock", &["sk_protocol"]),
    ("SK_SOCKET", "sock", &["sk_socket"]),
    ("SOCKET_FILE", "socket", &["file"]),
    // What a connection whose open was not seen has moved so far, and when it was made.
    ("TCP_COPIED_SEQ", "tcp_sock", &["copied_seq"]),
    ("TCP_RCV_NXT", "tcp_sock", &["rcv_nxt"]),
    ("TCP_BYTES_RECEIVED", "tcp_sock", &["bytes_received"]),
    ("TCP_BYTES_SENT", "tcp_sock", &["bytes_sent"]),
    ("TCP_LSNDTIME", "tcp_sock", &["lsndtime"]),
    // TCP's own accounting, which splits a response's transfer (`transfer`).
    ("TCP_CHRONO_TYPE", "tcp_sock", &["chrono_type"]),
    ("TCP_CHRONO_START", "tcp_sock", &["chrono_start"]),
    ("TCP_CHRONO_STAT", "tcp_sock", &["chrono_stat"]),
    ("TCP_SRTT_US", "tcp_sock", &["srtt_us"]),
    ("TCP_TOTAL_RETRANS", "tcp_sock", &["total_retrans"]),
];

/// Byte offset of each of `FIELDS`, by global name. Parsing takes ~20 ms and ~3 MB (the BTF
/// file is mapped, not read whole).
pub fn socket_offsets() -> Result<Vec<(&'static str, u64)>, ProbeError> {
    let btf = Btf::from_file_with_backend("/sys/kernel/btf/vmlinux", Backend::Mmap)
        .map_err(|e| ProbeError::Layout(format!("reading /sys/kernel/btf/vmlinux: {e}")))?;
    FIELDS
        .iter()
        .map(|&(global, name, path)| {
            let offset = offset_of(&btf, name, path).ok_or_else(|| {
                ProbeError::Layout(format!("no struct {name} member {} in the kernel's BTF", path.join(".")))
            })?;
            Ok((global, offset))
        })
        .collect()
}

/// Nanoseconds in one kernel tick (jiffy): the resolution of `CLOCK_MONOTONIC_COARSE`, which
/// the kernel keeps in jiffies (4 ms at this machine kind's `CONFIG_HZ=250`).
pub fn tick_ns() -> Result<u64, ProbeError> {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres writes one timespec, which `res` is.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return Err(ProbeError::Layout(format!("clock_getres: {}", std::io::Error::last_os_error())));
    }
    let ns = res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64;
    if ns == 0 {
        return Err(ProbeError::Layout("CLOCK_MONOTONIC_COARSE reports no resolution".into()));
    }
    Ok(ns)
}

fn offset_of(btf: &Btf, name: &str, path: &[&str]) -> Option<u64> {
    let mut ty = btf.resolve_types_by_name(name).ok()?.into_iter().find(|t| matches!(t, Type::Struct(_)))?;
    let mut bits = 0;
    for member in path {
        let (Type::Struct(s) | Type::Union(s)) = &ty else { return None };
        let (offset, inner) = member_of(btf, s, member)?;
        bits += offset;
        ty = inner;
    }
    (bits % 8 == 0).then_some(u64::from(bits / 8))
}

/// Bit offset and type of member `name` of `s`, looking inside anonymous members.
fn member_of(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Option<(u32, Type)> {
    for member in &s.members {
        let ty = btf.resolve_chained_type(member).ok()?;
        let member_name = btf.resolve_name(member).unwrap_or_default();
        if member_name == name {
            return Some((member.bit_offset(), ty));
        }
        if member_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = &ty
            && let Some((offset, found)) = member_of(btf, inner, name)
        {
            return Some((member.bit_offset() + offset, found));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_is_this_kernels_jiffy() {
        assert_eq!(tick_ns().unwrap(), 4_000_000, "CONFIG_HZ=250 on this machine kind");
    }

    /// Checked against `bpftool btf dump file /sys/kernel/btf/vmlinux format c` on this
    /// machine kind (Linux 6.18, x86-64); the point is that nested anonymous members resolve.
    #[test]
    fn finds_the_socket_fields_in_this_kernel() {
        let offsets = socket_offsets().expect("this machine kind has kernel BTF");
        let get = |name| offsets.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(get("SK_NUM"), 14, "skc_num follows skc_dport in the port pair");
        assert_eq!(get("SK_FAMILY"), 16);
        assert_eq!((get("SK_DADDR"), get("SK_DPORT"), get("SK_V6_DADDR")), (0, 12, 56));
        assert_eq!(get("SK_ERR"), 284);
        assert!(get("SK_SOCKET") > get("SK_COOKIE"));
        assert_eq!(get("SOCKET_FILE"), 16);
        assert_eq!(get("TCP_COPIED_SEQ"), 1464, "inside struct tcp_sock, past struct sock");
        assert_eq!(get("TCP_BYTES_RECEIVED"), 1752);
        assert_eq!(
            [
                get("TCP_CHRONO_TYPE"),
                get("TCP_CHRONO_START"),
                get("TCP_CHRONO_STAT"),
                get("TCP_SRTT_US"),
                get("TCP_TOTAL_RETRANS")
            ],
            [1556, 1560, 1564, 1680, 2200],
            "the defaults in observer-ebpf's sock.rs"
        );
    }
}
