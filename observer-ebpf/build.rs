use which::which;

/// Rebuild when bpf-linker changes (say, after `cargo xtask setup` rebuilt it for another LLVM):
/// cargo would not notice otherwise, and a stale object would link with the old one.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
