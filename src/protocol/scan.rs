//! Finding the next CR or LF: the scan that decides the speed of the DATA decoder and
//! the dot-stuffer, which copy the octets between line ends in runs.
//!
//! Eight octets are tested at a time with the usual SWAR test for a zero byte (Alan
//! Mycroft's, as in musl's `memchr`), in safe code and without SIMD, so it is the same
//! on every target this is built for; a byte at a time was 10 % of the relay's CPU
//! time with a size-optimised build.

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const CR: u64 = LOW * b'\r' as u64;
const LF: u64 = LOW * b'\n' as u64;

/// True when some byte of `x` is zero.
#[inline]
fn has_zero(x: u64) -> bool {
    x.wrapping_sub(LOW) & !x & HIGH != 0
}

/// The index of the first CR or LF in `s`.
#[inline]
pub fn line_end(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    for chunk in s.chunks_exact(8) {
        let x = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        if has_zero(x ^ CR) || has_zero(x ^ LF) {
            break;
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map(|p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(s: &[u8]) -> Option<usize> {
        s.iter().position(|&b| b == b'\r' || b == b'\n')
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"", None),
            (b"\r", Some(0)),
            (b"\n", Some(0)),
            (b"abcdefg", None),
            (b"abcdefgh", None),
            (b"abcdefgh\r\n", Some(8)),
            (b"abcdefg\n", Some(7)),
            (b"abcdefghijklmno\rp", Some(15)),
            // Bytes next to CR and LF in value, and 8-bit bytes, are not line ends.
            (b"\x0b\x0c\x0e\x09\x8d\x8a\xff\x00\x0d", Some(8)),
            (b"\x8d\x8a\x8d\x8a\x8d\x8a\x8d\x8a\x8d\x8a", None),
        ];
        for (s, want) in cases {
            assert_eq!(line_end(s), *want, "{s:?}");
        }
    }

    #[test]
    fn every_position_and_byte() {
        // A line end at each place of a 40-octet run, over a background of every value.
        for bg in 0..=255u8 {
            if bg == b'\r' || bg == b'\n' {
                continue;
            }
            for end in [b'\r', b'\n'] {
                for at in 0..40 {
                    let mut s = vec![bg; 40];
                    s[at] = end;
                    assert_eq!(line_end(&s), naive(&s), "bg {bg} at {at}");
                    assert_eq!(line_end(&s[1..]), naive(&s[1..]));
                }
            }
        }
    }
}
