//! observer: Prometheus metrics for any HTTP/1.x server, from its socket syscalls, via eBPF.
//!
//! Data flow: probes (kernel programs) → events (decode) → conn (per-connection table)
//! → http (request/response framing) → route (endpoint label) → metrics → serve.

pub mod conn;
pub mod demo;
pub mod demo_server;
pub mod events;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod probes;
pub mod procfs;
pub mod route;
pub mod run;
pub mod serve;
pub mod top;
