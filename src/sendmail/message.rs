//! Turns a message as a script writes it (LF or CRLF lines, headers that may be
//! missing) into the message the relay stores: CRLF lines, Bcc removed, and the
//! Date, Message-ID and From headers a submission agent adds (RFC 6409 §8).

use crate::header::field_name;
use crate::protocol::{address, policy};

/// Why a message or an address is refused (exit 65, EX_DATAERR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError(pub String);

/// What the caller knows about the submission.
pub struct Context<'a> {
    /// The domain bare names get (`qualify_domain`).
    pub hostname: &'a str,
    /// The envelope sender (already chosen and qualified).
    pub sender: &'a str,
    pub full_name: Option<&'a str>,
    /// RFC 5322 date, for a missing Date header.
    pub date: &'a str,
    /// For a missing Message-ID header: `<ID@hostname>`.
    pub message_id: &'a str,
    pub extract_recipients: bool,
    pub ignore_dots: bool,
    /// `add_missing_headers`: add Date and Message-ID where they are missing.
    pub add_missing: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The stored message: CRLF lines, ending with CRLF.
    pub content: Vec<u8>,
    /// Recipients from To/Cc/Bcc with `-t` (qualified, validated).
    pub header_recipients: Vec<String>,
    pub eight_bit: bool,
}

/// Splits stdin into lines without their line ends; a lone `.` ends the message
/// unless `ignore_dots`.
fn lines(input: &[u8], ignore_dots: bool) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !ignore_dots && line == b"." {
            break;
        }
        // A bare CR inside a line ends a line too (as the SMTP side's normalize),
        // so the spooled content has CRLF line ends only.
        out.extend(line.split(|&b| b == b'\r'));
        rest = next;
    }
    out
}

/// Splits an address list (To, Cc, Bcc, or a command-line argument) into addresses:
/// commas outside quotes, angle brackets and comments separate; `Name <addr>` gives
/// `addr`; comments and group names are dropped.
pub fn address_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let (mut current, mut quoted, mut angle, mut comment) = (String::new(), false, false, 0u32);
    for c in value.chars() {
        match c {
            '"' if comment == 0 => {
                quoted = !quoted;
                current.push(c);
            }
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '<' if !quoted => {
                angle = true;
                current.push(c);
            }
            '>' if !quoted => {
                angle = false;
                current.push(c);
            }
            // A group (`undisclosed-recipients:;`): its name is not an address.
            ':' if !quoted && !angle && !current.contains('@') => current.clear(),
            ',' | ';' if !quoted && !angle => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items.push(current);
    items
        .into_iter()
        .filter_map(|item| {
            let item = item.trim();
            let addr = match (item.find('<'), item.rfind('>')) {
                (Some(a), Some(b)) if a < b => item[a + 1..b].trim(),
                _ => item,
            };
            (!addr.is_empty()).then(|| addr.to_string())
        })
        .collect()
}

/// Qualifies a bare local name (`root`) with the host name, as the SMTP session
/// does, and checks the grammar.
pub fn qualify(addr: &str, hostname: &str) -> Result<String, DataError> {
    let full = policy::qualify(addr.as_bytes(), hostname)
        .map_err(|_| DataError(format!("address too long: '{addr}'")))?;
    address::check_mailbox(&full, true).map_err(|_| DataError(format!("bad address '{addr}'")))?;
    Ok(String::from_utf8_lossy(&full).into_owned())
}

pub fn prepare(input: &[u8], ctx: &Context<'_>) -> Result<Prepared, DataError> {
    let lines = lines(input, ctx.ignore_dots);
    // The header section: header fields and their continuation lines up to the first
    // empty line. A message that does not start with a header field has none.
    let mut header_end = 0;
    for (k, line) in lines.iter().enumerate() {
        let continuation = k > 0 && matches!(line.first(), Some(b' ' | b'\t'));
        if line.is_empty() || !(continuation || field_name(line).is_some()) {
            break;
        }
        header_end = k + 1;
    }
    // Group each field with its continuation lines.
    let mut fields: Vec<(String, Vec<&[u8]>)> = Vec::new();
    for line in &lines[..header_end] {
        match field_name(line) {
            Some(name) if !matches!(line.first(), Some(b' ' | b'\t')) => fields.push((
                String::from_utf8_lossy(name).to_ascii_lowercase(),
                vec![line],
            )),
            _ => {
                if let Some(last) = fields.last_mut() {
                    last.1.push(line)
                }
            }
        }
    }
    let has = |n: &str| fields.iter().any(|(name, _)| name == n);
    let mut header_recipients = Vec::new();
    if ctx.extract_recipients {
        for (name, field) in &fields {
            if matches!(name.as_str(), "to" | "cc" | "bcc") {
                let joined: Vec<u8> = field.join(&b" "[..]);
                // After the colon (obsolete syntax allows space before it).
                let colon = joined.iter().position(|&b| b == b':').map_or(0, |c| c + 1);
                let value = String::from_utf8_lossy(&joined[colon..]).into_owned();
                for a in address_list(&value) {
                    header_recipients.push(qualify(&a, ctx.hostname)?);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(input.len() + 256);
    let mut push = |line: &[u8]| {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    };
    for (name, field) in &fields {
        if name != "bcc" {
            field.iter().for_each(|l| push(l));
        }
    }
    if !has("from") {
        match ctx.full_name {
            Some(n) => push(
                format!(
                    "From: \"{}\" <{}>",
                    n.replace(['"', '\\', '\r', '\n'], ""),
                    ctx.sender
                )
                .as_bytes(),
            ),
            None => push(format!("From: {}", ctx.sender).as_bytes()),
        }
    }
    if !has("date") && ctx.add_missing {
        push(format!("Date: {}", ctx.date).as_bytes());
    }
    if !has("message-id") && ctx.add_missing {
        push(format!("Message-ID: {}", ctx.message_id).as_bytes());
    }
    push(b"");
    let body_start = if lines.get(header_end).is_some_and(|l| l.is_empty()) {
        header_end + 1
    } else {
        header_end
    };
    for line in &lines[body_start..] {
        push(line);
    }
    let eight_bit = out.iter().any(|&b| b >= 0x80);
    Ok(Prepared {
        content: out,
        header_recipients,
        eight_bit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(extract: bool, ignore_dots: bool) -> Context<'static> {
        Context {
            hostname: "box.lan",
            sender: "root@box.lan",
            full_name: None,
            date: "Mon, 30 Nov 2026 22:00:00 +0000",
            add_missing: true,
            message_id: "<ID@box.lan>",
            extract_recipients: extract,
            ignore_dots,
        }
    }

    #[test]
    fn address_lists() {
        assert_eq!(address_list("a@b.c"), ["a@b.c"]);
        assert_eq!(
            address_list("Ops Team <ops@x.org>, \"Doe, John\" <jd@x.org>"),
            ["ops@x.org", "jd@x.org"]
        );
        assert_eq!(
            address_list("a@x.org (comment, with comma), b@x.org"),
            ["a@x.org", "b@x.org"]
        );
        assert_eq!(
            address_list("undisclosed-recipients:;"),
            Vec::<String>::new()
        );
        assert_eq!(
            address_list("team: a@x.org, b@x.org;"),
            ["a@x.org", "b@x.org"]
        );
        assert_eq!(address_list("root, admin"), ["root", "admin"]);
        assert_eq!(address_list(""), Vec::<String>::new());
    }

    #[test]
    fn qualify_and_check() {
        assert_eq!(qualify("root", "box.lan").unwrap(), "root@box.lan");
        assert_eq!(qualify("a@b.c", "box.lan").unwrap(), "a@b.c");
        assert!(qualify("a b@c.d", "box.lan").is_err());
        assert!(qualify("a@", "box.lan").is_err());
    }

    /// Found by the fuzz target: a CR inside a line reached the spool bare.
    #[test]
    fn bare_cr_inside_a_line_ends_it() {
        let p = prepare(
            b"Subject: y\r\n\r\x0e.\x01\nbody\rmore\n",
            &ctx(false, false),
        )
        .unwrap();
        let c = &p.content;
        assert!(
            c.windows(2).all(|w| w[0] != b'\r' || w[1] == b'\n') && !c.ends_with(b"\r"),
            "{c:?}"
        );
        assert!(c.ends_with(b"\r\nbody\r\nmore\r\n"));
    }

    #[test]
    fn prepare_table() {
        // LF in, CRLF out; -t takes To/Cc/Bcc (folded too); Bcc is removed; the
        // missing headers are added; a lone dot line is kept with -i.
        let input = b"To: a@x.org,\n  b@x.org\nCc: Carol <c@x.org>\nBcc: secret@x.org\nSubject: hi\n\nline\n.\nafter\n";
        let p = prepare(input, &ctx(true, true)).unwrap();
        assert_eq!(
            p.header_recipients,
            ["a@x.org", "b@x.org", "c@x.org", "secret@x.org"]
        );
        assert_eq!(
            String::from_utf8(p.content).unwrap(),
            "To: a@x.org,\r\n  b@x.org\r\nCc: Carol <c@x.org>\r\nSubject: hi\r\nFrom: root@box.lan\r\n\
             Date: Mon, 30 Nov 2026 22:00:00 +0000\r\nMessage-ID: <ID@box.lan>\r\n\r\nline\r\n.\r\nafter\r\n"
        );
        // Without -i, a lone dot ends the message.
        let p = prepare(b"Subject: x\n\nbefore\n.\nafter\n", &ctx(false, false)).unwrap();
        assert!(
            String::from_utf8(p.content)
                .unwrap()
                .ends_with("\r\n\r\nbefore\r\n")
        );
        // Present headers are kept, not doubled; CRLF input stays CRLF.
        let input = b"From: me@x.org\r\nDate: Tue, 1 Dec 2026 00:00:00 +0000\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n";
        let p = prepare(input, &ctx(false, true)).unwrap();
        assert_eq!(p.content, input.to_vec());
        // No header at all: the body is kept whole behind the generated headers.
        let p = prepare(
            b"just a line: with a colon? no, it has spaces first\nsecond\n",
            &ctx(false, true),
        )
        .unwrap();
        let text = String::from_utf8(p.content).unwrap();
        assert!(
            text.ends_with(
                "\r\n\r\njust a line: with a colon? no, it has spaces first\r\nsecond\r\n"
            ),
            "{text}"
        );
        // A full name for the generated From; 8-bit content is flagged.
        let mut c = ctx(false, true);
        c.full_name = Some("Cron \"Daemon\"");
        let p = prepare("Subject: caf\u{e9}\n\nx\n".as_bytes(), &c).unwrap();
        assert!(
            String::from_utf8_lossy(&p.content)
                .contains("From: \"Cron Daemon\" <root@box.lan>\r\n")
        );
        assert!(p.eight_bit);
        // A bad address in a header is a data error.
        assert!(prepare(b"To: not an address\n\nx\n", &ctx(true, true)).is_err());
        // Unqualified names are qualified.
        let p = prepare(b"To: root\n\nx\n", &ctx(true, true)).unwrap();
        assert_eq!(p.header_recipients, ["root@box.lan"]);
        // Obsolete syntax (RFC 5322 §4.5.3): space before the colon, read as the
        // relay's other header readers read it; a `Bcc :` is still removed.
        let p = prepare(
            b"To : a@x.org\nBcc\t: hidden@x.org\nSubject: s\n\nx\n",
            &ctx(true, true),
        )
        .unwrap();
        assert_eq!(p.header_recipients, ["a@x.org", "hidden@x.org"]);
        let text = String::from_utf8(p.content).unwrap();
        assert!(!text.contains("hidden"), "{text}");
        assert!(text.starts_with("To : a@x.org\r\nSubject: s\r\n"), "{text}");
    }
}
