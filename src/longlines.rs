//! Messages with text lines over 998 octets, made fit to send.
//!
//! RFC 5321 §4.5.3.1.6 allows 998 octets and CRLF per line, and many smarthosts hold
//! their clients to it (`500 Line too long`). Cron output, scripts and cameras' HTML
//! mail exceed it, so the relay takes such mail (as Postfix does) and, where the format
//! allows, changes only its transfer encoding on the way out, so the reader sees the
//! same text (the spool keeps the message as it came):
//!
//! - a message that is not MIME becomes `text/plain` in quoted-printable (RFC 2045
//!   §6.7), with the charset its body needs (`us-ascii`, `utf-8`, else `unknown-8bit`,
//!   RFC 1428);
//! - a MIME part with a long line whose encoding is `7bit`, `8bit` or `binary` (or
//!   none) is re-encoded as quoted-printable; every other part is left as it is;
//! - a header line over the limit is folded at a space or tab (RFC 5322 §2.2.3).
//!
//! What cannot be re-encoded (a `message/*` part, a base64 part with a long line, a
//! header line without a space, a header section over 64 KiB) is folded by the
//! dot-stuffer as the last resort, Postfix's way: a CRLF and a space after 998 octets.
//!
//! It takes two passes over the content, both sans-IO: `Planner` finds which parts
//! need re-encoding (their header is sent before their body is seen), then `Encoder`
//! writes the result. The relay runs them only for messages whose spool file says
//! they have a long line.

use crate::header::field_name;

/// RFC 5321 §4.5.3.1.6: a text line is at most 998 octets and CRLF.
pub const LINE_MAX: usize = 998;
/// The start of a body line kept to see whether it is a MIME boundary (RFC 2046
/// §5.1.1: a boundary is at most 70 characters, with `--` before and after).
const PEEK: usize = 1024;
/// A part's header section is read whole to be rewritten, up to this.
const HEADER_CAP: usize = crate::rewrite::HEADER_CAP;
/// Nested multiparts followed at most; deeper ones pass as they are.
const MAX_DEPTH: usize = 16;
/// Parts planned at most; later ones pass as they are.
const MAX_PARTS: usize = 4096;
/// RFC 2045 §6.7 rule 5: encoded lines are at most 76 characters.
const QP_LINE: usize = 76;

/// True when some line of `content` (CRLF lines) is longer than `LINE_MAX`.
pub fn has_long_line(content: &[u8]) -> bool {
    content
        .split(|&b| b == b'\n')
        .any(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > LINE_MAX)
}

/// What the walker finds: a part's header section, a piece of a part's body (or of a
/// multipart's preamble and epilogue), or a boundary line.
enum Event<'a> {
    /// `blank`: the section ended with its empty line, which `bytes` includes.
    Header {
        part: usize,
        bytes: &'a [u8],
        blank: bool,
    },
    Body {
        part: usize,
        bytes: &'a [u8],
    },
    Boundary(&'a [u8]),
}

/// What a part's header says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct HeaderInfo {
    has_content_type: bool,
    has_mime_version: bool,
    /// `multipart/*` with a boundary.
    boundary: Option<Vec<u8>>,
    /// `message/*`: its content keeps its own encoding rules (RFC 2046 §5.2).
    message: bool,
    /// `Content-Transfer-Encoding` is absent, `7bit`, `8bit` or `binary`.
    identity: bool,
}

impl HeaderInfo {
    fn parse(header: &[u8]) -> HeaderInfo {
        let mut info = HeaderInfo {
            identity: true,
            ..HeaderInfo::default()
        };
        for (name, value) in fields(header) {
            let value = value.trim_ascii();
            if name.eq_ignore_ascii_case(b"content-type") {
                info.has_content_type = true;
                let kind = value
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or(b"")
                    .trim_ascii();
                let lower = kind.to_ascii_lowercase();
                if lower.starts_with(b"multipart/") {
                    info.boundary = boundary_param(value);
                } else if lower.starts_with(b"message/") {
                    info.message = true;
                }
            } else if name.eq_ignore_ascii_case(b"mime-version") {
                info.has_mime_version = true;
            } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
                let v = value.to_ascii_lowercase();
                info.identity = matches!(&v[..], b"7bit" | b"8bit" | b"binary");
            }
        }
        info
    }
}

/// The header fields of a section: each field's name and its value with the line
/// breaks of its folds taken out.
fn fields(header: &[u8]) -> Vec<(&[u8], Vec<u8>)> {
    let mut out: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for line in header.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if matches!(text.first(), Some(b' ' | b'\t')) {
            if let Some((_, v)) = out.last_mut() {
                v.extend_from_slice(text);
            }
        } else if let Some(name) = field_name(line) {
            let colon = text.iter().position(|&b| b == b':').unwrap_or(0);
            out.push((name, text[colon + 1..].to_vec()));
        }
    }
    out
}

/// The `boundary` parameter of a Content-Type value (RFC 2046 §5.1.1), quoted or not.
fn boundary_param(value: &[u8]) -> Option<Vec<u8>> {
    for param in value.split(|&b| b == b';').skip(1) {
        let param = param.trim_ascii();
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            continue;
        };
        if !param[..eq].trim_ascii().eq_ignore_ascii_case(b"boundary") {
            continue;
        }
        let v = param[eq + 1..].trim_ascii();
        let v = match v.strip_prefix(b"\"") {
            Some(q) => &q[..q.iter().position(|&b| b == b'"').unwrap_or(q.len())],
            None => v,
        };
        return (!v.is_empty() && v.len() <= 70).then(|| v.to_vec());
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkState {
    /// Gathering a part's header section.
    Header,
    /// At a body line's start or inside its first `PEEK` octets.
    Body,
    /// Inside a body line longer than `PEEK`: it cannot be a boundary.
    LongLine,
}

/// Splits content into `Event`s, following the MIME structure (RFC 2046 §5.1).
struct Walker {
    state: WalkState,
    header: Vec<u8>,
    /// The current body line's first octets.
    line: Vec<u8>,
    /// Open multiparts, innermost last: their boundary and their part index.
    open: Vec<(Vec<u8>, usize)>,
    part: usize,
    parts: usize,
}

impl Walker {
    fn new() -> Self {
        Self {
            state: WalkState::Header,
            header: Vec::new(),
            line: Vec::new(),
            open: Vec::new(),
            part: 0,
            parts: 1,
        }
    }

    fn feed(&mut self, mut input: &[u8], f: &mut impl FnMut(Event<'_>)) {
        while !input.is_empty() {
            let lf = input.iter().position(|&b| b == b'\n');
            let (piece, whole) = match lf {
                Some(p) => (&input[..=p], true),
                None => (input, false),
            };
            input = &input[piece.len()..];
            match self.state {
                WalkState::Header => {
                    if self.header.len() + piece.len() > HEADER_CAP {
                        // Too long to rewrite: what came so far goes as a header, the
                        // rest of the part as it is (boundaries are still followed).
                        f(Event::Header {
                            part: self.part,
                            bytes: &self.header,
                            blank: false,
                        });
                        self.header.clear();
                        self.state = WalkState::Body;
                        self.body(piece, whole, f);
                        continue;
                    }
                    self.header.extend_from_slice(piece);
                    if whole {
                        // Where the line began: after the last LF before this one.
                        let before = &self.header[..self.header.len() - 1];
                        let start = before
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |p| p + 1);
                        self.header_line(start, f);
                    }
                }
                WalkState::Body | WalkState::LongLine => self.body(piece, whole, f),
            }
        }
    }

    /// The header line at `start` is whole: does the section go on?
    fn header_line(&mut self, start: usize, f: &mut impl FnMut(Event<'_>)) {
        let line = &self.header[start..];
        let blank = line == b"\r\n" || line == b"\n";
        let continuation = start > 0 && matches!(line.first(), Some(b' ' | b'\t'));
        if !blank && (continuation || field_name(line).is_some()) {
            return;
        }
        let end = if blank { self.header.len() } else { start };
        let info = HeaderInfo::parse(&self.header[..end]);
        f(Event::Header {
            part: self.part,
            bytes: &self.header[..end],
            blank,
        });
        if let Some(b) = info.boundary.filter(|_| self.open.len() < MAX_DEPTH) {
            self.open.push((b, self.part));
        }
        self.state = WalkState::Body;
        let rest = self.header.split_off(end);
        self.header.clear();
        if !rest.is_empty() {
            // A line that is not a field ends the section and starts the body.
            self.body(&rest, true, f);
        }
    }

    fn body(&mut self, piece: &[u8], whole: bool, f: &mut impl FnMut(Event<'_>)) {
        if self.state == WalkState::LongLine {
            f(Event::Body {
                part: self.part,
                bytes: piece,
            });
            if whole {
                self.state = WalkState::Body;
            }
            return;
        }
        if self.line.len() + piece.len() > PEEK {
            f(Event::Body {
                part: self.part,
                bytes: &self.line,
            });
            self.line.clear();
            f(Event::Body {
                part: self.part,
                bytes: piece,
            });
            if !whole {
                self.state = WalkState::LongLine;
            }
            return;
        }
        self.line.extend_from_slice(piece);
        if whole {
            let line = std::mem::take(&mut self.line);
            self.body_line(&line, f);
            self.line = line;
            self.line.clear();
        }
    }

    /// A whole body line of at most `PEEK` octets: a boundary, or content.
    fn body_line(&mut self, line: &[u8], f: &mut impl FnMut(Event<'_>)) {
        if let Some(rest) = line.strip_prefix(b"--") {
            for k in (0..self.open.len()).rev() {
                let Some(after) = rest.strip_prefix(&self.open[k].0[..]) else {
                    continue;
                };
                let close = after.starts_with(b"--");
                let tail = if close { &after[2..] } else { after };
                if !tail.iter().all(|b| b" \t\r\n".contains(b)) {
                    continue;
                }
                f(Event::Boundary(line));
                if close {
                    // The epilogue belongs to the enclosing multipart.
                    self.part = self.open[k].1;
                    self.open.truncate(k);
                    self.state = WalkState::Body;
                } else {
                    self.open.truncate(k + 1);
                    self.part = self.parts;
                    self.parts += 1;
                    self.state = WalkState::Header;
                }
                return;
            }
        }
        f(Event::Body {
            part: self.part,
            bytes: line,
        });
    }

    fn finish(&mut self, f: &mut impl FnMut(Event<'_>)) {
        match self.state {
            WalkState::Header => f(Event::Header {
                part: self.part,
                bytes: &self.header,
                blank: false,
            }),
            _ if !self.line.is_empty() => f(Event::Body {
                part: self.part,
                bytes: &self.line,
            }),
            _ => {}
        }
        *self = Walker::new();
    }
}

/// What the first pass learned of one part.
#[derive(Debug, Clone, Default)]
struct PartPlan {
    /// A leaf with an identity transfer encoding: it can be re-encoded.
    encodable: bool,
    /// Its body has a line over `LINE_MAX`.
    long: bool,
    has_content_type: bool,
    has_mime_version: bool,
    eight_bit: bool,
    bad_utf8: bool,
}

/// Which parts are re-encoded, found by a first pass over the content.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    parts: Vec<PartPlan>,
}

impl Plan {
    fn encodes(&self, part: usize) -> bool {
        self.parts.get(part).is_some_and(|p| p.encodable && p.long)
    }

    /// How many parts are re-encoded (for the log).
    pub fn reencoded(&self) -> usize {
        (0..self.parts.len()).filter(|&i| self.encodes(i)).count()
    }
}

/// The first pass.
pub struct Planner {
    walker: Walker,
    plan: Plan,
    line_len: usize,
    /// UTF-8 continuation octets still expected (for part 0's charset).
    utf8_need: u8,
}

impl Default for Planner {
    fn default() -> Self {
        Self::new()
    }
}

impl Planner {
    pub fn new() -> Self {
        Self {
            walker: Walker::new(),
            plan: Plan::default(),
            line_len: 0,
            utf8_need: 0,
        }
    }

    pub fn feed(&mut self, input: &[u8]) {
        let Self {
            walker,
            plan,
            line_len,
            utf8_need,
        } = self;
        walker.feed(input, &mut |e| Self::event(plan, line_len, utf8_need, e));
    }

    pub fn finish(mut self) -> Plan {
        let Self {
            walker,
            plan,
            line_len,
            utf8_need,
        } = &mut self;
        walker.finish(&mut |e| Self::event(plan, line_len, utf8_need, e));
        if self.utf8_need > 0
            && let Some(p) = self.plan.parts.first_mut()
        {
            p.bad_utf8 = true;
        }
        self.plan
    }

    fn event(plan: &mut Plan, line_len: &mut usize, utf8_need: &mut u8, e: Event<'_>) {
        match e {
            Event::Header { part, bytes, .. } => {
                *line_len = 0;
                if part >= MAX_PARTS || part != plan.parts.len() {
                    return;
                }
                let info = HeaderInfo::parse(bytes);
                plan.parts.push(PartPlan {
                    encodable: info.boundary.is_none() && !info.message && info.identity,
                    has_content_type: info.has_content_type,
                    has_mime_version: info.has_mime_version,
                    ..PartPlan::default()
                });
            }
            Event::Body { part, bytes } => {
                let Some(p) = plan.parts.get_mut(part) else {
                    return;
                };
                for &b in bytes {
                    match b {
                        b'\n' => *line_len = 0,
                        b'\r' => {}
                        _ => {
                            *line_len += 1;
                            p.long |= *line_len > LINE_MAX;
                        }
                    }
                    if b >= 0x80 {
                        p.eight_bit = true;
                    }
                    if part == 0 {
                        utf8_step(utf8_need, &mut p.bad_utf8, b);
                    }
                }
            }
            Event::Boundary(_) => *line_len = 0,
        }
    }
}

/// One octet of a UTF-8 check (lead octets and continuation counts; enough to name a
/// charset, not a validator).
fn utf8_step(need: &mut u8, bad: &mut bool, b: u8) {
    if *need > 0 {
        if b & 0xC0 == 0x80 {
            *need -= 1;
            return;
        }
        *bad = true;
        *need = 0;
    }
    match b {
        0..=0x7F => {}
        0xC2..=0xDF => *need = 1,
        0xE0..=0xEF => *need = 2,
        0xF0..=0xF4 => *need = 3,
        _ => *bad = true,
    }
}

/// Quoted-printable, streaming (RFC 2045 §6.7). CRLF is a hard line break; a space
/// or tab before one is encoded; lines are broken softly at 76 characters.
#[derive(Debug, Default)]
struct Qp {
    col: usize,
    /// A space or tab not written yet: literal if text follows, encoded at a break.
    ws: Option<u8>,
    cr: bool,
}

impl Qp {
    fn token(&mut self, t: &[u8], out: &mut Vec<u8>) {
        // Room for the soft break's '=' on this line.
        if self.col + t.len() > QP_LINE - 1 {
            out.extend_from_slice(b"=\r\n");
            self.col = 0;
        }
        out.extend_from_slice(t);
        self.col += t.len();
    }

    fn hex(&mut self, b: u8, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        self.token(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]], out);
    }

    fn flush_ws(&mut self, literal: bool, out: &mut Vec<u8>) {
        if let Some(w) = self.ws.take() {
            if literal {
                self.token(&[w], out);
            } else {
                self.hex(w, out);
            }
        }
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.flush_ws(false, out);
                    out.extend_from_slice(b"\r\n");
                    self.col = 0;
                    continue;
                }
                self.flush_ws(true, out);
                self.hex(b'\r', out);
            }
            match b {
                b'\r' => self.cr = true,
                b' ' | b'\t' => {
                    self.flush_ws(true, out);
                    self.ws = Some(b);
                }
                33..=60 | 62..=126 => {
                    self.flush_ws(true, out);
                    self.token(&[b], out);
                }
                _ => {
                    self.flush_ws(true, out);
                    self.hex(b, out);
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr {
            self.cr = false;
            self.flush_ws(true, out);
            self.hex(b'\r', out);
        }
        self.flush_ws(false, out);
    }
}

/// Writes a header section with every line over `LINE_MAX` folded at its last space
/// or tab within the limit; a line without one is left to the dot-stuffer.
fn fold_header(header: &[u8], out: &mut Vec<u8>) {
    for line in header.split_inclusive(|&b| b == b'\n') {
        let mut rest = line;
        loop {
            let text_len = rest.len()
                - rest
                    .iter()
                    .rev()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
            if text_len <= LINE_MAX {
                break;
            }
            let Some(at) = rest[1..=LINE_MAX]
                .iter()
                .rposition(|&b| b == b' ' || b == b'\t')
                .map(|p| p + 1)
            else {
                break;
            };
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[at..];
        }
        out.extend_from_slice(rest);
    }
}

/// The second pass: the content as it is sent.
pub struct Encoder {
    walker: Walker,
    plan: Plan,
    /// The part being re-encoded, and its encoder.
    qp: Option<(usize, Qp)>,
}

impl Encoder {
    pub fn new(plan: Plan) -> Self {
        Self {
            walker: Walker::new(),
            plan,
            qp: None,
        }
    }

    /// Appends the encoded form of `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Self { walker, plan, qp } = self;
        walker.feed(input, &mut |e| Self::event(plan, qp, e, out));
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let Self { walker, plan, qp } = self;
        walker.finish(&mut |e| Self::event(plan, qp, e, out));
        if let Some((_, q)) = self.qp.as_mut() {
            q.finish(out);
        }
        self.qp = None;
    }

    fn event(plan: &Plan, qp: &mut Option<(usize, Qp)>, e: Event<'_>, out: &mut Vec<u8>) {
        match e {
            Event::Header { part, bytes, blank } => {
                if !plan.encodes(part) {
                    fold_header(bytes, out);
                    return;
                }
                let p = &plan.parts[part];
                // The section without its empty line and its transfer encoding.
                let body_end = if blank {
                    bytes.len() - if bytes.ends_with(b"\r\n") { 2 } else { 1 }
                } else {
                    bytes.len()
                };
                let mut skip = false;
                let mut kept = Vec::with_capacity(body_end);
                for line in bytes[..body_end].split_inclusive(|&b| b == b'\n') {
                    if !matches!(line.first(), Some(b' ' | b'\t')) {
                        skip = field_name(line)
                            .is_some_and(|n| n.eq_ignore_ascii_case(b"content-transfer-encoding"));
                    }
                    if !skip {
                        kept.extend_from_slice(line);
                    }
                }
                if !kept.is_empty() && !kept.ends_with(b"\n") {
                    kept.extend_from_slice(b"\r\n");
                }
                fold_header(&kept, out);
                if part == 0 && !p.has_mime_version {
                    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
                }
                if part == 0 && !p.has_content_type {
                    let charset = if p.bad_utf8 {
                        "unknown-8bit"
                    } else if p.eight_bit {
                        "utf-8"
                    } else {
                        "us-ascii"
                    };
                    out.extend_from_slice(
                        format!("Content-Type: text/plain; charset={charset}\r\n").as_bytes(),
                    );
                }
                out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
                *qp = Some((part, Qp::default()));
            }
            Event::Body { part, bytes } => match qp {
                Some((p, q)) if *p == part => q.feed(bytes, out),
                _ => out.extend_from_slice(bytes),
            },
            Event::Boundary(line) => {
                if let Some((_, q)) = qp.as_mut() {
                    q.finish(out);
                }
                *qp = None;
                out.extend_from_slice(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(content: &[u8], chunk: usize) -> Vec<u8> {
        let mut planner = Planner::new();
        for c in content.chunks(chunk.max(1)) {
            planner.feed(c);
        }
        let mut enc = Encoder::new(planner.finish());
        let mut out = Vec::new();
        for c in content.chunks(chunk.max(1)) {
            enc.feed(c, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    /// A reference decoder for the tests (RFC 2045 §6.7).
    fn qp_decode(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'=' if text[i + 1..].starts_with(b"\r\n") => i += 3,
                b'=' => {
                    let h = std::str::from_utf8(&text[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(h, 16).unwrap());
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn longest_line(s: &[u8]) -> usize {
        s.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
            .max()
            .unwrap_or(0)
    }

    fn split_at_blank(s: &[u8]) -> (&[u8], &[u8]) {
        let at = s.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (&s[..at], &s[at..])
    }

    #[test]
    fn qp_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"abc\r\n", b"abc\r\n"),
            (b"a=b\r\n", b"a=3Db\r\n"),
            (b"trailing \r\nx\t\r\n", b"trailing=20\r\nx=09\r\n"),
            (b"a b\r\n", b"a b\r\n"),
            (b"end ", b"end=20"),
            ("caf\u{e9}\r\n".as_bytes(), b"caf=C3=A9\r\n"),
            (b"\x00\x7f", b"=00=7F"),
            (b"lone\rcr\r\n", b"lone=0Dcr\r\n"),
        ];
        for &(input, want) in cases {
            for chunk in [1, 2, input.len()] {
                let mut q = Qp::default();
                let mut out = Vec::new();
                for c in input.chunks(chunk) {
                    q.feed(c, &mut out);
                }
                q.finish(&mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(want),
                    "{input:?} chunk {chunk}"
                );
            }
        }
        // Soft breaks keep lines at 76 characters; decoding gives the text back.
        let long: Vec<u8> = (0..3000u32)
            .map(|i| b"ab= \xe9."[(i % 6) as usize])
            .collect();
        let mut q = Qp::default();
        let mut out = Vec::new();
        q.feed(&long, &mut out);
        q.finish(&mut out);
        assert!(longest_line(&out) <= QP_LINE, "{}", longest_line(&out));
        assert_eq!(qp_decode(&out), long);
    }

    #[test]
    fn plain_message_becomes_quoted_printable_text() {
        let body = format!("{}\r\nshort\r\n", "y".repeat(1500));
        let msg = format!("Subject: long\r\nFrom: cron@box\r\n\r\n{body}");
        for chunk in [1, 7, 100, msg.len()] {
            let out = encode(msg.as_bytes(), chunk);
            let (head, enc) = split_at_blank(&out);
            assert_eq!(
                String::from_utf8_lossy(head),
                "Subject: long\r\nFrom: cron@box\r\nMIME-Version: 1.0\r\n\
                 Content-Type: text/plain; charset=us-ascii\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n\r\n",
                "chunk {chunk}"
            );
            assert!(longest_line(enc) <= QP_LINE);
            assert_eq!(qp_decode(enc), body.as_bytes(), "chunk {chunk}");
        }
        // UTF-8 and other 8-bit text get their charset.
        let utf8 = format!("S: x\r\n\r\n{}\u{e9}\r\n", "a".repeat(1000));
        assert!(
            String::from_utf8_lossy(&encode(utf8.as_bytes(), 50)).contains("charset=utf-8\r\n")
        );
        let mut latin = b"S: x\r\n\r\n".to_vec();
        latin.extend(std::iter::repeat_n(b'a', 1000));
        latin.extend_from_slice(b"\xe9\r\n");
        assert!(String::from_utf8_lossy(&encode(&latin, 50)).contains("charset=unknown-8bit\r\n"));
    }

    #[test]
    fn mime_single_part_keeps_its_type_and_changes_its_encoding() {
        let body = format!("<p>{}</p>\r\n", "z".repeat(2000));
        let msg = format!(
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\nSubject: cam\r\n\r\n{body}"
        );
        let out = encode(msg.as_bytes(), 13);
        let (head, enc) = split_at_blank(&out);
        assert_eq!(
            String::from_utf8_lossy(head),
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\nSubject: cam\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        );
        assert_eq!(qp_decode(enc), body.as_bytes());
    }

    #[test]
    fn multipart_reencodes_only_the_part_with_a_long_line() {
        let long = format!("{}\r\n", "q".repeat(1200));
        let msg = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
             preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nshort text\r\n\
             --b1\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{long}\
             --b1\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n\
             --b1--\r\nepilogue\r\n"
        );
        for chunk in [1, 5, 64, msg.len()] {
            let out = encode(msg.as_bytes(), chunk);
            let text = String::from_utf8_lossy(&out).into_owned();
            let want_head = "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
                             preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nshort text\r\n\
                             --b1\r\nContent-Type: text/html\r\n\
                             Content-Transfer-Encoding: quoted-printable\r\n\r\n";
            assert!(text.starts_with(want_head), "chunk {chunk}: {text}");
            let tail = "--b1\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n\
                        --b1--\r\nepilogue\r\n";
            assert!(text.ends_with(tail), "chunk {chunk}");
            let encoded = &out[want_head.len()..out.len() - tail.len()];
            assert_eq!(qp_decode(encoded), long.as_bytes());
            assert!(longest_line(&out) <= LINE_MAX);
        }
    }

    #[test]
    fn nested_multipart_and_what_is_not_reencoded() {
        let long = "w".repeat(1100);
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=outer\r\n\r\n\
             --outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n\
             --inner\r\nContent-Type: text/plain\r\n\r\n{long}\r\n--inner--\r\n\
             --outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{long}\r\n\
             --outer--\r\n"
        );
        let out = String::from_utf8(encode(msg.as_bytes(), 9)).unwrap();
        // The text part inside the inner multipart is re-encoded ...
        assert!(out.contains(
            "--inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        ));
        // ... the base64 part is left to the stuffer's folding, unchanged here.
        assert!(out.contains(&format!(
            "Content-Transfer-Encoding: base64\r\n\r\n{long}\r\n--outer--"
        )));
        // The top level is a multipart: no MIME-Version or Content-Type is added to it.
        assert!(
            out.starts_with("Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n")
        );
    }

    #[test]
    fn long_header_lines_are_folded_at_whitespace() {
        let words: Vec<String> = (0..300).map(|i| format!("word{i}")).collect();
        let subject = format!("Subject: {}\r\n", words.join(" "));
        let msg = format!("{subject}\r\nbody\r\n");
        let out = encode(msg.as_bytes(), 100);
        assert!(longest_line(&out) <= LINE_MAX);
        let (head, body) = split_at_blank(&out);
        assert_eq!(body, b"body\r\n");
        // Unfolding (RFC 5322 §2.2.3: remove the CRLFs) gives the field back.
        let head = String::from_utf8_lossy(head).replace("\r\n ", " ");
        assert_eq!(head, format!("{subject}\r\n"));
    }

    #[test]
    fn short_lines_pass_unchanged_and_the_split_does_not_matter() {
        let msg = b"Subject: x\r\nContent-Type: text/plain\r\n\r\na\r\n.b\r\n\r\nno end";
        assert_eq!(encode(msg, 3), msg);
        // Whatever the content, the output has no line over 998 octets except where
        // nothing may change (the stuffer folds those), and does not depend on chunks.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..200 {
            let len = 200 + (seed % 4000) as usize;
            let content: Vec<u8> = (0..len)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if (seed >> 20).is_multiple_of(997) {
                        b'\n'
                    } else {
                        let alphabet = b"ab \t=:-\xc3\xa9\r";
                        alphabet[(seed as usize + i) % alphabet.len()]
                    }
                })
                .collect();
            let a = encode(&content, 1 + round % 17);
            let b = encode(&content, content.len());
            assert_eq!(a, b, "round {round}");
        }
    }
}
