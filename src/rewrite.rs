//! `rewrite_from`: the address in the `From:` header is replaced when a message is
//! sent upstream, as providers demand that it be the account's own. The display name
//! stays, and the original From goes to `Reply-To:` when the message has none, so
//! replies still reach the device's owner.
//!
//! It works on the header section of the spooled content (CRLF lines) and never on
//! the body. The spool keeps the message as received: a changed `rewrite_from`
//! applies to mail already queued.

/// The longest header section the relay reads to rewrite; a message with a longer
/// one is sent unchanged.
pub const HEADER_CAP: usize = 64 * 1024;

/// RFC 5322 §2.1.1: a line is at most 998 octets plus CRLF.
const LINE_MAX: usize = 998;

use crate::header::field_name;
pub use crate::header::header_len;

/// Rewrites the header section `header` (as `header_len` measured it) so that From
/// names `new`. Returns `None` when nothing changes (From already is `new`).
pub fn rewrite_from(header: &[u8], new: &str) -> Option<Vec<u8>> {
    // The fields, as (start, end) with end after the field's last line break.
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < header.len() {
        let end = header[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |i| pos + i + 1);
        if pos > 0 && matches!(header[pos], b' ' | b'\t') {
            if let Some(last) = fields.last_mut() {
                last.1 = end;
            }
        } else {
            fields.push((pos, end));
        }
        pos = end;
    }
    let named = |(s, e): &(usize, usize), want: &str| {
        field_name(&header[*s..*e]).is_some_and(|n| n.eq_ignore_ascii_case(want.as_bytes()))
    };
    let has_reply_to = fields.iter().any(|f| named(f, "reply-to"));
    let mut out = Vec::with_capacity(header.len() + new.len() + 64);
    let Some(&(start, end)) = fields.iter().find(|f| named(f, "from")) else {
        // No From at all: add one, the address alone.
        out.extend_from_slice(header);
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("From: {new}\r\n").as_bytes());
        return Some(out);
    };
    let field = &header[start..end];
    let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
    let raw_value = &field[colon + 1..];
    // Unfolded: the line breaks of the folds go, their whitespace stays.
    let unfolded: Vec<u8> = raw_value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let value = unfolded.trim_ascii();
    let (display, address) = split_mailbox(value);
    if address.eq_ignore_ascii_case(new.as_bytes()) {
        return None;
    }
    let mut from = Vec::with_capacity(LINE_MAX);
    from.extend_from_slice(b"From: ");
    match display {
        Display::Phrase(p) if !p.is_empty() => {
            from.extend_from_slice(p);
            from.extend_from_slice(format!(" <{new}>").as_bytes());
        }
        // A comment with its own brackets, quotes or angles is not carried over:
        // it would change how the new From parses.
        Display::Comment(c) if !c.is_empty() && !c.iter().any(|b| b"()<>\"\\".contains(b)) => {
            from.extend_from_slice(new.as_bytes());
            from.extend_from_slice(b" (");
            from.extend_from_slice(c);
            from.push(b')');
        }
        _ => from.extend_from_slice(new.as_bytes()),
    }
    if from.len() > LINE_MAX {
        from.truncate(6);
        from.extend_from_slice(new.as_bytes());
    }
    from.extend_from_slice(b"\r\n");
    out.extend_from_slice(&header[..start]);
    out.extend_from_slice(&from);
    let first_line = raw_value
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(raw_value.len());
    if !has_reply_to && !value.is_empty() && b"Reply-To:".len() + first_line <= LINE_MAX {
        // The original value with its folding, so no line grows.
        out.extend_from_slice(b"Reply-To:");
        out.extend_from_slice(raw_value);
        if !raw_value.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(&header[end..]);
    Some(out)
}

enum Display<'a> {
    None,
    /// `Name <addr>`: the phrase as written (quoted or encoded words included).
    Phrase(&'a [u8]),
    /// `addr (Name)`: the comment's text.
    Comment(&'a [u8]),
}

/// Splits a From value into its display name and address (the first mailbox of a
/// list; the address is what matters for comparing).
fn split_mailbox(value: &[u8]) -> (Display<'_>, &[u8]) {
    // The last '<' outside a quoted string opens the angle address.
    let mut quoted = false;
    let mut escaped = false;
    let mut lt = None;
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            b'<' if !quoted => {
                lt = Some(i);
                break;
            }
            _ => {}
        }
    }
    if let Some(lt) = lt
        && let Some(gt) = value[lt..].iter().position(|&b| b == b'>')
    {
        return (
            Display::Phrase(value[..lt].trim_ascii()),
            value[lt + 1..lt + gt].trim_ascii(),
        );
    }
    if let Some(open) = value.iter().position(|&b| b == b'(')
        && let Some(close) = value.iter().rposition(|&b| b == b')')
        && close > open
    {
        return (
            Display::Comment(value[open + 1..close].trim_ascii()),
            value[..open].trim_ascii(),
        );
    }
    (Display::None, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(header: &str) -> Option<String> {
        rewrite_from(header.as_bytes(), "relay@example.net").map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn from_table() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "Received: x\r\nFrom: Camera 1 <cam1@lan>\r\nTo: a@b.c\r\n",
                Some(
                    "Received: x\r\nFrom: Camera 1 <relay@example.net>\r\nReply-To: Camera 1 <cam1@lan>\r\nTo: a@b.c\r\n",
                ),
            ),
            (
                "From: \"Door <front>\" <door@lan>\r\n",
                Some(
                    "From: \"Door <front>\" <relay@example.net>\r\nReply-To: \"Door <front>\" <door@lan>\r\n",
                ),
            ),
            (
                "from:   root@box.lan (Cron Daemon)\r\nSubject: x\r\n",
                Some(
                    "From: relay@example.net (Cron Daemon)\r\nReply-To:   root@box.lan (Cron Daemon)\r\nSubject: x\r\n",
                ),
            ),
            (
                "From: root@box.lan\r\nReply-To: ops@example.org\r\n",
                Some("From: relay@example.net\r\nReply-To: ops@example.org\r\n"),
            ),
            (
                "From: <root@box.lan>\r\n",
                Some("From: relay@example.net\r\nReply-To: <root@box.lan>\r\n"),
            ),
            // Folded: unfolded for the new From, kept folded in Reply-To.
            (
                "From: A Very Long\r\n Name <a@lan>\r\nX: y\r\n",
                Some(
                    "From: A Very Long Name <relay@example.net>\r\nReply-To: A Very Long\r\n Name <a@lan>\r\nX: y\r\n",
                ),
            ),
            // Already right: unchanged.
            ("From: Relay <RELAY@example.net>\r\n", None),
            // No From at all: one is added.
            (
                "Subject: hi\r\n",
                Some("Subject: hi\r\nFrom: relay@example.net\r\n"),
            ),
            ("", Some("From: relay@example.net\r\n")),
            // Only the first From is rewritten; a Sender field is left alone.
            (
                "Sender: s@lan\r\nFrom: a@lan\r\nFrom: b@lan\r\n",
                Some(
                    "Sender: s@lan\r\nFrom: relay@example.net\r\nReply-To: a@lan\r\nFrom: b@lan\r\n",
                ),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(rw(input).as_deref(), *want, "{input:?}");
        }
    }

    /// Found by the fuzz target: an unbalanced quote and a comment holding an angle
    /// address made the rewritten From parse differently the second time.
    #[test]
    fn rewriting_twice_changes_nothing() {
        let input = b"From: \"a()1 From(+ NName\rome\r\n  <a@b>\n <\0\x10n)\x0f@`b.\r\n";
        let once = rewrite_from(input, "relay@example.net").unwrap();
        assert_eq!(rewrite_from(&once, "relay@example.net"), None);
        assert!(once.starts_with(b"From: relay@example.net\r\n"));
    }

    #[test]
    fn header_section_length() {
        let m = b"Received: a\r\n\tb\r\nFrom: x\r\n\r\nbody\r\nFrom: not a header\r\n";
        assert_eq!(header_len(m, true), Some(26));
        assert_eq!(header_len(m, false), Some(26));
        // A line that is not a field ends the header (no empty line needed).
        assert_eq!(header_len(b"A: b\r\nno colon here\r\n", true), Some(6));
        assert_eq!(header_len(b" leading space\r\n", true), Some(0));
        // Cut inside the header: unknown until more arrives.
        assert_eq!(header_len(b"A: b\r\nB: c", false), None);
        assert_eq!(header_len(b"A: b\r\nB: c", true), Some(10));
        assert_eq!(header_len(b"A: b\r\n", false), None);
        assert_eq!(header_len(b"", true), Some(0));
    }

    #[test]
    fn long_display_name_is_dropped_not_overlong() {
        let long = format!("From: {} <a@lan>\r\n", "N".repeat(1000));
        let out = rw(&long).unwrap();
        let first = out.lines().next().unwrap();
        assert_eq!(first, "From: relay@example.net");
        // The original line does not fit in Reply-To: no Reply-To then.
        assert_eq!(out, "From: relay@example.net\r\n");
    }
}
