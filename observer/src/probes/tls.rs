//! Attaching the OpenSSL uprobes: to each libssl a target maps, and to a target's own
//! executable when it carries OpenSSL linked in (node), once per file.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{ProgramError, UProbe, uprobe::UProbeScope},
};
use tracing::{debug, info, warn};

use super::{ProbeError, permission};

/// Entry programs (observer-ebpf/src/probes/tls.rs) by the function they hook. Every one of
/// them but `SSL_free` also gets the shared return program.
const ENTRIES: [(&str, &str); 6] = [
    ("ssl_read", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
    ("ssl_write", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
    ("ssl_do_handshake", "SSL_do_handshake"),
    ("ssl_free", "SSL_free"),
];
const RETURN: &str = "ssl_return";

/// Which files got the uprobes, by (device, inode), so each is attached once however many
/// targets map it.
#[derive(Default)]
pub struct TlsAttach {
    loaded: bool,
    seen: HashSet<(u64, u64)>,
    /// Files with the uprobes attached.
    pub libraries: Vec<PathBuf>,
}

impl TlsAttach {
    /// Attaches the uprobes to the OpenSSL copies `tgid` maps that are not attached yet.
    /// A file without OpenSSL's symbols (an executable without it linked in) is skipped.
    pub fn follow(&mut self, ebpf: &mut Ebpf, tgid: u32) -> Result<(), ProbeError> {
        for path in candidates(tgid) {
            let Ok(meta) = fs::metadata(&path) else {
                continue; // the process exited, or the file is gone
            };
            if !self.seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            if !self.loaded {
                load(ebpf)?;
                self.loaded = true;
            }
            match attach(ebpf, &path) {
                Ok(()) => {
                    info!(pid = tgid, library = %path.display(), "hooked OpenSSL (uprobes)");
                    self.libraries.push(path);
                }
                Err(Attach::NoSymbols) => debug!(file = %path.display(), "no OpenSSL symbols"),
                Err(Attach::Failed(e)) => match permission(e) {
                    ProbeError::NotPermitted(_) => warn!(
                        pid = tgid,
                        library = %path.display(),
                        "HTTPS through this OpenSSL is not observed: uprobes need CAP_SYS_ADMIN (EACCES with CAP_PERFMON alone on Linux 6.18), and it is dropped once the first targets are attached"
                    ),
                    e => warn!(pid = tgid, library = %path.display(), "cannot hook OpenSSL: {e}"),
                },
            }
        }
        Ok(())
    }
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
        if Path::new(file).file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libssl.so")) {
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
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

fn load(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for program in ENTRIES.iter().map(|(p, _)| *p).chain([RETURN]) {
        let fail = |source| ProbeError::Program { program: "tls", tracepoint: "uprobe load", source };
        uprobe(ebpf, program).load().map_err(fail).map_err(permission)?;
    }
    Ok(())
}

enum Attach {
    NoSymbols,
    Failed(ProbeError),
}

/// Every entry program and the return program, on `path`. The first symbol decides whether
/// the file has OpenSSL at all; a later one missing (an old OpenSSL without `_ex`) is skipped.
fn attach(ebpf: &mut Ebpf, path: &Path) -> Result<(), Attach> {
    for (i, (program, symbol)) in ENTRIES.iter().enumerate() {
        match uprobe(ebpf, program).attach(*symbol, path, UProbeScope::AllProcesses) {
            Ok(_) => {}
            Err(ProgramError::UProbeError(aya::programs::uprobe::UProbeError::SymbolError { .. })) => {
                if i == 0 {
                    return Err(Attach::NoSymbols);
                }
                debug!(file = %path.display(), symbol, "symbol missing");
                continue;
            }
            Err(source) => {
                return Err(Attach::Failed(ProbeError::Program { program, tracepoint: symbol, source }));
            }
        }
        if *symbol == "SSL_free" {
            continue;
        }
        uprobe(ebpf, RETURN).attach(*symbol, path, UProbeScope::AllProcesses).map_err(|source| {
            Attach::Failed(ProbeError::Program { program: RETURN, tracepoint: symbol, source })
        })?;
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
    fn this_process_executable_is_a_candidate() {
        let files = candidates(std::process::id());
        assert!(
            files.iter().any(|f| f.starts_with(format!("/proc/{}/root", std::process::id()))),
            "{files:?}"
        );
    }
}
