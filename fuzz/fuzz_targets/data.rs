//! The DATA decoder (dot-unstuffing, end-of-data detection, bare CR/LF handling):
//! - it never panics and never grows its output buffer;
//! - the result is the same for every split of the input;
//! - the decoded content has no bare CR or LF (normalize mode);
//! - for canonical text, decode(stuff(text)) == text, each line over 998 octets
//!   folded after 998 octets with CRLF and a space (the reference fold below).
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_relayd::protocol::data::{DataDecoder, Progress};
use smtp_relayd::protocol::stuff::DotStuffer;

/// Decodes `input` in chunks of `chunk`; returns the content, whether the end was
/// seen, and how much input it took.
fn decode(input: &[u8], chunk: usize) -> (Vec<u8>, bool, usize) {
    let mut d = DataDecoder::new(1 << 20);
    let mut content = Vec::new();
    let mut out = Vec::with_capacity(4096);
    let mut used = 0;
    for part in input.chunks(chunk) {
        let mut pos = 0;
        while pos < part.len() {
            let cap = out.capacity();
            let (n, progress) = d.decode(&part[pos..], &mut out);
            assert_eq!(out.capacity(), cap, "the output buffer grew");
            pos += n;
            used += n;
            content.extend_from_slice(&out);
            out.clear();
            if progress == Progress::End {
                return (content, true, used);
            }
        }
    }
    (content, false, used)
}

fn no_bare_newline(content: &[u8]) -> bool {
    content.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => content.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && content[i - 1] == b'\r',
        _ => true,
    })
}

/// The reference model of the stuffer's last-resort fold: a line over 998 octets
/// goes out as 998 octets, then CRLF SP and up to 997 more, and so on.
fn fold(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\r\n").unwrap_or(line);
        let (first, mut rest) = body.split_at(body.len().min(998));
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rest.len().min(997));
            out.extend_from_slice(b"\r\n ");
            out.extend_from_slice(piece);
            rest = tail;
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, input.len().max(1));
    let split = decode(input, usize::from(c) % 97 + 1);
    assert_eq!(whole, split, "decoding differs by chunking");
    assert!(
        no_bare_newline(&whole.0),
        "bare CR or LF in decoded content"
    );

    // Round trip: canonical text (CRLF lines) survives stuffing and decoding, long
    // lines folded.
    let mut text = Vec::new();
    for line in input.split(|&b| b == b'\n') {
        text.extend(line.iter().filter(|&&b| b != b'\r'));
        text.extend_from_slice(b"\r\n");
    }
    let mut wire = Vec::new();
    let mut stuffer = DotStuffer::new();
    stuffer.encode(&text, &mut wire);
    stuffer.finish(&mut wire);
    let (back, ended, used) = decode(&wire, usize::from(c) % 13 + 1);
    assert!(
        ended && used == wire.len(),
        "one end of data, at the very end"
    );
    assert_eq!(back, fold(&text));
});
