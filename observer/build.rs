//! Builds the eBPF programs (observer-ebpf) for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where `probes.rs` embeds it.

fn main() -> anyhow::Result<()> {
    // Builds that never load programs (the fuzz targets) may skip the eBPF build: empty
    // objects are written instead, and loading them fails with a clear error.
    println!("cargo:rerun-if-env-changed=OBSERVER_STUB_EBPF");
    if std::env::var_os("OBSERVER_STUB_EBPF").is_some_and(|v| v == "1") {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
        for object in ["observer", "floor"] {
            std::fs::write(out.join(object), b"")?;
        }
        println!("cargo:warning=OBSERVER_STUB_EBPF=1: built without eBPF programs");
        return Ok(());
    }
    // The eBPF crate needs `-Z build-std=core`. We build it with the same pinned stable rustc
    // as everything else (see rust-toolchain.toml) and opt that one child build into unstable
    // flags, as the Linux kernel does for its Rust code; host crates stay on plain stable.
    // SAFETY: build scripts are single-threaded; the variable is read by aya-build and
    // inherited by the cargo it spawns.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let package = aya_build::Package {
        name: "observer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf"),
        ..Default::default()
    };
    // The toolchain rustup picked for this build (from rust-toolchain.toml), so the eBPF object
    // and bpf-linker share one LLVM.
    let pinned = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "1.95.0".to_owned());
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&pinned))
}
