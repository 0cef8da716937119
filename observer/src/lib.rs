//! observer: Prometheus metrics for any HTTP/1.x or HTTP/2 server, from its socket I/O, via eBPF.
//!
//! Data flow: probes (kernel programs) → events (decode) → conn (per-connection table)
//! → {http1 (HTTP/1.x framing), http2 (frames, HPACK, streams)} → exchange (protocol-neutral)
//! → label (exchanges to labels and metric updates; route: endpoints, grpc: methods, peer:
//! a client connection's upstream) → metrics
//! → serve.

// `unsafe` only where the kernel's interfaces need it, each module named here: `probes`
// (mmapped bitmaps, fds registered with tokio, mount(2) for tracefs), `listen` (setns(2) into a
// target's network namespace), `run` (malloc_trim(3) after loading), `tls::learn` (its helper
// loads a libssl and calls it).
#![deny(unsafe_code)]

pub mod conn;
pub mod demo;
pub mod demo_server;
pub mod detect;
pub mod events;
pub mod exchange;
pub mod grpc;
pub mod http1;
pub mod http2;
pub mod label;
#[allow(unsafe_code)]
pub mod listen;
pub mod metrics;
pub mod peer;
#[allow(unsafe_code)]
pub mod probes;
pub mod procfs;
pub mod route;
#[allow(unsafe_code)]
pub mod run;
pub mod serve;
pub mod targets;
pub mod tls;
pub mod top;
pub mod transfer;
