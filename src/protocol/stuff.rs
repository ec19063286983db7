//! The send-side byte machine: message content in, DATA wire bytes out.
//!
//! A dot that starts a line is doubled (RFC 5321 §4.5.2), every line end is written as
//! CRLF (a bare CR or LF in a damaged spool file too), and `finish` writes the final
//! `CRLF.CRLF`. Whatever the content, the output holds exactly one end of data.
//!
//! No line goes out longer than RFC 5321 §4.5.3.1.6 allows (998 octets of text, the
//! dot of transparency not counted): a longer one is folded with CRLF and a space
//! after 998 octets, as Postfix's `smtp_line_length_limit` does. That changes the
//! text, so it is the last resort: the relay re-encodes what it can first
//! (`crate::longlines`); this catches the rest, and passthrough, which cannot look
//! ahead.

use super::limits;

/// The longest line of text sent.
const LINE_MAX: usize = limits::TEXT_LINE - 2;

#[derive(Debug, Clone)]
pub struct DotStuffer {
    line_start: bool,
    pending_cr: bool,
    /// Octets of text on the current line, the stuffing dot not counted.
    line_len: usize,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        Self {
            line_start: true,
            pending_cr: false,
            line_len: 0,
        }
    }

    /// Appends the wire form of `input` to `out` (at most twice its length, plus 2).
    #[inline]
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                self.line_len = 0;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    self.line_len = 0;
                    i += 1;
                }
                _ => {
                    if self.line_start && b == b'.' {
                        out.push(b'.');
                    }
                    self.line_start = false;
                    let run = super::scan::line_end(&input[i..]).unwrap_or(input.len() - i);
                    let room = LINE_MAX - self.line_len;
                    if run > room {
                        // Folded: the continuation starts with a space, never a dot.
                        out.extend_from_slice(&input[i..i + room]);
                        out.extend_from_slice(b"\r\n ");
                        self.line_len = 1;
                        i += room;
                    } else {
                        out.extend_from_slice(&input[i..i + run]);
                        self.line_len += run;
                        i += run;
                    }
                }
            }
        }
    }

    /// Ends the data: the last line is closed if it was not, then `.CRLF`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::data::tests::decode_all;

    fn stuff(content: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for part in content.chunks(chunk.max(1)) {
            s.encode(part, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn stuff_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b".a\r\n..b\r\nc.d\r\n", b"..a\r\n...b\r\nc.d\r\n.\r\n"),
            (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\rb\r", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"\r\n.\r\n", b"\r\n..\r\n.\r\n"),
            (b"x\r\r\n", b"x\r\n\r\n.\r\n"),
        ];
        // 998 octets pass as they are, with or without a stuffing dot.
        let x998 = [b'x'; 998];
        let dot998 = [&b"."[..], &[b'x'; 997]].concat();
        let x1000 = [b'x'; 1000];
        let long = [b'y'; 2500];
        let folded_long = [
            &[b'y'; 998][..],
            b"\r\n ",
            &[b'y'; 997],
            b"\r\n ",
            &[b'y'; 505],
            b"\r\n.\r\n",
        ]
        .concat();
        let long_cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (
                [&x998[..], b"\r\n"].concat(),
                [&x998[..], b"\r\n.\r\n"].concat(),
            ),
            (
                [&dot998[..], b"\r\n"].concat(),
                [&b"."[..], &dot998, b"\r\n.\r\n"].concat(),
            ),
            // Longer: folded after 998 octets, with CRLF and a space.
            (
                [&x1000[..], b"\r\n"].concat(),
                [&x998[..], b"\r\n xx\r\n.\r\n"].concat(),
            ),
            (long.to_vec(), folded_long),
        ];
        for (content, wire) in &long_cases {
            for chunk in [1, 7, 1000, content.len()] {
                assert_eq!(&stuff(content, chunk), wire, "chunk {chunk}");
            }
        }
        for &(content, wire) in cases {
            for chunk in [1, 2, 5, content.len()] {
                assert_eq!(
                    stuff(content, chunk),
                    wire,
                    "content {:?} chunk {chunk}",
                    String::from_utf8_lossy(content)
                );
            }
        }
    }

    /// The reference model: every CRLF, lone CR and lone LF is one CRLF, and a last
    /// line without a line end gets one.
    fn canonical(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < content.len() {
            match content[i] {
                b'\r' if content.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 2;
                    continue;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn stuffed_output_decodes_to_canonical_content_and_has_one_end() {
        // Whatever the content, its wire form has no bare CR or LF, decodes back to the
        // content with CRLF line ends, and the end of data comes exactly at its end.
        let mut seed = 0x2545F4914F6CDD1Du64;
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let content: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b"\r\n.ab"[(seed % 5) as usize]
                })
                .collect();
            let wire = stuff(&content, 3);
            for (i, &b) in wire.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(wire.get(i + 1), Some(&b'\n'), "{wire:?}");
                }
                if b == b'\n' {
                    assert_eq!(wire[i - 1], b'\r', "{wire:?}");
                }
            }
            let (decoded, rest, d) = decode_all(&wire, 4, u64::MAX);
            assert_eq!(rest.as_deref(), Some(&b""[..]), "{content:?}");
            assert!(!d.saw_bare_newline());
            assert_eq!(decoded, canonical(&content), "{content:?}");
        }
    }
}
