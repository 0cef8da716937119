#![no_std]
// The programs are the binary (src/main.rs); this library target only lets
// `observer` name this crate as a build-dependency so cargo rebuilds it when they change.
