//! The HPACK Huffman code (RFC 7541 Appendix B), decoding only.
//!
//! The code is canonical: symbols sorted by (code length, symbol value) get
//! consecutive codes. So the code lengths alone define it, and decoding needs per
//! length only the first code and where its symbols start in the sorted order.

use std::sync::OnceLock;

/// Code length in bits of each symbol 0..=255 and EOS (256), RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Canonical decoding tables.
struct Canonical {
    /// Symbols sorted by (length, value).
    sorted: [u16; 257],
    /// Per length: number of codes, first code, index of its first symbol in `sorted`.
    count: [u32; MAX_LEN + 1],
    first_code: [u32; MAX_LEN + 1],
    first_index: [u32; MAX_LEN + 1],
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut sorted = [0u16; 257];
        for (i, slot) in sorted.iter_mut().enumerate() {
            *slot = u16::try_from(i).unwrap_or(EOS);
        }
        sorted.sort_by_key(|&s| (CODE_LENGTHS.get(usize::from(s)).copied().unwrap_or(0), s));
        let mut count = [0u32; MAX_LEN + 1];
        for &len in &CODE_LENGTHS {
            if let Some(c) = count.get_mut(usize::from(len)) {
                *c += 1;
            }
        }
        let mut first_code = [0u32; MAX_LEN + 1];
        let mut first_index = [0u32; MAX_LEN + 1];
        let (mut code, mut index) = (0u32, 0u32);
        for len in 1..=MAX_LEN {
            first_code[len] = code;
            first_index[len] = index;
            code = (code + count[len]) << 1;
            index += count[len];
        }
        Canonical {
            sorted,
            count,
            first_code,
            first_index,
        }
    })
}

/// Why a Huffman string did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// EOS inside the string, a code longer than 30 bits, or padding longer than 7
    /// bits or not all ones (RFC 7541 section 5.2).
    Invalid,
}

/// Decodes `input` into `out` (appended).
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let t = canonical();
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            if len > MAX_LEN {
                return Err(HuffmanError::Invalid);
            }
            let offset = code.wrapping_sub(t.first_code[len]);
            if code >= t.first_code[len] && offset < t.count[len] {
                let index = usize::try_from(t.first_index[len] + offset).unwrap_or(usize::MAX);
                let symbol = t.sorted.get(index).copied().unwrap_or(EOS);
                if symbol == EOS {
                    return Err(HuffmanError::Invalid);
                }
                out.push(u8::try_from(symbol).unwrap_or(b'?'));
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: the most significant bits of EOS (all ones), shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7541_c4_strings() {
        // "www.example.com" (C.4.1)
        let enc = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        decode(&enc, &mut out).expect("decodes");
        assert_eq!(out, b"www.example.com");
        // "no-cache" (C.4.2)
        let mut out = Vec::new();
        decode(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf], &mut out).expect("decodes");
        assert_eq!(out, b"no-cache");
        // "custom-value" (C.4.3)
        let mut out = Vec::new();
        decode(
            &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf],
            &mut out,
        )
        .expect("decodes");
        assert_eq!(out, b"custom-value");
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        let mut out = Vec::new();
        // 8 bits of ones: padding too long.
        assert_eq!(decode(&[0xff], &mut out), Err(HuffmanError::Invalid));
        // '0' is 00000 (5 bits); padding 000 is not all ones.
        assert_eq!(decode(&[0x00], &mut out), Err(HuffmanError::Invalid));
        // EOS encoded: 30 ones then padding.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::Invalid)
        );
        assert_eq!(decode(&[], &mut out), Ok(()));
    }

    #[test]
    fn code_lengths_make_a_complete_prefix_code() {
        // Kraft sum of a complete prefix code is exactly 1.
        let sum: u64 = CODE_LENGTHS
            .iter()
            .map(|&l| 1u64 << (30 - u32::from(l)))
            .sum();
        assert_eq!(sum, 1u64 << 30);
    }
}
