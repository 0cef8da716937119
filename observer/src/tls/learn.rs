//! Where a libssl keeps a session's secrets, learned from that very file rather than from a
//! table per version (offsets move between releases and builds): a helper process (this
//! binary, `observer tls-offsets FILE`) loads the library, makes two handshakes with itself
//! over memory BIOs (TLS 1.3 with ALPN `h2`, then TLS 1.2 with `http/1.1`) with OpenSSL's
//! keylog callback on, and finds what the library reported in the server's `SSL` object and
//! its session. Loading a
//! library runs its code: in a helper, a crash or a hang is not the daemon's.
//!
//! The certificate is a throwaway made for this (P-256, self-signed): nothing but the two
//! ends of the helper's own handshakes ever sees it.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_long, c_uint, c_void},
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Where the secrets lie, in bytes from a server's `SSL *` (or from its session's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// TLS 1.3 application traffic secrets.
    pub client13: u32,
    pub server13: u32,
    /// TLS 1.2: the `SSL_SESSION *` in the `SSL`, the master key in the session, the
    /// randoms in the `SSL`.
    pub session: u32,
    pub master: u32,
    pub client_random: u32,
    pub server_random: u32,
    /// The selected ALPN protocol: a pointer, its length after it (`u32::MAX`: not found,
    /// and HTTP/2 sessions are then found by their first bytes, and fall back).
    pub alpn: u32,
}

impl Offsets {
    pub fn to_kernel(self) -> [u32; observer_common::SECRETS_AT_LEN] {
        [
            self.client13,
            self.server13,
            self.session,
            self.master,
            self.client_random,
            self.server_random,
            self.alpn,
        ]
    }

    fn render(self) -> String {
        self.to_kernel().map(|o| o.to_string()).join(" ")
    }

    fn parse(line: &str) -> Option<Offsets> {
        let v: Vec<u32> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
        let [client13, server13, session, master, client_random, server_random, alpn] = v[..] else {
            return None;
        };
        Some(Offsets { client13, server13, session, master, client_random, server_random, alpn })
    }
}

/// How long the helper may take (two in-memory handshakes take milliseconds).
const HELPER_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the helper on `library` (a path this process can open, e.g. /proc/PID/root/...).
/// `OBSERVER_TLS_HELPER=off` in the environment: no helper, no library loaded (each process's
/// first TLS 1.3 sessions are searched instead).
pub fn learn(library: &Path) -> Result<Offsets, String> {
    if std::env::var("OBSERVER_TLS_HELPER").is_ok_and(|v| v == "off") {
        return Err("OBSERVER_TLS_HELPER=off".into());
    }
    let mut child = Command::new("/proc/self/exe")
        .arg("tls-offsets")
        .arg(library)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the helper: {e}"))?;
    let deadline = Instant::now() + HELPER_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the helper did not finish".into());
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Offsets::parse(&stdout).ok_or_else(|| format!("the helper said {stdout:?}"))
}

/// In the helper: finds the offsets and prints them (one line), or fails with why. The
/// library (a target's file, maybe from its container) is opened first, then loaded only once
/// this process can do nothing the daemon could: its constructors and functions run as
/// `nobody`.
pub fn helper_main(library: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let copy = copied(library).map_err(|e| format!("cannot read {}: {e}", library.display()))?;
    drop_privileges()?;
    let opened = format!("/proc/self/fd/{}", copy.as_raw_fd());
    let offsets = find(Path::new(&opened)).map_err(|e| format!("{}: {e}", library.display()))?;
    println!("{}", offsets.render());
    Ok(())
}

/// `library` copied into an anonymous memory file, read while this process may still read it
/// (a target's file may be readable by root only, or reachable only through /proc/PID/root):
/// reopening the file itself through /proc/self/fd checks its permissions again.
fn copied(library: &Path) -> std::io::Result<std::fs::File> {
    use std::{io::Read as _, os::fd::FromRawFd as _};
    // SAFETY: memfd_create takes a NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"observer-libssl".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just made and is owned by nothing else.
    let mut copy = unsafe { std::fs::File::from_raw_fd(fd) };
    let file = std::fs::File::open(library)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_LIBRARY_BYTES {
        return Err(std::io::Error::other("not a regular file of a library's size"));
    }
    std::io::copy(&mut file.take(MAX_LIBRARY_BYTES), &mut copy)?;
    Ok(copy)
}

/// Larger is no libssl (Debian's is 0.7 MB; node's binary, with OpenSSL inside, 100 MB).
const MAX_LIBRARY_BYTES: u64 = 512 << 20;

/// uid and gid of `nobody`.
const NOBODY: libc::uid_t = 65534;

/// Becomes `nobody`: no supplementary groups, uid and gid 65534, no capabilities in any set,
/// and no way back (`no_new_privs`: no setuid file regains them).
fn drop_privileges() -> Result<(), String> {
    let failed = |what: &str| format!("cannot drop privileges ({what}): {}", std::io::Error::last_os_error());
    let held = |cap| caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false);
    let can_switch = held(caps::Capability::CAP_SETUID) && held(caps::Capability::CAP_SETGID);
    // SAFETY: syscalls on this process's own credentials (glibc applies them to every thread).
    unsafe {
        // Root's uid owns root's files even without capabilities: no load as root. A daemon
        // that is not root lends the library only its own uid, without capabilities.
        if !can_switch && (libc::geteuid() == 0 || libc::getuid() == 0) {
            return Err("cannot drop privileges: root without CAP_SETUID and CAP_SETGID".into());
        }
        if can_switch {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(failed("setgroups"));
            }
            if libc::setresgid(NOBODY, NOBODY, NOBODY) != 0 {
                return Err(failed("setresgid"));
            }
            if libc::setresuid(NOBODY, NOBODY, NOBODY) != 0 {
                return Err(failed("setresuid"));
            }
        }
    }
    for set in
        [caps::CapSet::Ambient, caps::CapSet::Inheritable, caps::CapSet::Effective, caps::CapSet::Permitted]
    {
        caps::clear(None, set).map_err(|e| format!("cannot drop privileges (capabilities): {e}"))?;
    }
    // SAFETY: a prctl that only restricts this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(failed("no_new_privs"));
    }
    Ok(())
}

/// What the keylog callback was told: (label, secret).
static LOGGED: Mutex<Vec<(String, Vec<u8>)>> = Mutex::new(Vec::new());

extern "C" fn keylog(_ssl: *const c_void, line: *const c_char) {
    // SAFETY: OpenSSL passes a NUL-terminated line.
    let line = unsafe { CStr::from_ptr(line) }.to_string_lossy();
    let mut words = line.split_whitespace();
    let (Some(label), Some(_), Some(secret)) = (words.next(), words.next(), words.next()) else {
        return;
    };
    let secret = (0..secret.len() / 2)
        .filter_map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).ok())
        .collect();
    if let Ok(mut logged) = LOGGED.lock() {
        logged.push((label.to_owned(), secret));
    }
}

const RTLD_NOW: c_int = 2;
const EVP_PKEY_EC: c_int = 408;
const SSL_CTRL_SET_MIN_PROTO_VERSION: c_int = 123;
const SSL_CTRL_SET_MAX_PROTO_VERSION: c_int = 124;
const TLS1_2_VERSION: c_long = 0x0303;
const TLS1_3_VERSION: c_long = 0x0304;
/// Bytes of the `SSL` object searched (OpenSSL 3.0's is about 6 KiB) and of its session.
const SSL_SPAN: usize = 8192;
const SESSION_SPAN: usize = 2048;

type Ptr = *mut c_void;

/// The library's functions this needs.
struct Ssl {
    server_method: unsafe extern "C" fn() -> Ptr,
    client_method: unsafe extern "C" fn() -> Ptr,
    ctx_new: unsafe extern "C" fn(Ptr) -> Ptr,
    use_certificate: unsafe extern "C" fn(Ptr, c_int, *const u8) -> c_int,
    use_private_key: unsafe extern "C" fn(c_int, Ptr, *const u8, c_long) -> c_int,
    set_keylog: unsafe extern "C" fn(Ptr, extern "C" fn(*const c_void, *const c_char)),
    ctx_ctrl: unsafe extern "C" fn(Ptr, c_int, c_long, Ptr) -> c_long,
    new: unsafe extern "C" fn(Ptr) -> Ptr,
    bio_pair: unsafe extern "C" fn(*mut Ptr, usize, *mut Ptr, usize) -> c_int,
    set_bio: unsafe extern "C" fn(Ptr, Ptr, Ptr),
    accept_state: unsafe extern "C" fn(Ptr),
    connect_state: unsafe extern "C" fn(Ptr),
    handshake: unsafe extern "C" fn(Ptr) -> c_int,
    session: unsafe extern "C" fn(Ptr) -> Ptr,
    client_random: unsafe extern "C" fn(Ptr, *mut u8, usize) -> usize,
    server_random: unsafe extern "C" fn(Ptr, *mut u8, usize) -> usize,
    master_key: unsafe extern "C" fn(Ptr, *mut u8, usize) -> usize,
    set_alpn_protos: unsafe extern "C" fn(Ptr, *const u8, c_uint) -> c_int,
    set_alpn_select: unsafe extern "C" fn(Ptr, AlpnSelect, Ptr),
    alpn_selected: unsafe extern "C" fn(Ptr, *mut *const u8, *mut c_uint),
}

/// OpenSSL's ALPN selection callback: (ssl, out, outlen, in, inlen, arg).
type AlpnSelect = extern "C" fn(Ptr, *mut *const u8, *mut u8, *const u8, c_uint, Ptr) -> c_int;

/// The server's choice: the client's first protocol (the helper's client offers one).
extern "C" fn select_first(
    _ssl: Ptr,
    out: *mut *const u8,
    out_len: *mut u8,
    offered: *const u8,
    offered_len: c_uint,
    _arg: Ptr,
) -> c_int {
    const SSL_TLSEXT_ERR_OK: c_int = 0;
    const SSL_TLSEXT_ERR_NOACK: c_int = 3;
    if offered_len < 2 {
        return SSL_TLSEXT_ERR_NOACK;
    }
    // SAFETY: OpenSSL passes the client's list (length-prefixed names), `offered_len` bytes.
    unsafe {
        *out = offered.add(1);
        *out_len = *offered;
    }
    SSL_TLSEXT_ERR_OK
}

/// Loads `library` and looks its functions up (libcrypto's come with it).
fn load(library: &Path) -> Result<Ssl, String> {
    let path = CString::new(library.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: loading a shared library; its constructors run in this helper process only.
    let handle = unsafe { libc::dlopen(path.as_ptr(), RTLD_NOW) };
    if handle.is_null() {
        return Err(format!("cannot load {}", library.display()));
    }
    /// The function `name`, as the pointer type `F` the caller declares it with.
    fn function<F: Copy>(handle: *mut c_void, name: &str) -> Result<F, String> {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>(), "a function pointer");
        let c = CString::new(name).expect("no NUL");
        // SAFETY: a symbol lookup in a loaded library.
        let f = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if f.is_null() {
            return Err(format!("{name} not found"));
        }
        // SAFETY: `F` is a function pointer type (same size, asserted), the symbol's.
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&f) })
    }
    // Each symbol is OpenSSL's function of that name, with the signature declared in `Ssl`
    // (OpenSSL 1.1 and 3.x).
    {
        Ok(Ssl {
            server_method: function(handle, "TLS_server_method")?,
            client_method: function(handle, "TLS_client_method")?,
            ctx_new: function(handle, "SSL_CTX_new")?,
            use_certificate: function(handle, "SSL_CTX_use_certificate_ASN1")?,
            use_private_key: function(handle, "SSL_CTX_use_PrivateKey_ASN1")?,
            set_keylog: function(handle, "SSL_CTX_set_keylog_callback")?,
            ctx_ctrl: function(handle, "SSL_CTX_ctrl")?,
            new: function(handle, "SSL_new")?,
            bio_pair: function(handle, "BIO_new_bio_pair")?,
            set_bio: function(handle, "SSL_set_bio")?,
            accept_state: function(handle, "SSL_set_accept_state")?,
            connect_state: function(handle, "SSL_set_connect_state")?,
            handshake: function(handle, "SSL_do_handshake")?,
            session: function(handle, "SSL_get_session")?,
            client_random: function(handle, "SSL_get_client_random")?,
            server_random: function(handle, "SSL_get_server_random")?,
            master_key: function(handle, "SSL_SESSION_get_master_key")?,
            set_alpn_protos: function(handle, "SSL_CTX_set_alpn_protos")?,
            set_alpn_select: function(handle, "SSL_CTX_set_alpn_select_cb")?,
            alpn_selected: function(handle, "SSL_get0_alpn_selected")?,
        })
    }
}

/// A server `SSL *` after a completed handshake with a client of `version` that offered
/// `alpn` (one protocol, length-prefixed).
fn handshake(ssl: &Ssl, version: c_long, alpn: &[u8]) -> Result<Ptr, String> {
    const CERT: &[u8] = include_bytes!("calibration/cert.der");
    const KEY: &[u8] = include_bytes!("calibration/key.der");
    // SAFETY: OpenSSL's API used as documented; the objects live until the helper exits.
    unsafe {
        let server_ctx = (ssl.ctx_new)((ssl.server_method)());
        let client_ctx = (ssl.ctx_new)((ssl.client_method)());
        if server_ctx.is_null() || client_ctx.is_null() {
            return Err("SSL_CTX_new failed".into());
        }
        if (ssl.use_certificate)(server_ctx, CERT.len() as c_int, CERT.as_ptr()) != 1
            || (ssl.use_private_key)(EVP_PKEY_EC, server_ctx, KEY.as_ptr(), KEY.len() as c_long) != 1
        {
            return Err("the calibration certificate was refused".into());
        }
        (ssl.set_keylog)(server_ctx, keylog);
        (ssl.set_alpn_select)(server_ctx, select_first, std::ptr::null_mut());
        // 0 is success here.
        if (ssl.set_alpn_protos)(client_ctx, alpn.as_ptr(), alpn.len() as c_uint) != 0 {
            return Err("SSL_CTX_set_alpn_protos failed".into());
        }
        for ctx in [server_ctx, client_ctx] {
            (ssl.ctx_ctrl)(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, version, std::ptr::null_mut());
            (ssl.ctx_ctrl)(ctx, SSL_CTRL_SET_MAX_PROTO_VERSION, version, std::ptr::null_mut());
        }
        let (server, client) = ((ssl.new)(server_ctx), (ssl.new)(client_ctx));
        let (mut a, mut b) = (std::ptr::null_mut(), std::ptr::null_mut());
        if server.is_null() || client.is_null() || (ssl.bio_pair)(&mut a, 0, &mut b, 0) != 1 {
            return Err("SSL_new or BIO_new_bio_pair failed".into());
        }
        (ssl.set_bio)(server, a, a);
        (ssl.set_bio)(client, b, b);
        (ssl.accept_state)(server);
        (ssl.connect_state)(client);
        for _ in 0..20 {
            let done = [(ssl.handshake)(client), (ssl.handshake)(server)];
            if done == [1, 1] {
                return Ok(server);
            }
        }
        Err(format!("the handshake (version {version:#x}) did not complete"))
    }
}

/// `len` bytes of this process's memory at `at`, as far as they are mapped.
fn memory(at: Ptr, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let local = libc::iovec { iov_base: out.as_mut_ptr() as *mut c_void, iov_len: len };
    let remote = libc::iovec { iov_base: at, iov_len: len };
    // SAFETY: reads our own memory through the kernel, which stops at an unmapped page
    // instead of faulting.
    let read = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    out.truncate(read.max(0) as usize);
    out
}

/// Where `needle` first lies in `hay`, at an offset that is a multiple of `align`.
fn offset_of(hay: &[u8], needle: &[u8], align: usize) -> Option<u32> {
    if needle.is_empty() || needle.iter().all(|&b| b == 0) {
        return None;
    }
    (0..hay.len().saturating_sub(needle.len()) + 1)
        .step_by(align)
        .find(|&at| hay[at..at + needle.len()] == *needle)
        .map(|at| at as u32)
}

fn logged(label: &str) -> Result<Vec<u8>, String> {
    let logged = LOGGED.lock().map_err(|e| e.to_string())?;
    let found = logged.iter().rev().find(|(l, _)| l == label).map(|(_, s)| s.clone());
    found.ok_or_else(|| format!("the library logged no {label}"))
}

fn find(library: &Path) -> Result<Offsets, String> {
    let ssl = load(library)?;
    let server = handshake(&ssl, TLS1_3_VERSION, b"\x02h2")?;
    let object = memory(server, SSL_SPAN);
    let alpn_h2 = alpn_at(&ssl, server, &object, b"h2");
    let missing = |what: &str| format!("{what} not found in the SSL object");
    let client13 =
        offset_of(&object, &logged("CLIENT_TRAFFIC_SECRET_0")?, 4).ok_or_else(|| missing("client secret"))?;
    let server13 =
        offset_of(&object, &logged("SERVER_TRAFFIC_SECRET_0")?, 4).ok_or_else(|| missing("server secret"))?;

    let server = handshake(&ssl, TLS1_2_VERSION, b"\x08http/1.1")?;
    let object = memory(server, SSL_SPAN);
    // The same place in both sessions, or not known.
    let alpn = match (alpn_h2, alpn_at(&ssl, server, &object, b"http/1.1")) {
        (Some(a), Some(b)) if a == b => a,
        _ => u32::MAX,
    };
    let mut random = [0u8; 32];
    // SAFETY: the functions copy at most 32 bytes into `random`.
    unsafe { (ssl.client_random)(server, random.as_mut_ptr(), random.len()) };
    let client_random = offset_of(&object, &random, 4).ok_or_else(|| missing("client random"))?;
    // SAFETY: as above.
    unsafe { (ssl.server_random)(server, random.as_mut_ptr(), random.len()) };
    let server_random = offset_of(&object, &random, 4).ok_or_else(|| missing("server random"))?;
    // SAFETY: a getter of the SSL's session.
    let session_ptr = unsafe { (ssl.session)(server) };
    let session =
        offset_of(&object, &(session_ptr as u64).to_ne_bytes(), 8).ok_or_else(|| missing("session"))?;
    let mut master = [0u8; 48];
    // SAFETY: copies at most 48 bytes into `master`.
    let len = unsafe { (ssl.master_key)(session_ptr, master.as_mut_ptr(), master.len()) };
    let master = offset_of(&memory(session_ptr, SESSION_SPAN), &master[..len.min(48)], 4)
        .ok_or_else(|| "the master key not found in the session".to_owned())?;
    Ok(Offsets { client13, server13, session, master, client_random, server_random, alpn })
}

/// Where server `server` (its memory `object`) keeps the ALPN protocol it selected, `name`:
/// the pointer OpenSSL reports, followed by the length.
fn alpn_at(ssl: &Ssl, server: Ptr, object: &[u8], name: &[u8]) -> Option<u32> {
    let (mut selected, mut len) = (std::ptr::null(), 0);
    // SAFETY: a getter that writes the two out-parameters.
    unsafe { (ssl.alpn_selected)(server, &mut selected, &mut len) };
    // SAFETY: OpenSSL's selected protocol, `len` bytes.
    if selected.is_null() || unsafe { std::slice::from_raw_parts(selected, len as usize) } != name {
        return None;
    }
    let mut pair = (selected as u64).to_ne_bytes().to_vec();
    pair.extend_from_slice(&(len as u64).to_ne_bytes());
    offset_of(object, &pair, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_libssl_keeps_its_secrets_where_the_helper_finds_them() {
        let library = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert!(library.exists(), "libssl3 is installed by cargo xtask setup");
        let offsets = find(library).expect("offsets");
        // Debian 12's 3.0.19: what the keys mode relies on, found independently (see
        // docs/benchmarks.md and README's HTTPS section).
        assert_eq!((offsets.client13, offsets.server13), (1860, 1924), "{offsets:?}");
        assert_eq!(offsets.server13 - offsets.client13, 64, "EVP_MAX_MD_SIZE apart");
        assert!(offsets.session > 0 && offsets.master > 0, "{offsets:?}");
        assert_ne!(offsets.alpn, u32::MAX, "the ALPN found in both sessions: {offsets:?}");
        assert_eq!(Offsets::parse(&offsets.render()), Some(offsets));
    }
}
