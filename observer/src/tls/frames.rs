//! A keyed HTTP/2 session (ALPN `h2`): the kernel copies its ciphertext whole (the frames are
//! inside, where only the decrypted stream shows them), and here the plaintext is walked as
//! the kernel walks a clear-text HTTP/2 connection's calls, into the same numbered frame
//! records.

use observer_common::Direction;

use crate::http2::frames::KernelModel;

/// Both directions' walks and record numbers: the kernel's numbers of the ciphertext records
/// expected next (a gap is a lost record, after which nothing decrypts), and the numbers
/// given to the frame records made here.
pub(super) struct FrameWalk {
    walks: [KernelModel; 2],
    cipher_seq: [u32; 2],
    frames_seq: [u32; 2],
}

impl FrameWalk {
    /// A server's session reads the client's frames (the preface first) and writes its own;
    /// a `client`'s the other way round.
    pub(super) fn new(client: bool) -> Self {
        let (clients, servers) = (KernelModel::client(), KernelModel::server());
        // By `side`: what the process reads, then what it writes.
        let walks = if client { [servers, clients] } else { [clients, servers] };
        FrameWalk { walks, cipher_seq: [0; 2], frames_seq: [0; 2] }
    }

    /// Whether ciphertext record `seq` of `direction` is the next one (and counts it).
    pub(super) fn next_cipher(&mut self, direction: Direction, seq: u32) -> bool {
        let side = side(direction);
        let expected = self.cipher_seq[side];
        self.cipher_seq[side] = seq.wrapping_add(1);
        seq == expected
    }

    /// The frame record of a call's whole plaintext: the bytes the kernel would have kept
    /// (frame headers, the payloads HPACK and stream state need), and its number.
    pub(super) fn record(&mut self, direction: Direction, plaintext: &[u8]) -> (Vec<u8>, u32) {
        let side = side(direction);
        let (kept, _) = self.walks[side].call(plaintext);
        let seq = self.frames_seq[side];
        self.frames_seq[side] = seq.wrapping_add(1);
        (kept, seq)
    }
}

fn side(direction: Direction) -> usize {
    usize::from(direction != Direction::In)
}
