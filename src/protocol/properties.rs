//! Round-trip properties over generated inputs (proptest): parse/render, stuff/unstuff,
//! and the same result for every split of the input into chunks.

use proptest::prelude::*;

use super::address::{PathKind, parse_path};
use super::data::{DataDecoder, Progress};
use super::stuff::DotStuffer;
use crate::protocol::policy::Pattern;

/// Decodes DATA wire bytes cut into `chunk`-sized reads; returns the content and how
/// many input octets the end of data was found after.
fn decode(wire: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>) {
    let mut d = DataDecoder::new(1 << 24);
    let (mut content, mut out) = (Vec::new(), Vec::with_capacity(4096));
    let mut used = 0;
    for part in wire.chunks(chunk.max(1)) {
        let mut pos = 0;
        while pos < part.len() {
            let (n, progress) = d.decode(&part[pos..], &mut out);
            pos += n;
            used += n;
            content.append(&mut out);
            out.reserve(4096);
            if progress == Progress::End {
                return (content, Some(used));
            }
        }
    }
    (content, None)
}

fn atom() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}"
}

fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..4).prop_map(|l| l.join("."))
}

proptest! {
    /// Canonical text (CRLF lines of any bytes but CR and LF) survives stuffing and
    /// decoding exactly, with one end of data at the very end, for any read size.
    #[test]
    fn stuff_then_unstuff_is_identity(
        lines in prop::collection::vec(prop::collection::vec(any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'), 0..40), 0..30),
        chunk in 1usize..64,
    ) {
        let mut text = Vec::new();
        for l in &lines {
            text.extend_from_slice(l);
            text.extend_from_slice(b"\r\n");
        }
        let mut wire = Vec::new();
        let mut s = DotStuffer::new();
        // The stuffer too is fed in pieces.
        for part in text.chunks(chunk) {
            s.encode(part, &mut wire);
        }
        s.finish(&mut wire);
        let (back, end) = decode(&wire, chunk);
        prop_assert_eq!(end, Some(wire.len()));
        prop_assert_eq!(back, text);
    }

    /// Whatever the bytes, decoding does not depend on how they were split.
    #[test]
    fn decoding_is_the_same_for_every_split(
        wire in prop::collection::vec(prop::sample::select(b"a.\r\n\x00\xff ".to_vec()), 0..300),
        chunk in 1usize..50,
    ) {
        prop_assert_eq!(decode(&wire, wire.len()), decode(&wire, chunk));
    }

    /// A mailbox renders as a path that parses back to the same mailbox, and the
    /// patterns naming its domain match it.
    #[test]
    fn path_parse_render_round_trip(
        local in prop::collection::vec(atom(), 1..3).prop_map(|a| a.join(".")),
        domain in domain(),
    ) {
        let mailbox = format!("{local}@{domain}");
        prop_assume!(local.len() <= 64 && mailbox.len() <= 254);
        let path = format!("<{mailbox}> SIZE=10");
        let (parsed, rest) = parse_path(path.as_bytes(), PathKind::Forward, false).unwrap();
        prop_assert_eq!(&parsed[..], mailbox.as_bytes());
        prop_assert_eq!(rest, b" SIZE=10");
        let exact = Pattern::parse(&mailbox.to_uppercase()).unwrap();
        prop_assert!(exact.matches(mailbox.as_bytes()));
        let at_domain = Pattern::parse(&format!("*@{domain}")).unwrap();
        let below_domain = Pattern::parse(&format!("*@*.{domain}")).unwrap();
        let below = format!("{local}@sub.{domain}");
        prop_assert!(at_domain.matches(mailbox.as_bytes()));
        prop_assert!(!below_domain.matches(mailbox.as_bytes()));
        prop_assert!(below_domain.matches(below.as_bytes()));
        // A pattern renders as it was written.
        let p = below_domain;
        prop_assert_eq!(Pattern::parse(&p.to_string()).unwrap(), p);
    }
}
