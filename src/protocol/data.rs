//! The DATA byte machine: wire bytes in, message content out.
//!
//! Only `CRLF "." CRLF` ends a message (RFC 5321 §4.1.1.4). The dot that starts a
//! line is removed (§4.5.2). A bare LF or bare CR never ends anything: each is
//! written as CRLF and remembered, so that the session can refuse the message when
//! `bare_newline reject` is set. A dot line that follows a bare newline does not end
//! the message either: that difference of reading between two servers is what SMTP
//! smuggling (CVE-2023-51764 and kin) exploits. The content that comes out always has
//! CRLF line ends, so nothing a client sends can become two messages further on.
//!
//! Like qmail's DATA loop, this is a handful of states over single octets, with a fast
//! path that copies runs of ordinary octets in bulk.

use super::limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line. `bare`: the previous line ended with a bare CR or LF.
    LineStart { bare: bool },
    /// A dot at the start of a line.
    Dot { bare: bool },
    /// A dot and a CR at the start of a line.
    DotCr { bare: bool },
    /// Inside a line.
    Text,
    /// A CR inside a line or on an empty line.
    Cr,
    /// `CRLF.CRLF` seen.
    Done,
}

/// What the session does with a message once its end is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    TooBig,
    BareNewline,
    TooManyHops,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input was consumed; the message goes on.
    NeedInput,
    /// The output buffer is full: drain it and call again with the rest.
    OutputFull,
    /// The end of data was seen; the bytes after it are commands again.
    End,
}

/// Reads the header section of the content as it passes (RFC 5322 §2.2): counts the
/// `Received:` fields (RFC 5321 §6.3) and notes whether `Date:` and `Message-ID:` are
/// there. A field name is compared on its first `NAME_PEEK` octets, lower-cased.
#[derive(Debug, Clone, Copy)]
struct HeaderScan {
    in_header: bool,
    /// The start of this line, lower-cased, while it may still be a field name.
    name: [u8; NAME_PEEK],
    line_len: usize,
    received: u32,
    date: bool,
    message_id: bool,
}

/// Long enough for the longest name compared, with its colon.
const NAME_PEEK: usize = b"message-id:".len();

impl HeaderScan {
    fn new() -> Self {
        Self {
            in_header: true,
            name: [0; NAME_PEEK],
            line_len: 0,
            received: 0,
            date: false,
            message_id: false,
        }
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        if !self.in_header {
            return;
        }
        match b {
            b'\n' => {
                if self.line_len == 0 {
                    self.in_header = false;
                }
                self.line_len = 0;
            }
            b'\r' => {}
            _ => {
                if self.line_len < NAME_PEEK {
                    self.name[self.line_len] = b.to_ascii_lowercase();
                    if b == b':' {
                        match &self.name[..=self.line_len] {
                            b"received:" => self.received += 1,
                            b"date:" => self.date = true,
                            b"message-id:" => self.message_id = true,
                            _ => {}
                        }
                    }
                }
                self.line_len += 1;
            }
        }
    }
}

/// The fields added where a message has none (RFC 6409 §8, as Postfix does for local
/// clients): `Date:` and `Message-ID:`, written in full, CRLF included, by the shell.
pub const MISSING_CAP: usize = 512;

/// The decoder of one message. Create one per DATA command.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    /// Octets of the current line on the wire, without its line end.
    line_len: usize,
    size: u64,
    limit: u64,
    too_big: bool,
    long_line: bool,
    bare_newline: bool,
    headers: HeaderScan,
    /// `Date:` and `Message-ID:` lines to add at the end of the header section, each
    /// only if the message has none; empty when nothing is to be added.
    date: heapless::String<MISSING_CAP>,
    message_id: heapless::String<MISSING_CAP>,
}

/// The most octets one input octet can produce (a bare CR becomes CRLF, then the octet).
const MAX_EXPANSION: usize = 3;

impl DataDecoder {
    /// `limit`: the largest content in octets; beyond it content is counted, not kept.
    pub fn new(limit: u64) -> Self {
        Self {
            state: State::LineStart { bare: false },
            line_len: 0,
            size: 0,
            limit,
            too_big: false,
            long_line: false,
            bare_newline: false,
            headers: HeaderScan::new(),
            date: heapless::String::new(),
            message_id: heapless::String::new(),
        }
    }

    /// Adds these fields (each a whole line with its CRLF) at the end of the header
    /// section where the message has no `Date:` / no `Message-ID:` of its own. A line
    /// that does not fit `MISSING_CAP` is not added. They do not count in `size`.
    pub fn add_missing(&mut self, date: &str, message_id: &str) {
        self.date.clear();
        self.message_id.clear();
        let _ = self.date.push_str(date);
        let _ = self.message_id.push_str(message_id);
    }

    /// The octets still to be added at the end of the header section.
    #[inline]
    fn pending_insert(&self) -> usize {
        self.date.len() + self.message_id.len()
    }

    /// The fields the header lacked, written where it ends (before its empty line, or
    /// at the end of a message that has no body).
    fn insert_missing(&mut self, out: &mut Vec<u8>) {
        if !self.headers.date && !self.too_big {
            out.extend_from_slice(self.date.as_bytes());
        }
        if !self.headers.message_id && !self.too_big {
            out.extend_from_slice(self.message_id.as_bytes());
        }
        self.date.clear();
        self.message_id.clear();
    }

    /// Content octets seen so far (also those over the limit, which are not kept).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many `Received:` fields the header section had.
    pub fn received_count(&self) -> u32 {
        self.headers.received
    }

    /// The verdict once the end is seen. `reject_bare` is `bare_newline reject`.
    pub fn verdict(&self, reject_bare: bool, max_hops: u32) -> Verdict {
        if self.too_big {
            Verdict::TooBig
        } else if reject_bare && self.bare_newline {
            Verdict::BareNewline
        } else if self.headers.received > max_hops {
            Verdict::TooManyHops
        } else {
            Verdict::Accept
        }
    }

    pub fn saw_bare_newline(&self) -> bool {
        self.bare_newline
    }

    /// A text line of the content was longer than RFC 5321 §4.5.3.1.6 allows (998
    /// octets and CRLF; the leading dot of transparency not counted). Such a message is
    /// taken all the same, as Postfix takes it, and re-encoded on its way out.
    pub fn saw_long_line(&self) -> bool {
        self.long_line
    }

    #[inline]
    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            self.too_big = true;
        }
        if !self.too_big {
            // Room was checked by the caller: `out` never grows past its capacity.
            out.extend_from_slice(bytes);
        }
        // Only the header section is scanned; the body costs nothing here.
        if self.headers.in_header {
            for &b in bytes {
                self.headers.byte(b);
            }
        }
    }

    #[inline]
    fn end_line(&mut self, out: &mut Vec<u8>, bare: bool) -> State {
        if self.line_len > limits::TEXT_LINE - 2 {
            self.long_line = true;
        }
        if self.line_len == 0 && self.headers.in_header && self.pending_insert() > 0 {
            // The empty line that ends the header section: the missing fields go
            // before it.
            self.insert_missing(out);
        }
        self.line_len = 0;
        self.bare_newline |= bare;
        self.emit(out, b"\r\n");
        State::LineStart { bare }
    }

    /// Decodes `input` into `out`, which is filled up to its capacity and never grown
    /// (the caller allocates it once). Returns how much input was consumed and why it
    /// stopped.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Progress) {
        let mut i = 0;
        while i < input.len() {
            if out.capacity() - out.len() < MAX_EXPANSION + self.pending_insert() && !self.too_big {
                return (i, Progress::OutputFull);
            }
            if self.state == State::Text {
                // Fast path: copy a run of ordinary octets at once.
                let run = super::scan::line_end(&input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    let room = if self.too_big {
                        run
                    } else {
                        out.capacity() - out.len() - (MAX_EXPANSION - 1)
                    };
                    let n = run.min(room);
                    self.line_len += n;
                    self.emit(out, &input[i..i + n]);
                    i += n;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b, out);
            if self.state == State::Done {
                if self.headers.in_header && self.pending_insert() > 0 {
                    // No body: the content is all header, and it ends here.
                    self.insert_missing(out);
                }
                return (i, Progress::End);
            }
        }
        (i, Progress::NeedInput)
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> State {
        match self.state {
            State::LineStart { bare } => match b {
                // The dot is either the end of data or the one added for
                // transparency, which the line limit does not count (§4.5.3.1.6).
                b'.' => State::Dot { bare },
                _ => self.text(b, out),
            },
            State::Dot { bare } => match b {
                b'\r' => State::DotCr { bare },
                // The stuffing dot is dropped; what follows starts the line's content.
                _ => self.text(b, out),
            },
            State::DotCr { bare } => match b {
                b'\n' if !bare => State::Done,
                b'\n' => self.end_line(out, false),
                _ => {
                    // ".\r" then something else: a bare CR after the dot.
                    self.end_line(out, true);
                    self.state = State::LineStart { bare: true };
                    self.step(b, out)
                }
            },
            State::Text => self.text(b, out),
            State::Cr => match b {
                b'\n' => self.end_line(out, false),
                _ => {
                    self.end_line(out, true);
                    self.state = State::LineStart { bare: true };
                    self.step(b, out)
                }
            },
            State::Done => State::Done,
        }
    }

    /// An octet inside a line (or the first one of a line that is not a dot).
    fn text(&mut self, b: u8, out: &mut Vec<u8>) -> State {
        match b {
            b'\r' => State::Cr,
            b'\n' => self.end_line(out, true),
            _ => {
                self.line_len += 1;
                self.emit(out, &[b]);
                State::Text
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes all of `wire` through a small output buffer, in chunks of `chunk`
    /// octets. Returns the content, the octets left after the end, and the decoder.
    pub(crate) fn decode_all(
        wire: &[u8],
        chunk: usize,
        limit: u64,
    ) -> (Vec<u8>, Option<Vec<u8>>, DataDecoder) {
        run(DataDecoder::new(limit), wire, chunk, 16)
    }

    /// Runs `d` over `wire` in chunks of `chunk` octets through an output buffer of
    /// `cap` octets, which must never grow.
    fn run(
        mut d: DataDecoder,
        wire: &[u8],
        chunk: usize,
        cap: usize,
    ) -> (Vec<u8>, Option<Vec<u8>>, DataDecoder) {
        let mut out: Vec<u8> = Vec::with_capacity(cap);
        let mut content = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let end = (pos + chunk).min(wire.len());
            let (n, progress) = d.decode(&wire[pos..end], &mut out);
            pos += n;
            assert!(out.capacity() == cap, "the output buffer grew");
            content.extend_from_slice(&out);
            out.clear();
            if progress == Progress::End {
                return (content, Some(wire[pos..].to_vec()), d);
            }
        }
        (content, None, d)
    }

    #[test]
    fn decode_table() {
        // (wire, content, rest after the end (None: not ended), bare newline seen)
        type Case<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>, bool);
        let cases: &[Case] = &[
            (b".\r\n", b"", Some(b""), false),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", Some(b"QUIT\r\n"), false),
            (b"..a\r\n.\r\n", b".a\r\n", Some(b""), false),
            (b"...\r\n.\r\n", b"..\r\n", Some(b""), false),
            (b".a\r\n.\r\n", b"a\r\n", Some(b""), false),
            (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n", Some(b""), false),
            (b"\r\n\r\n.\r\n", b"\r\n\r\n", Some(b""), false),
            // Bare LF and bare CR become CRLF and never end the message.
            (b"a\nb\r\n.\r\n", b"a\r\nb\r\n", Some(b""), true),
            (b"a\rb\r\n.\r\n", b"a\r\nb\r\n", Some(b""), true),
            // The smuggling sequences: none of them ends the message.
            (
                b"a\n.\nMAIL FROM:<x@y>\r\n",
                b"a\r\n\r\nMAIL FROM:<x@y>\r\n",
                None,
                true,
            ),
            (b"a\r.\rMAIL\r\n", b"a\r\n\r\nMAIL\r\n", None, true),
            (b"a\n.\r\nMAIL\r\n", b"a\r\n\r\nMAIL\r\n", None, true),
            (b"a\r\n.\nMAIL\r\n", b"a\r\n\r\nMAIL\r\n", None, true),
            (b"a\r.\r\nMAIL\r\n", b"a\r\n\r\nMAIL\r\n", None, true),
            (b"a\r\n.\rMAIL\r\n", b"a\r\n\r\nMAIL\r\n", None, true),
            (b"a\n.\rMAIL\r\n", b"a\r\n\r\nMAIL\r\n", None, true),
            (b"a\r.\nMAIL\r\n", b"a\r\n\r\nMAIL\r\n", None, true),
            // After a smuggling attempt, a real end still ends it.
            (
                b"a\n.\r\nb\r\n.\r\nQUIT\r\n",
                b"a\r\n\r\nb\r\n",
                Some(b"QUIT\r\n"),
                true,
            ),
            // 8-bit and NUL octets are carried as they are.
            (
                b"\xff\x00\xe9\r\n.\r\n",
                b"\xff\x00\xe9\r\n",
                Some(b""),
                false,
            ),
            (b"a\r\n.", b"a\r\n", None, false),
            (b"a\r\n.\r", b"a\r\n", None, false),
        ];
        for &(wire, content, rest, bare) in cases {
            for chunk in [1, 2, 3, 7, wire.len()] {
                let (got, got_rest, d) = decode_all(wire, chunk, u64::MAX);
                let ctx = format!("wire {:?} chunk {chunk}", String::from_utf8_lossy(wire));
                assert_eq!(got, content, "{ctx}");
                assert_eq!(got_rest.as_deref(), rest, "{ctx}");
                assert_eq!(d.saw_bare_newline(), bare, "{ctx}");
            }
        }
    }

    #[test]
    fn limits_and_verdicts() {
        // Over the size limit: the end is still found, content beyond it is not kept.
        let (got, rest, d) = decode_all(b"0123456789\r\n.\r\n", 4, 5);
        assert!(got.len() <= 5 && rest.is_some());
        assert_eq!(d.size(), 12);
        assert_eq!(d.verdict(false, 30), Verdict::TooBig);

        // 998 octets plus CRLF is the longest text line (RFC 5321 §4.5.3.1.6); a
        // longer one is taken, and noted for the re-encoding on the way out.
        let line = |n: usize, prefix: &[u8]| {
            let mut wire = prefix.to_vec();
            wire.extend(std::iter::repeat_n(b'x', n));
            wire.extend_from_slice(b"\r\n.\r\n");
            let (content, _, d) = decode_all(&wire, 100, u64::MAX);
            assert_eq!(d.verdict(false, 30), Verdict::Accept);
            (content.len(), d.saw_long_line())
        };
        assert_eq!(line(998, b""), (1000, false));
        assert_eq!(line(999, b""), (1001, true));
        assert_eq!(line(100_000, b""), (100_002, true));
        // The leading dot added for transparency is not counted: 1001 octets on the
        // wire, a 998-octet line of content.
        assert_eq!(line(997, b".."), (1000, false));
        assert_eq!(line(998, b".."), (1001, true));

        let (_, _, d) = decode_all(b"a\nb\r\n.\r\n", 3, u64::MAX);
        assert_eq!(d.verdict(false, 30), Verdict::Accept);
        assert_eq!(d.verdict(true, 30), Verdict::BareNewline);

        // Received fields are counted in the header section only.
        let wire = b"Received: a\r\nreceived: b\r\nX-Received: c\r\nRECEIVED:d\r\n\r\nReceived: body\r\n.\r\n";
        let (_, _, d) = decode_all(wire, 5, u64::MAX);
        assert_eq!(d.received_count(), 3);
        assert_eq!(d.verdict(false, 3), Verdict::Accept);
        assert_eq!(d.verdict(false, 2), Verdict::TooManyHops);
    }

    /// Decodes with `add_missing` set, through an output buffer of 600 octets.
    fn with_missing(wire: &[u8], chunk: usize) -> Vec<u8> {
        let mut d = DataDecoder::new(u64::MAX);
        d.add_missing("Date: D\r\n", "Message-ID: <M>\r\n");
        run(d, wire, chunk, 600).0
    }

    #[test]
    fn missing_date_and_message_id_are_added_at_the_end_of_the_header() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"Subject: x\r\n\r\nbody\r\n.\r\n",
                b"Subject: x\r\nDate: D\r\nMessage-ID: <M>\r\n\r\nbody\r\n",
            ),
            // Present (any case, obsolete space before the colon not needed): kept.
            (
                b"DATE: y\r\nmessage-id: <z>\r\n\r\nb\r\n.\r\n",
                b"DATE: y\r\nmessage-id: <z>\r\n\r\nb\r\n",
            ),
            (
                b"Message-Id: <z>\r\n\r\nb\r\n.\r\n",
                b"Message-Id: <z>\r\nDate: D\r\n\r\nb\r\n",
            ),
            // Only the header counts: the same names in the body do not.
            (
                b"S: x\r\n\r\nDate: y\r\n.\r\n",
                b"S: x\r\nDate: D\r\nMessage-ID: <M>\r\n\r\nDate: y\r\n",
            ),
            // X-Date is another field.
            (
                b"X-Date: y\r\n\r\n.\r\n",
                b"X-Date: y\r\nDate: D\r\nMessage-ID: <M>\r\n\r\n",
            ),
            // No body, no empty line: added at the end.
            (b"S: x\r\n.\r\n", b"S: x\r\nDate: D\r\nMessage-ID: <M>\r\n"),
            // No header at all.
            (
                b"\r\nbody\r\n.\r\n",
                b"Date: D\r\nMessage-ID: <M>\r\n\r\nbody\r\n",
            ),
            (b".\r\n", b"Date: D\r\nMessage-ID: <M>\r\n"),
        ];
        for &(wire, want) in cases {
            for chunk in [1, 2, 5, wire.len()] {
                assert_eq!(
                    String::from_utf8_lossy(&with_missing(wire, chunk)),
                    String::from_utf8_lossy(want),
                    "wire {:?} chunk {chunk}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }
}
