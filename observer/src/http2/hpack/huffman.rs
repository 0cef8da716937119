//! The Huffman code of RFC 7541 Appendix B, decoded from its code lengths: the code is
//! canonical (codes of one length are consecutive, in symbol order, and each length starts
//! where the shorter ones left off, shifted), so the lengths alone define it.

use super::Error;

/// Bits in the code of each symbol 0..=255 and EOS (256), RFC 7541 Appendix B.
#[rustfmt::skip]
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0-15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16-31
     6, 10, 10, 12, 13,  6,  8, 11, 10, 10,  8, 11,  8,  6,  6,  6, // ' ' .. '/'
     5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8, 15,  6, 12, 10, // '0' .. '?'
    13,  6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, // '@' .. 'O'
     7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8, 13, 19, 13, 14,  6, // 'P' .. '_'
    15,  5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5, // '`' .. 'o'
     6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7, 15, 11, 14, 13, 28, // 'p' .. 127
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128-143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144-159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160-175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176-191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192-207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208-223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224-239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240-255
    30,                                                             // EOS
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// The canonical code's decoding tables: per length, its first code and where its symbols
/// start in `symbols` (sorted by length, then symbol).
struct Code {
    first: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    start: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
}

const fn build() -> Code {
    let mut code =
        Code { first: [0; MAX_LEN + 1], count: [0; MAX_LEN + 1], start: [0; MAX_LEN + 1], symbols: [0; 257] };
    let mut sym = 0;
    while sym < 257 {
        code.count[LENGTHS[sym] as usize] += 1;
        sym += 1;
    }
    let (mut next, mut placed, mut len) = (0u32, 0u16, 1);
    while len <= MAX_LEN {
        code.first[len] = next;
        code.start[len] = placed;
        let mut sym = 0;
        while sym < 257 {
            if LENGTHS[sym] as usize == len {
                code.symbols[placed as usize] = sym as u16;
                placed += 1;
            }
            sym += 1;
        }
        next = (next + code.count[len] as u32) << 1;
        len += 1;
    }
    code
}

static CODE: Code = build();

/// Bits looked up at once: every code of up to this many bits (the common characters: 5 to
/// 8 bits) is decoded by one lookup; longer ones walk the lengths from here.
const SHORT_BITS: usize = 8;

/// For each `SHORT_BITS`-bit prefix, the symbol whose code of at most `SHORT_BITS` bits it
/// starts with, and that code's length (0: the code is longer).
static SHORT: [(u8, u8); 1 << SHORT_BITS] = build_short();

const fn build_short() -> [(u8, u8); 1 << SHORT_BITS] {
    let code = build();
    let mut table = [(0u8, 0u8); 1 << SHORT_BITS];
    let mut len = 1;
    while len <= SHORT_BITS {
        let mut k = 0;
        while k < code.count[len] as u32 {
            let symbol = code.symbols[code.start[len] as usize + k as usize];
            let prefix = (code.first[len] + k) << (SHORT_BITS - len);
            let mut fill = 0;
            while fill < 1 << (SHORT_BITS - len) {
                table[(prefix + fill) as usize] = (symbol as u8, len as u8);
                fill += 1;
            }
            k += 1;
        }
        len += 1;
    }
    table
}

/// Appends the Huffman-decoded `bytes` to `out`. The padding must be the most significant
/// bits of EOS (all ones) and shorter than a byte; EOS itself must not appear. Bits are kept
/// left-aligned in a 64-bit accumulator: a code is at most 30 bits, so after a refill one
/// whole code is always in it. Measured under h2load against nginx (whose every response
/// inserts a Huffman-coded `date`): a bit at a time, this took a fifth of the daemon's time.
pub fn decode(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let (mut acc, mut bits, mut next) = (0u64, 0usize, 0usize);
    loop {
        while bits <= 56 && next < bytes.len() {
            acc |= u64::from(bytes[next]) << (56 - bits);
            bits += 8;
            next += 1;
        }
        if bits == 0 {
            return Ok(());
        }
        let (symbol, len) = SHORT[(acc >> (64 - SHORT_BITS)) as usize];
        if len != 0 && usize::from(len) <= bits {
            out.push(symbol);
            acc <<= len;
            bits -= usize::from(len);
            continue;
        }
        match long_code(acc, bits) {
            Some((EOS, _)) => return Err(Error::Huffman),
            Some((symbol, len)) => {
                out.push(symbol as u8);
                acc <<= len;
                bits -= len;
            }
            // Only padding may be left: fewer than 8 bits, all ones.
            None if bits < 8 && acc >> (64 - bits) == (1 << bits) - 1 => return Ok(()),
            None => return Err(Error::Huffman),
        }
    }
}

/// The symbol whose code starts `acc` (left-aligned, `bits` of them valid), and its length.
fn long_code(acc: u64, bits: usize) -> Option<(u16, usize)> {
    for len in 1..=MAX_LEN.min(bits) {
        let code = (acc >> (64 - len)) as u32;
        let offset = code.wrapping_sub(CODE.first[len]);
        if offset < u32::from(CODE.count[len]) {
            return Some((CODE.symbols[usize::from(CODE.start[len]) + offset as usize], len));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(hex: &str) -> Result<Vec<u8>, Error> {
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let mut out = Vec::new();
        decode(&bytes, &mut out).map(|()| out)
    }

    #[test]
    fn codes_match_the_rfc_table() {
        // A few rows of Appendix B, as (symbol, code, length).
        for (symbol, code, len) in [
            (0u16, 0x1ff8u32, 13usize),
            (b' ' as u16, 0x14, 6),
            (b'0' as u16, 0, 5),
            (b'a' as u16, 3, 5),
            (b'X' as u16, 0xfc, 8),
            (b'\\' as u16, 0x7fff0, 19),
            (255, 0x3ffffee, 26),
            (EOS, 0x3fffffff, 30),
        ] {
            let offset = code - CODE.first[len];
            assert!(offset < u32::from(CODE.count[len]), "{symbol}");
            assert_eq!(CODE.symbols[usize::from(CODE.start[len]) + offset as usize], symbol);
        }
    }

    #[test]
    fn decodes_the_rfc_examples() {
        // RFC 7541 C.4.1 to C.4.3.
        assert_eq!(decoded("f1e3c2e5f23a6ba0ab90f4ff").unwrap(), b"www.example.com");
        assert_eq!(decoded("a8eb10649cbf").unwrap(), b"no-cache");
        assert_eq!(decoded("25a849e95ba97d7f").unwrap(), b"custom-key");
        assert_eq!(decoded("25a849e95bb8e8b4bf").unwrap(), b"custom-value");
        assert_eq!(decoded("").unwrap(), b"");
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        assert_eq!(decoded("f1e3c2e5f23a6ba0ab90f4fe"), Err(Error::Huffman), "padding with a zero bit");
        assert_eq!(decoded("ff"), Err(Error::Huffman), "eight bits of padding");
        assert_eq!(decoded("fffffffc"), Err(Error::Huffman), "EOS");
        assert_eq!(decoded("ffffffff"), Err(Error::Huffman), "EOS and more");
        assert_eq!(decoded("fe"), Err(Error::Huffman), "a code cut short");
    }

    /// Every symbol alone, with its padding: the lookup and the length walk agree with the
    /// code table.
    #[test]
    fn every_symbol_decodes_alone() {
        for (symbol, &len) in LENGTHS.iter().enumerate().take(256) {
            let len = usize::from(len);
            let offset = (0..CODE.count[len])
                .find(|k| CODE.symbols[usize::from(CODE.start[len] + k)] == symbol as u16);
            let code = u64::from(CODE.first[len] + u32::from(offset.unwrap()));
            let padded = len.next_multiple_of(8);
            let word = (code << (padded - len)) | ((1 << (padded - len)) - 1);
            let bytes: Vec<u8> = (0..padded / 8).rev().map(|i| (word >> (8 * i)) as u8).collect();
            let mut out = Vec::new();
            decode(&bytes, &mut out).unwrap();
            assert_eq!(out, [symbol as u8], "symbol {symbol}");
        }
    }
}
