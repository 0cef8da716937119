//! Record protection of a direction: TLS 1.3's from a traffic secret (RFC 8446 §5.2–5.3,
//! §7.2–7.3), TLS 1.2's from the master secret and the randoms (RFC 5246 §6.3, AES-GCM per
//! RFC 5288, ChaCha20-Poly1305 per RFC 7905); each record's nonce, a whole record opened
//! with its tag checked, and any part of a record decrypted alone (the suites are counter
//! mode, so bytes at a known offset decrypt without the rest; the tag then goes unchecked).

use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, aead::AeadInPlace};
use chacha20poly1305::ChaCha20Poly1305;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use hkdf::Hkdf;
use sha2::{Sha256, Sha384};
use zeroize::Zeroize;

/// Bytes of an AEAD tag, the same for the three suites.
pub const TAG_LEN: usize = 16;
/// A record header: content type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// The longest traffic secret (SHA-384).
pub const MAX_SECRET_LEN: usize = 48;

/// The TLS 1.3 cipher suites OpenSSL offers by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    pub const ALL: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305];

    /// The traffic secret's length: the suite's hash length.
    pub fn secret_len(self) -> usize {
        match self {
            Suite::Aes256Gcm => 48,
            Suite::Aes128Gcm | Suite::Chacha20Poly1305 => 32,
        }
    }

    /// TLS 1.2's implicit IV: the salt of GCM's nonce, or ChaCha20's whole nonce mask.
    fn tls12_iv_len(self) -> usize {
        match self {
            Suite::Chacha20Poly1305 => 12,
            Suite::Aes128Gcm | Suite::Aes256Gcm => 4,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm | Suite::Chacha20Poly1305 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "TLS_AES_128_GCM_SHA256",
            Suite::Aes256Gcm => "TLS_AES_256_GCM_SHA384",
            Suite::Chacha20Poly1305 => "TLS_CHACHA20_POLY1305_SHA256",
        }
    }
}

/// The protocol version a direction's keys are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

/// TLS 1.2 AES-GCM records start with the nonce's explicit part (RFC 5288 §3).
pub const EXPLICIT_NONCE_LEN: usize = 8;

/// One direction's protection: the secret it came from (for KeyUpdate), its key and IV.
/// Zeroed when dropped.
#[derive(Clone)]
pub struct TrafficKeys {
    version: Version,
    suite: Suite,
    secret: [u8; MAX_SECRET_LEN],
    key: [u8; 32],
    iv: [u8; 12],
    /// The AES key schedule, made once: decrypting a record's copied parts runs it a block
    /// at a time (made per call, it was ~5 % of the daemon's time under wrk).
    block: Option<Block>,
}

/// An expanded AES key (zeroed on drop: the `aes` crate's `zeroize` feature). Two per
/// connection: inline, not boxed.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Block {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

impl Block {
    fn of(suite: Suite, key: &[u8; 32]) -> Option<Block> {
        use aes::cipher::KeyInit as _;
        match suite {
            Suite::Aes128Gcm => aes::Aes128::new_from_slice(&key[..16]).ok().map(Block::Aes128),
            Suite::Aes256Gcm => aes::Aes256::new_from_slice(key).ok().map(Block::Aes256),
            Suite::Chacha20Poly1305 => None,
        }
    }

    fn encrypt_all(&self, blocks: &mut [aes::Block]) {
        use aes::cipher::BlockEncrypt as _;
        match self {
            Block::Aes128(cipher) => cipher.encrypt_blocks(blocks),
            Block::Aes256(cipher) => cipher.encrypt_blocks(blocks),
        }
    }
}

impl Drop for TrafficKeys {
    fn drop(&mut self) {
        self.secret.zeroize();
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl std::fmt::Debug for TrafficKeys {
    // Never the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficKeys")
            .field("version", &self.version)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl TrafficKeys {
    /// The keys of `secret` (its first `suite.secret_len()` bytes are used).
    pub fn new(suite: Suite, secret: &[u8]) -> Option<TrafficKeys> {
        let n = suite.secret_len();
        let secret = secret.get(..n)?;
        let mut keys = TrafficKeys {
            version: Version::Tls13,
            suite,
            secret: [0; MAX_SECRET_LEN],
            key: [0; 32],
            iv: [0; 12],
            block: None,
        };
        keys.secret[..n].copy_from_slice(secret);
        expand_labels(suite, secret, [(b"key", &mut keys.key[..suite.key_len()]), (b"iv", &mut keys.iv)])?;
        keys.block = Block::of(suite, &keys.key);
        Some(keys)
    }

    /// TLS 1.2: the client's and the server's keys from the session's master secret and
    /// the handshake's randoms (the key block, RFC 5246 §6.3).
    pub fn tls12(
        suite: Suite,
        master: &[u8],
        client_random: &[u8],
        server_random: &[u8],
    ) -> Option<(TrafficKeys, TrafficKeys)> {
        let master = master.get(..48)?;
        let (key_len, iv_len) = (suite.key_len(), suite.tls12_iv_len());
        let mut seed = Vec::with_capacity(64);
        seed.extend_from_slice(server_random.get(..32)?);
        seed.extend_from_slice(client_random.get(..32)?);
        let mut block = [0u8; 2 * 32 + 2 * 12];
        let block = &mut block[..2 * (key_len + iv_len)];
        prf(suite, master, b"key expansion", &seed, block);
        let keys = |key: &[u8], iv: &[u8]| {
            let mut keys = TrafficKeys {
                version: Version::Tls12,
                suite,
                secret: [0; MAX_SECRET_LEN],
                key: [0; 32],
                iv: [0; 12],
                block: None,
            };
            keys.key[..key_len].copy_from_slice(key);
            keys.iv[..iv_len].copy_from_slice(iv);
            keys.block = Block::of(suite, &keys.key);
            keys
        };
        let (client_key, rest) = block.split_at(key_len);
        let (server_key, rest) = rest.split_at(key_len);
        let (client_iv, server_iv) = rest.split_at(iv_len);
        let pair = (keys(client_key, client_iv), keys(server_key, server_iv));
        block.zeroize();
        Some(pair)
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Where a record's plaintext lies in its body of `len` bytes: after TLS 1.2 GCM's
    /// explicit nonce, before the tag and (TLS 1.3) the inner content type.
    pub fn plaintext_span(&self, len: usize) -> (usize, usize) {
        match (self.version, self.suite) {
            (Version::Tls13, _) => (0, len.saturating_sub(TAG_LEN + 1)),
            (Version::Tls12, Suite::Chacha20Poly1305) => (0, len.saturating_sub(TAG_LEN)),
            (Version::Tls12, _) => (EXPLICIT_NONCE_LEN, len.saturating_sub(TAG_LEN)),
        }
    }

    /// The keys after a KeyUpdate (§7.2): the next secret is the current one expanded.
    pub fn next(&self) -> Option<TrafficKeys> {
        if self.version == Version::Tls12 {
            return None;
        }
        let n = self.suite.secret_len();
        let mut next = [0u8; MAX_SECRET_LEN];
        expand_labels(self.suite, &self.secret[..n], [(b"traffic upd", &mut next[..n])])?;
        let keys = TrafficKeys::new(self.suite, &next[..n]);
        next.zeroize();
        keys
    }

    /// Record `seq`'s nonce: the IV with the record number XORed into its last 8 bytes, or
    /// (TLS 1.2 GCM) the IV's 4 bytes and the record's explicit part.
    fn nonce_of(&self, seq: u64, explicit: &[u8; EXPLICIT_NONCE_LEN]) -> [u8; 12] {
        if self.version == Version::Tls12 && self.suite != Suite::Chacha20Poly1305 {
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&self.iv[..4]);
            nonce[4..].copy_from_slice(explicit);
            return nonce;
        }
        self.nonce(seq)
    }

    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// Opens whole record `seq` (header and body as on the wire): its inner plaintext (TLS
    /// 1.3: data, content type, padding; TLS 1.2: data, then the header's content type), or
    /// `None` if the tag does not match.
    pub fn open(&self, seq: u64, header: &[u8; HEADER_LEN], body: &[u8]) -> Option<Vec<u8>> {
        let (start, end) = self.plaintext_span(body.len());
        if body.len() < start + TAG_LEN {
            return None;
        }
        let explicit: [u8; EXPLICIT_NONCE_LEN] = match start {
            0 => [0; EXPLICIT_NONCE_LEN],
            _ => body[..EXPLICIT_NONCE_LEN].try_into().ok()?,
        };
        let sealed_end = body.len() - TAG_LEN;
        let mut plain = body[start..sealed_end].to_vec();
        let tag = aes_gcm::Tag::from_slice(&body[sealed_end..]);
        let nonce = self.nonce_of(seq, &explicit);
        // TLS 1.3 authenticates the header; TLS 1.2 the number, type, version and the
        // plaintext's length.
        let mut aad12 = [0u8; 13];
        let aad: &[u8] = match self.version {
            Version::Tls13 => header,
            Version::Tls12 => {
                aad12[..8].copy_from_slice(&seq.to_be_bytes());
                aad12[8..11].copy_from_slice(&header[..3]);
                aad12[11..].copy_from_slice(&(plain.len() as u16).to_be_bytes());
                &aad12
            }
        };
        let opened =
            match self.suite {
                Suite::Aes128Gcm => Aes128Gcm::new_from_slice(&self.key[..16])
                    .ok()?
                    .decrypt_in_place_detached((&nonce).into(), aad, &mut plain, tag),
                Suite::Aes256Gcm => Aes256Gcm::new_from_slice(&self.key).ok()?.decrypt_in_place_detached(
                    (&nonce).into(),
                    aad,
                    &mut plain,
                    tag,
                ),
                Suite::Chacha20Poly1305 => ChaCha20Poly1305::new_from_slice(&self.key)
                    .ok()?
                    .decrypt_in_place_detached((&nonce).into(), aad, &mut plain, tag),
            };
        if opened.is_err() {
            plain.zeroize();
            return None;
        }
        debug_assert!(end == start + plain.len() || self.version == Version::Tls13);
        if self.version == Version::Tls12 {
            plain.push(header[0]);
        }
        Some(plain)
    }

    /// Record `seq` sealed from `inner` (data, content type): header and body. For tests and
    /// fuzzing: the observer itself never encrypts.
    pub fn seal(&self, seq: u64, inner: &[u8]) -> Vec<u8> {
        debug_assert_eq!(self.version, Version::Tls13, "TLS 1.3 records only");
        let len = (inner.len() + TAG_LEN) as u16;
        let mut record = vec![23, 3, 3];
        record.extend_from_slice(&len.to_be_bytes());
        let header: [u8; HEADER_LEN] = record[..HEADER_LEN].try_into().expect("5 bytes");
        let mut body = inner.to_vec();
        let nonce = self.nonce(seq);
        let tag =
            match self.suite {
                Suite::Aes128Gcm => Aes128Gcm::new_from_slice(&self.key[..16])
                    .expect("key")
                    .encrypt_in_place_detached((&nonce).into(), &header, &mut body),
                Suite::Aes256Gcm => Aes256Gcm::new_from_slice(&self.key)
                    .expect("key")
                    .encrypt_in_place_detached((&nonce).into(), &header, &mut body),
                Suite::Chacha20Poly1305 => ChaCha20Poly1305::new_from_slice(&self.key)
                    .expect("key")
                    .encrypt_in_place_detached((&nonce).into(), &header, &mut body),
            }
            .expect("sealed");
        record.extend_from_slice(&body);
        record.extend_from_slice(&tag);
        record
    }

    /// Decrypts in place `bytes` that lie at `offset` in record `seq`'s body (no tag check),
    /// at or after its plaintext's start; `explicit`: TLS 1.2 GCM's nonce part of that record.
    pub fn decrypt_at(&self, seq: u64, explicit: &[u8; EXPLICIT_NONCE_LEN], offset: usize, bytes: &mut [u8]) {
        let nonce = self.nonce_of(seq, explicit);
        let offset = offset - self.plaintext_span(usize::MAX).0;
        match self.suite {
            // GCM: counter mode with a 32-bit block counter; the payload starts at block 2.
            Suite::Aes128Gcm | Suite::Aes256Gcm => {
                if let Some(block) = &self.block {
                    gcm_stream(block, &nonce, offset, bytes);
                }
            }
            // RFC 8439 §2.8: block 0 makes the Poly1305 key; the payload starts at block 1.
            Suite::Chacha20Poly1305 => {
                let mut cipher = chacha20::ChaCha20::new((&self.key).into(), (&nonce).into());
                cipher.seek(64 + offset as u64);
                cipher.apply_keystream(bytes);
            }
        }
    }
}

/// GCM's counter mode from `offset` of a record's payload: block `i` of the payload is the
/// encryption of the nonce and the 32-bit counter `2 + i`. The blocks of up to 256 bytes are
/// encrypted together (AES-NI pipelines them: one at a time was 12 % of the daemon's time).
fn gcm_stream(block: &Block, nonce: &[u8; 12], offset: usize, bytes: &mut [u8]) {
    const BATCH: usize = 16;
    let mut index = offset / 16;
    let mut skip = offset % 16;
    let mut done = 0;
    let mut stream = [aes::Block::default(); BATCH];
    while done < bytes.len() {
        let blocks = (skip + bytes.len() - done).div_ceil(16).min(BATCH);
        for (i, counter) in stream[..blocks].iter_mut().enumerate() {
            counter[..12].copy_from_slice(nonce);
            counter[12..].copy_from_slice(&((index + i) as u32).wrapping_add(2).to_be_bytes());
        }
        block.encrypt_all(&mut stream[..blocks]);
        for keystream in &stream[..blocks] {
            let n = (16 - skip).min(bytes.len() - done);
            for (b, k) in bytes[done..done + n].iter_mut().zip(&keystream[skip..skip + n]) {
                *b ^= k;
            }
            done += n;
            skip = 0;
        }
        index += blocks;
    }
    stream.iter_mut().for_each(|b| b.zeroize());
}

/// TLS 1.2's PRF (RFC 5246 §5): P_hash(secret, label + seed) with the suite's hash.
fn prf(suite: Suite, secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    match suite {
        Suite::Aes256Gcm => p_hash::<hmac::Hmac<Sha384>>(secret, label, seed, out),
        Suite::Aes128Gcm | Suite::Chacha20Poly1305 => p_hash::<hmac::Hmac<Sha256>>(secret, label, seed, out),
    }
}

fn p_hash<M: hmac::Mac + hmac::digest::KeyInit>(secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let mac = |parts: &[&[u8]]| {
        let mut mac =
            <M as hmac::digest::KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes()
    };
    let mut a = mac(&[label, seed]); // A(1)
    let mut filled = 0;
    while filled < out.len() {
        let block = mac(&[&a, label, seed]);
        let n = block.len().min(out.len() - filled);
        out[filled..filled + n].copy_from_slice(&block[..n]);
        filled += n;
        a = mac(&[&a]);
    }
}

/// HKDF-Expand-Label (§7.1) with an empty context.
fn expand_labels<const N: usize>(suite: Suite, secret: &[u8], outs: [(&[u8], &mut [u8]); N]) -> Option<()> {
    // One HMAC key schedule for every label (a key and its IV): a quarter of the SHA work of
    // a TLS 1.3 session's keys.
    match suite {
        Suite::Aes256Gcm => {
            let hkdf = Hkdf::<Sha384>::from_prk(secret).ok()?;
            outs.into_iter().try_for_each(|(label, out)| hkdf.expand(&hkdf_label(label, out.len()), out).ok())
        }
        Suite::Aes128Gcm | Suite::Chacha20Poly1305 => {
            let hkdf = Hkdf::<Sha256>::from_prk(secret).ok()?;
            outs.into_iter().try_for_each(|(label, out)| hkdf.expand(&hkdf_label(label, out.len()), out).ok())
        }
    }
}

/// HkdfLabel (RFC 8446 §7.1) with an empty context.
fn hkdf_label(label: &[u8], len: usize) -> Vec<u8> {
    let mut info = Vec::with_capacity(4 + 6 + label.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(0);
    info
}
