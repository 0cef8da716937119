#![no_std]
// The programs are the binaries (src/main.rs, src/floor.rs); this library target only lets
// `observer` name this crate as a build-dependency so cargo rebuilds it when they change.
