//! Attaching the OpenSSL uprobes: to each libssl a target maps, and to a target's own
//! executable when it carries OpenSSL linked in (node), for that process only.
//!
//! Per process, not per file: a uprobe attached for every process traps in every process
//! that maps the library, target or not. Measured (nginx https `return 200`, wrk -c32 on
//! the same 2-core VM, wrk on libssl too): an unobserved nginx fell from 90k to 29k req/s
//! while the observer watched another process mapping the same libssl. With a per-process
//! uprobe the kernel puts the breakpoints only in the target's memory.

use std::{
    collections::{HashMap, HashSet},
    fs,
    num::NonZeroU32,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeLinkId, uprobe::UProbeScope},
};
use object::{Object, ObjectSection, ObjectSymbol};
use tracing::{debug, info, warn};

use super::{ProbeError, permission};
use crate::tls::learn::Offsets;
use observer_common::{SECRETS_AT_LEN, TLS_CALLS_ONLY};

/// Entry programs (observer-ebpf/src/probes/tls.rs) by the function they hook.
const ENTRIES: [(&str, &str); 6] = [
    ("ssl_read", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
    ("ssl_write", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
    ("ssl_do_handshake", "SSL_do_handshake"),
    ("ssl_free", "SSL_free"),
];
/// The shared return program, on every entry point but `SSL_free`.
const RETURN: &str = "ssl_return";
/// The floor's programs: one for every entry point, one for every return.
const FLOOR_ENTRY: &str = "floor_uprobe";
const FLOOR_RETURN: &str = "floor_uretprobe";

/// A file's identity: (device, inode).
type FileId = (u64, u64);

/// One uprobe placement: the entry program, what it hooks (for errors and logs), the file
/// offset, and whether the return program goes there too.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hook {
    program: &'static str,
    hooks: &'static str,
    offset: u64,
    returns: bool,
}

impl Hook {
    /// A hook of the write pair (directly, or at their internal function).
    fn writes(&self) -> bool {
        matches!(self.hooks, "SSL_write" | "SSL_write_ex")
    }
}

/// Where OpenSSL's functions are hooked in one file.
type EntryPoints = Vec<Hook>;

pub struct TlsAttach {
    /// The benchmark floor's do-nothing programs instead of the observer's.
    floor: bool,
    /// Whether the write calls get the return program: only for the syscall hooks. With the
    /// socket hooks a write's plaintext is reported at its first socket write (the kernel's
    /// `tls_write_inside`), which saves a trap per call: measured in docs/benchmarks.md.
    write_returns: bool,
    /// `--tls keys`: only the handshake (and `SSL_free`) is hooked.
    keys: bool,
    /// `--tls keys`: where each libssl keeps its secrets, learned once per file.
    offsets: HashMap<FileId, Calibration>,
    /// Processes put on per-call uprobes from the start since the last asked (their libssl's
    /// calibration failed).
    calibration_fall_backs: u64,
    /// Entry points per file, resolved once; `None` for a file without OpenSSL.
    files: HashMap<FileId, Option<EntryPoints>>,
    /// Per target process: the files hooked for it, and its uprobe links.
    processes: HashMap<u32, Hooked>,
    /// Files hooked at least once.
    pub libraries: Vec<PathBuf>,
}

#[derive(Default)]
struct Hooked {
    files: HashSet<FileId>,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// `--tls keys`: the call hooks of its libssl, not attached unless it falls back.
    deferred: Vec<(PathBuf, EntryPoints)>,
    /// Its sessions are followed by per-call uprobes (`--tls keys` fell back).
    calls_only: bool,
}

impl TlsAttach {
    /// Loads the programs now, while the capabilities to load them are held (targets that
    /// appear later are hooked after the daemon dropped them).
    pub fn load(ebpf: &mut Ebpf, write_returns: bool, keys: bool) -> Result<Self, ProbeError> {
        Ok(TlsAttach { keys, ..Self::load_programs(ebpf, false, write_returns)? })
    }

    /// The benchmark floor's uprobes (observer-ebpf/src/floor.rs), on the same entry points.
    pub fn load_floor(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Self::load_programs(ebpf, true, false)
    }

    fn load_programs(ebpf: &mut Ebpf, floor: bool, write_returns: bool) -> Result<Self, ProbeError> {
        let programs: Vec<&'static str> = match floor {
            true => vec![FLOOR_ENTRY, FLOOR_RETURN],
            false => ENTRIES.iter().map(|(p, _)| *p).chain([RETURN]).collect(),
        };
        for program in programs {
            let fail = |source| ProbeError::Program { program, tracepoint: "uprobe load", source };
            uprobe(ebpf, program).load().map_err(fail).map_err(permission)?;
        }
        Ok(TlsAttach {
            floor,
            write_returns,
            keys: false,
            files: HashMap::new(),
            offsets: HashMap::new(),
            calibration_fall_backs: 0,
            processes: HashMap::new(),
            libraries: Vec::new(),
        })
    }

    /// Hooks the OpenSSL copies `tgid` maps that are not hooked for it yet. Failures are
    /// logged, not returned: a process whose OpenSSL cannot be hooked is still followed.
    /// With `--tls keys`: where the process's libssl keeps its secrets, if learned.
    /// Returns where the process's sessions keep their secrets (`TLS_SECRETS_AT`), if known.
    pub fn follow(&mut self, ebpf: &mut Ebpf, tgid: u32) -> Option<[u32; SECRETS_AT_LEN]> {
        let pid = NonZeroU32::new(tgid)?;
        let mut found = None;
        for path in candidates(tgid) {
            let Ok(meta) = fs::metadata(&path) else {
                continue; // the process exited, or the file is gone
            };
            let id = (meta.dev(), meta.ino());
            if self.processes.get(&tgid).is_some_and(|p| p.files.contains(&id)) {
                continue;
            }
            let Some(entries) = self.files.entry(id).or_insert_with(|| entry_points(&path)).clone() else {
                continue;
            };
            let hooked = self.processes.entry(tgid).or_default();
            hooked.files.insert(id);
            // Keys are learned from a shared libssl's sessions on sockets; OpenSSL linked into
            // an executable (node: memory BIOs, no socket inside the calls) keeps its calls.
            let mut keys = self.keys && is_libssl(&path) && !hooked.calls_only;
            if keys {
                match *self.offsets.entry(id).or_insert_with(|| calibrate(&path)) {
                    Calibration::Learned(offsets) => found = Some(offsets.to_kernel()),
                    Calibration::Search => {}
                    // Exact from the start: every call hooked, no handshake hands keys over.
                    Calibration::Failed => {
                        (keys, hooked.calls_only, found) = (false, true, Some(TLS_CALLS_ONLY));
                        self.calibration_fall_backs += 1;
                        warn!(pid = tgid, library = %path.display(), "TLS sessions are followed by per-call uprobes: this libssl's calibration failed");
                        // Another libssl of the process, calibrated before, waits for its
                        // call hooks: its sessions are no longer keyed either.
                        attach_deferred(ebpf, pid, hooked, self.floor, "another libssl's calibration failed");
                    }
                }
            }
            let (entries, deferred): (EntryPoints, EntryPoints) = entries
                .into_iter()
                .map(|hook| Hook { returns: hook.returns && (self.write_returns || !hook.writes()), ..hook })
                .partition(|hook| !keys || matches!(hook.program, "ssl_do_handshake" | "ssl_free"));
            if !deferred.is_empty() {
                hooked.deferred.push((path.clone(), deferred));
            }
            match attach(ebpf, &path, &entries, pid, self.floor, &mut hooked.links) {
                Ok(()) => {
                    let calls = if keys { "handshake only (--tls keys)" } else { "every call" };
                    info!(pid = tgid, library = %path.display(), calls, "hooked OpenSSL (uprobes)");
                    let shown = path.strip_prefix(format!("/proc/{tgid}/root")).unwrap_or(&path);
                    let shown = Path::new("/").join(shown);
                    if !self.libraries.contains(&shown) {
                        self.libraries.push(shown);
                    }
                }
                Err(e) => match permission(e) {
                    ProbeError::NotPermitted(_) => warn!(
                        pid = tgid,
                        library = %path.display(),
                        "HTTPS through this OpenSSL is not observed: uprobes need CAP_SYS_ADMIN (EACCES with CAP_PERFMON alone on Linux 6.18)"
                    ),
                    e => warn!(pid = tgid, library = %path.display(), "cannot hook OpenSSL: {e}"),
                },
            }
        }
        found
    }

    /// `--tls keys` fell back for `tgid` (`why`): its libssl's call hooks are attached now,
    /// its sessions from now on followed call by call. False if it already had.
    pub fn fall_back(&mut self, ebpf: &mut Ebpf, tgid: u32, why: &str) -> bool {
        let (Some(pid), Some(hooked)) = (NonZeroU32::new(tgid), self.processes.get_mut(&tgid)) else {
            return false;
        };
        if std::mem::replace(&mut hooked.calls_only, true) {
            return false;
        }
        attach_deferred(ebpf, pid, hooked, self.floor, why);
        true
    }

    /// Processes put on per-call uprobes by a failed calibration since the last call.
    pub fn take_calibration_fall_backs(&mut self) -> u64 {
        std::mem::take(&mut self.calibration_fall_backs)
    }

    /// Detaches the uprobes of `tgid` (it exited).
    pub fn forget(&mut self, ebpf: &mut Ebpf, tgid: u32) {
        let Some(hooked) = self.processes.remove(&tgid) else {
            return;
        };
        for (program, link) in hooked.links {
            let _ = uprobe(ebpf, program).detach(link);
        }
    }
}

/// Attaches the call hooks `hooked` deferred (`--tls keys` falling back for `why`).
fn attach_deferred(ebpf: &mut Ebpf, pid: NonZeroU32, hooked: &mut Hooked, floor: bool, why: &str) {
    for (path, entries) in std::mem::take(&mut hooked.deferred) {
        match attach(ebpf, &path, &entries, pid, floor, &mut hooked.links) {
            Ok(()) => {
                warn!(pid = pid.get(), library = %path.display(), "TLS sessions fall back to per-call uprobes: {why}")
            }
            Err(e) => {
                warn!(pid = pid.get(), library = %path.display(), "cannot fall back to per-call uprobes ({why}): {e}")
            }
        }
    }
}

/// What the helper found of a libssl file.
#[derive(Clone, Copy, Debug)]
enum Calibration {
    /// Where its sessions keep their secrets.
    Learned(Offsets),
    /// Not asked (`OBSERVER_TLS_HELPER=off`): each process's first TLS 1.3 sessions are
    /// searched instead.
    Search,
    /// The helper failed: the library is not what it expects, and its processes are
    /// followed by per-call uprobes. `OBSERVER_TLS_HELPER=fail` makes it so (the tests'
    /// way to a calibration that fails).
    Failed,
}

/// Where `library` keeps its sessions' secrets (`tls::learn`'s helper); logged either way.
fn calibrate(library: &Path) -> Calibration {
    match std::env::var("OBSERVER_TLS_HELPER").as_deref() {
        Ok("off") => {
            warn!(library = %library.display(), "cannot learn where this libssl keeps TLS secrets (OBSERVER_TLS_HELPER=off): TLS 1.3 secrets will be searched for in each process's first sessions, TLS 1.2 is not seen");
            return Calibration::Search;
        }
        Ok("fail") => return Calibration::Failed,
        _ => {}
    }
    match crate::tls::learn::learn(library) {
        Ok(offsets) => {
            info!(library = %library.display(), ?offsets, "learned where this libssl keeps TLS secrets");
            Calibration::Learned(offsets)
        }
        Err(e) => {
            warn!(library = %library.display(), "cannot learn where this libssl keeps TLS secrets: {e}");
            Calibration::Failed
        }
    }
}

/// A shared libssl (the process maps it), not OpenSSL linked into an executable.
fn is_libssl(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libssl.so"))
}

/// Files of `tgid` that may hold OpenSSL: every mapped `libssl.so*`, and its executable.
/// Paths go through /proc/PID/root, so a target in another mount namespace (a container)
/// has its own files hooked.
fn candidates(tgid: u32) -> Vec<PathBuf> {
    let root = PathBuf::from(format!("/proc/{tgid}/root"));
    let maps = fs::read_to_string(format!("/proc/{tgid}/maps")).unwrap_or_default();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut add = |file: &str| {
        let inside = root.join(file.trim_start_matches('/'));
        if !files.contains(&inside) {
            files.push(inside);
        }
    };
    for file in maps.lines().filter_map(mapped_file) {
        if is_libssl(Path::new(file)) {
            add(file);
        }
    }
    if let Ok(exe) = fs::read_link(format!("/proc/{tgid}/exe"))
        && let Some(exe) = exe.to_str()
    {
        add(exe);
    }
    files
}

/// The file a /proc/PID/maps line maps, if any (not `[heap]`, not anonymous, not deleted).
fn mapped_file(line: &str) -> Option<&str> {
    let path = line.splitn(6, ' ').nth(5)?.trim_start();
    if path.ends_with(" (deleted)") && path.contains("libssl.so") {
        // After an upgrade of libssl, until the server restarts.
        warn!(
            library = path,
            "a target maps a libssl that was deleted (upgraded?): not hooked until it restarts"
        );
        return None;
    }
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// OpenSSL's entry points in the ELF file at `path`, as file offsets (what a uprobe takes);
/// `None` unless it defines `SSL_read` (a missing later one, such as `_ex` in OpenSSL 1.0,
/// is skipped).
fn entry_points(path: &Path) -> Option<EntryPoints> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) => {
            warn!(file = %path.display(), "cannot read a possible OpenSSL: {e}");
            return None;
        }
    };
    let file = object::File::parse(&*data).ok()?;
    // (index in `ENTRIES`, virtual address)
    let mut found: Vec<(usize, u64)> = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() {
            continue;
        }
        let Some(i) = symbol.name().ok().and_then(|name| ENTRIES.iter().position(|(_, s)| *s == name)) else {
            continue;
        };
        if !found.iter().any(|(j, _)| *j == i) {
            found.push((i, symbol.address()));
        }
    }
    debug!(file = %path.display(), entry_points = found.len(), "looked for OpenSSL");
    if !found.iter().any(|(i, _)| *i == 0) {
        return None;
    }
    let code = Code { file: &file, data: &data };
    let mut hooks = Vec::new();
    for (pair, ex) in
        [(["SSL_read", "SSL_read_ex"], "ssl_read_ex"), (["SSL_write", "SSL_write_ex"], "ssl_write_ex")]
    {
        // Symbols whose first instruction is emulated already (node's OpenSSL: `push %rbp`)
        // are hooked where they are.
        let direct: Option<Vec<u64>> =
            pair.iter().map(|s| address_of(&found, s).and_then(|a| code.emulated_entry(a))).collect();
        if let Some(offsets) = direct {
            for (symbol, offset) in pair.into_iter().zip(offsets) {
                hooks.push(Hook { program: program_of(symbol), hooks: symbol, offset, returns: true });
            }
            continue;
        }
        let addresses: Vec<u64> = pair.iter().filter_map(|s| address_of(&found, s)).collect();
        match code.shared_callee(&addresses) {
            Some(offset) => {
                debug!(file = %path.display(), function = pair[0], offset, "hooked at its internal function's emulated first instruction");
                hooks.push(Hook { program: ex, hooks: pair[0], offset, returns: true });
            }
            None => {
                info!(file = %path.display(), function = pair[0], "OpenSSL hooked at its symbols (their internal function was not found): every call single-steps");
                for symbol in pair {
                    if let Some(offset) = address_of(&found, symbol).and_then(|a| code.offset(a)) {
                        hooks.push(Hook {
                            program: program_of(symbol),
                            hooks: symbol,
                            offset,
                            returns: true,
                        });
                    }
                }
            }
        }
    }
    for symbol in ["SSL_do_handshake", "SSL_free"] {
        if let Some(offset) = address_of(&found, symbol).and_then(|a| code.offset(a)) {
            hooks.push(Hook {
                program: program_of(symbol),
                hooks: symbol,
                offset,
                returns: symbol != "SSL_free",
            });
        }
    }
    Some(hooks)
}

fn address_of(found: &[(usize, u64)], symbol: &str) -> Option<u64> {
    found.iter().find(|(i, _)| ENTRIES[*i].1 == symbol).map(|(_, address)| *address)
}

fn program_of(symbol: &str) -> &'static str {
    ENTRIES.iter().find(|(_, s)| *s == symbol).map(|(p, _)| *p).expect("a symbol of ENTRIES")
}

/// An ELF file's code, by virtual address.
struct Code<'a> {
    file: &'a object::File<'a>,
    data: &'a [u8],
}

/// Instructions decoded from a function's start before giving up on finding its call.
const MAX_PROLOGUE: usize = 24;

impl Code<'_> {
    /// The file offset of virtual address `address` (what a uprobe takes).
    fn offset(&self, address: u64) -> Option<u64> {
        if !matches!(self.file.kind(), object::ObjectKind::Dynamic | object::ObjectKind::Executable) {
            return Some(address);
        }
        let section =
            self.file.sections().find(|s| (s.address()..s.address() + s.size()).contains(&address))?;
        let (start, _) = section.file_range()?;
        Some(address - section.address() + start)
    }

    /// Up to 64 bytes of code from `address`.
    fn bytes(&self, address: u64) -> Option<&[u8]> {
        let offset = usize::try_from(self.offset(address)?).ok()?;
        self.data.get(offset..(offset + 64).min(self.data.len()))
    }

    /// Where to hook the internal function every one of `callers` (SSL_read and SSL_read_ex,
    /// or the write pair) calls first with its own arguments, if they all call the same one
    /// and its first instruction is one the kernel emulates (a `push`, after an `endbr64`):
    /// one trap per call instead of a single-stepped `sub $imm,%rsp` at the symbols (Debian
    /// 12's libssl 3.0: do-nothing probes there kept 0.45 of nginx's https throughput, at the
    /// symbols 0.19). `None` when unsure: the caller hooks the symbols.
    fn shared_callee(&self, callers: &[u64]) -> Option<u64> {
        let mut callees = callers.iter().map(|&caller| self.first_call(caller));
        let first = callees.next()??;
        if callees.any(|callee| callee != Some(first)) {
            return None;
        }
        self.emulated_entry(first)
    }

    /// The target of the first direct `call` on the straight path from `address`.
    fn first_call(&self, address: u64) -> Option<u64> {
        use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind};
        let mut decoder = Decoder::with_ip(64, self.bytes(address)?, address, DecoderOptions::NONE);
        for instruction in decoder.iter().take(MAX_PROLOGUE) {
            if instruction.is_invalid() {
                return None;
            }
            match instruction.flow_control() {
                FlowControl::Call if instruction.op0_kind() == OpKind::NearBranch64 => {
                    return Some(instruction.near_branch_target());
                }
                FlowControl::Next | FlowControl::ConditionalBranch => {}
                _ => return None, // a return, a jump, an indirect call: not the shape we know
            }
        }
        None
    }

    /// Where a uprobe at function `address` is emulated: its first instruction if a `push`
    /// of a register, or the one after an `endbr64` (a landing pad every call passes through).
    fn emulated_entry(&self, address: u64) -> Option<u64> {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};
        let mut decoder = Decoder::with_ip(64, self.bytes(address)?, address, DecoderOptions::NONE);
        let mut instruction = decoder.decode();
        if instruction.mnemonic() == Mnemonic::Endbr64 {
            instruction = decoder.decode();
        }
        (instruction.mnemonic() == Mnemonic::Push && instruction.op0_kind() == OpKind::Register)
            .then(|| self.offset(instruction.ip()))?
    }
}

/// Every entry program at its entry point in `path`, and the return program on each but
/// `SSL_free`, for process `pid` only. Links made before a failure stay in `links` (and are
/// detached with the process).
fn attach(
    ebpf: &mut Ebpf,
    path: &Path,
    entries: &EntryPoints,
    pid: NonZeroU32,
    floor: bool,
    links: &mut Vec<(&'static str, UProbeLinkId)>,
) -> Result<(), ProbeError> {
    // Returns first: an entry seen without its return would leave its thread's call pending,
    // and that thread's next plaintext socket I/O would be taken for the call's ciphertext.
    for returns in [true, false] {
        for hook in entries {
            let program = match (returns, floor) {
                (true, _) if !hook.returns => continue,
                (true, false) => RETURN,
                (true, true) => FLOOR_RETURN,
                (false, false) => hook.program,
                (false, true) => FLOOR_ENTRY,
            };
            let (offset, symbol) = (hook.offset, hook.hooks);
            let fail = |source| ProbeError::Program { program, tracepoint: symbol, source };
            let link =
                uprobe(ebpf, program).attach(offset, path, UProbeScope::OneProcess(pid)).map_err(fail)?;
            links.push((program, link));
        }
    }
    Ok(())
}

fn uprobe<'e>(ebpf: &'e mut Ebpf, program: &str) -> &'e mut UProbe {
    ebpf.program_mut(program)
        .expect("every TLS program is in the object")
        .try_into()
        .expect("every TLS program is a uprobe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mapped_files_from_proc_maps_lines() {
        let lib = "7f2c1a200000-7f2c1a25e000 r--p 00000000 08:01 1311  /usr/lib/x86_64-linux-gnu/libssl.so.3";
        assert_eq!(mapped_file(lib), Some("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        let heap = "55d0c8a2e000-55d0c8a4f000 rw-p 00000000 00:00 0          [heap]";
        assert_eq!(mapped_file(heap), None);
        let anon = "7f2c1a000000-7f2c1a021000 rw-p 00000000 00:00 0 ";
        assert_eq!(mapped_file(anon), None);
        let gone = "7f2c1a200000-7f2c1a25e000 r-xp 00000000 08:01 1311  /tmp/libssl.so.3 (deleted)";
        assert_eq!(mapped_file(gone), None);
    }

    #[test]
    fn this_process_executable_is_a_candidate_without_openssl() {
        let me = std::process::id();
        let files = candidates(me);
        let exe = files.iter().find(|f| f.starts_with(format!("/proc/{me}/root"))).expect("the executable");
        assert_eq!(entry_points(exe), None, "the test binary has no OpenSSL");
    }

    /// node 20 links OpenSSL in with `ssl_read_internal` inlined: its `SSL_read` starts with
    /// `push %rbp`, emulated already, and is hooked where it is (its first call is some
    /// helper, which must not be taken for the internal function).
    #[test]
    fn node_s_openssl_is_hooked_at_its_symbols() {
        let node = fs::canonicalize("/usr/bin/node").expect("node (Debian's nodejs)");
        let hooks = entry_points(&node).expect("node carries OpenSSL");
        let names: Vec<(&str, &str)> = hooks.iter().map(|h| (h.hooks, h.program)).collect();
        assert_eq!(
            names[..4],
            [
                ("SSL_read", "ssl_read"),
                ("SSL_read_ex", "ssl_read_ex"),
                ("SSL_write", "ssl_write"),
                ("SSL_write_ex", "ssl_write_ex")
            ]
        );
    }

    #[test]
    fn finds_openssl_in_the_system_libssl() {
        let lib = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/lib/x86_64-linux-gnu/libssl.so.3"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("libssl.so.3 (Debian's libssl3, which curl and nginx use)");
        let hooks = entry_points(lib).expect("OpenSSL's symbols");
        assert!(hooks.iter().all(|h| h.offset > 0));
        // Debian 12's libssl 3.0: SSL_read and SSL_read_ex both call ssl_read_internal first,
        // which starts with `push %r13` (41 55); the write pair, ssl_write_internal (`push
        // %r14`, 41 56). One hook each, on the push, with the `_ex` program (same arguments).
        let data = fs::read(lib).unwrap();
        let at = |h: &Hook| &data[h.offset as usize..h.offset as usize + 2];
        let read = hooks.iter().find(|h| h.hooks == "SSL_read").expect("a read hook");
        assert_eq!(
            (read.program, read.returns, at(read)),
            ("ssl_read_ex", true, &[0x41, 0x55][..]),
            "{hooks:?}"
        );
        let write = hooks.iter().find(|h| h.hooks == "SSL_write").expect("a write hook");
        assert_eq!((write.program, write.returns, at(write)), ("ssl_write_ex", true, &[0x41, 0x56][..]));
        assert!(!hooks.iter().any(|h| h.hooks == "SSL_read_ex" || h.hooks == "SSL_write_ex"), "{hooks:?}");
        let names: Vec<&str> = hooks.iter().map(|h| h.hooks).collect();
        assert_eq!(names, ["SSL_read", "SSL_write", "SSL_do_handshake", "SSL_free"]);
    }
}
