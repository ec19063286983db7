//! Base64 (RFC 4648 §4) for SMTP AUTH (RFC 4954), both ways. A few dozen lines
//! instead of a crate.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode(input: &[u8], out: &mut String) {
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

fn value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes into `out`; `None` for anything that is not canonical padded base64 or
/// would not fit.
pub fn decode<const N: usize>(input: &[u8], out: &mut heapless::Vec<u8, N>) -> Option<()> {
    if !input.len().is_multiple_of(4) {
        return None;
    }
    out.clear();
    for (k, quad) in input.chunks(4).enumerate() {
        let last = k == input.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_both_ways() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (b"\0user\0pass", "AHVzZXIAcGFzcw=="),
            (b"\xff\xfe\xfd", "//79"),
        ];
        for &(raw, b64) in cases {
            let mut s = String::new();
            encode(raw, &mut s);
            assert_eq!(s, b64);
            let mut out = heapless::Vec::<u8, 64>::new();
            assert_eq!(decode(b64.as_bytes(), &mut out), Some(()));
            assert_eq!(&out[..], raw);
        }
        let mut out = heapless::Vec::<u8, 4>::new();
        for bad in [
            &b"Zg="[..],
            b"Zg=a",
            b"Z===",
            b"Zm9v\x00AAA",
            b"Zg==Zg==",
            b"Zm9vYmFy",
        ] {
            assert_eq!(decode(bad, &mut out), None, "{bad:?}");
        }
    }
}
