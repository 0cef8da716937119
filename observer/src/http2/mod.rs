//! HTTP/2, server side: the kernel's frame records in, exchanges out. `frames` reads one
//! direction's records into frames, `hpack` decodes header blocks, `conn` follows a
//! connection's streams.

pub mod conn;
#[cfg(test)]
mod conn_tests;
pub mod frames;
pub mod hpack;
