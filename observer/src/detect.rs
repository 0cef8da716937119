//! What a connection speaks, told once from its first bytes (as hyper-util's `auto.rs` sniffs
//! once), before any decoder sees them. HTTP/2 is only followed where the kernel walks its
//! frames (records flagged `frames`); what this finds is what the bytes alone say.

/// A connection's protocol, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    /// The client connection preface (RFC 9113 §3.4), or a server speaking first with a
    /// SETTINGS frame (nginx sends its own before it reads the client's preface).
    Http2,
    /// A TLS record: the plaintext is followed where the server's TLS library is hooked.
    Tls,
}

/// What the first bytes of a connection say, sent by the client (`from_client`) or the server.
pub fn detect(from_client: bool, data: &[u8]) -> Detected {
    let detected = if from_client { client_first(data) } else { server_first(data) };
    detected.unwrap_or(Detected::Http1)
}

fn client_first(data: &[u8]) -> Option<Detected> {
    match data {
        // Handshake (22), version 3.x: SSL 3.0 to TLS 1.3 all say 3.0 to 3.4.
        [0x16, 0x03, minor, ..] if *minor <= 0x04 => Some(Detected::Tls),
        _ if data.starts_with(b"PRI * HTTP/2.0") => Some(Detected::Http2),
        _ => None,
    }
}

/// A SETTINGS frame on stream 0 (RFC 9113 §6.5): a 24-bit length that is a multiple of 6,
/// type 4, flags 0, stream id 0. A response head starts with `HTTP/`, so the two never meet.
fn server_first(data: &[u8]) -> Option<Detected> {
    match data {
        [l0, l1, l2, 0x04, 0x00, 0, 0, 0, 0, ..]
            if u32::from_be_bytes([0, *l0, *l1, *l2]).is_multiple_of(6) =>
        {
            Some(Detected::Http2)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_protocol() {
        assert_eq!(detect(true, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), Detected::Tls);
        assert_eq!(detect(true, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04"), Detected::Http2);
        assert_eq!(detect(false, b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03"), Detected::Http2);
        assert_eq!(detect(true, b"GET / HTTP/1.1\r\n\r\n"), Detected::Http1);
        assert_eq!(detect(false, b"HTTP/1.1 200 OK\r\n"), Detected::Http1);
        // A settings ACK-shaped write, or a length not a multiple of 6: not a server preface.
        assert_eq!(detect(false, b"\x00\x00\x05\x04\x00\x00\x00\x00\x00"), Detected::Http1);
        assert_eq!(detect(false, b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"), Detected::Http1);
        // TLS from the server, or a TLS-like record of an unknown version: left to HTTP/1.
        assert_eq!(detect(true, b"\x16\x03\x09\x00"), Detected::Http1);
        assert_eq!(detect(true, b""), Detected::Http1);
    }
}
