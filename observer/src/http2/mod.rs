//! HTTP/2: what the daemon needs to follow a connection's streams from its frames. So far the
//! header decoder (`hpack`); frames and streams come with the capture that feeds them.

pub mod hpack;
