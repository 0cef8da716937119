//! HTTP/2: what the daemon needs to follow a connection's streams from its frames. So far the
//! header decoder (`hpack`) and a frame reader over one direction's bytes (`frames`, also the
//! model for the kernel's frame-following capture); streams come with that capture.

pub mod frames;
pub mod hpack;
