//! The path grammar of RFC 5321 §4.1.2 (with the SMTPUTF8 extension of RFC 6531 §3.3).
//!
//! ```text
//! Reverse-path = Path / "<>"          Forward-path = Path
//! Path      = "<" [ A-d-l ":" ] Mailbox ">"      ; the source route is accepted and dropped
//! Mailbox   = Local-part "@" ( Domain / address-literal )
//! Local-part = Dot-string / Quoted-string
//! ```
//! A parsed mailbox is kept, as written, in a fixed-size buffer: no allocation.

use super::limits;

/// A mailbox (`local@domain`), or the empty null sender, without angle brackets.
pub type Mailbox = heapless::Vec<u8, { limits::MAILBOX }>;

/// Why a path did not parse. Each maps to one reply in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not the grammar.
    Syntax,
    /// Longer than a limit of §4.5.3.1.
    TooLong,
    /// Non-ASCII octets without SMTPUTF8 on MAIL.
    NeedsUtf8,
}

/// What a path may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// MAIL FROM: the null path `<>` is allowed.
    Reverse,
    /// RCPT TO: `<Postmaster>` without a domain is allowed (§4.1.1.3).
    Forward,
}

/// Parses a path at the start of `s` and returns the mailbox and the rest of `s`.
///
/// Angle brackets are required by the RFC; like Postfix (strict_rfc821_envelopes=no)
/// a bare address is also taken, since devices in the field send it. `utf8` permits
/// non-ASCII octets (RFC 6531).
pub fn parse_path(s: &[u8], kind: PathKind, utf8: bool) -> Result<(Mailbox, &[u8]), PathError> {
    let (inner, rest) = if let Some(body) = s.strip_prefix(b"<") {
        let end = body
            .iter()
            .position(|&b| b == b'>')
            .ok_or(PathError::Syntax)?;
        // A '>' inside a quoted local part would end the path early; such paths are
        // then rejected below as unterminated quotes, which is the safe side.
        (&body[..end], &body[end + 1..])
    } else {
        let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
        if end == 0 {
            return Err(PathError::Syntax);
        }
        (&s[..end], &s[end..])
    };
    if inner.len() > limits::MAILBOX {
        return Err(PathError::TooLong);
    }
    if inner.is_empty() {
        return match kind {
            PathKind::Reverse if s.starts_with(b"<") => Ok((Mailbox::new(), rest)),
            _ => Err(PathError::Syntax),
        };
    }
    let mailbox = strip_source_route(inner)?;
    // A bare local part (`<root>`, `<Postmaster>` of §4.1.1.3) is taken, as Postfix
    // does; the session qualifies it with `qualify_domain`.
    check_mailbox_or_local(mailbox, utf8)?;
    // Non-ASCII octets must at least be UTF-8 (RFC 6531 §3.3).
    if core::str::from_utf8(mailbox).is_err() {
        return Err(PathError::Syntax);
    }
    Ok((
        Mailbox::from_slice(mailbox).map_err(|_| PathError::TooLong)?,
        rest,
    ))
}

/// `A-d-l ":"` is obsolete but must be accepted; its route is ignored (§4.1.2, §C).
fn strip_source_route(s: &[u8]) -> Result<&[u8], PathError> {
    if !s.starts_with(b"@") {
        return Ok(s);
    }
    let colon = s.iter().position(|&b| b == b':').ok_or(PathError::Syntax)?;
    for hop in s[..colon].split(|&b| b == b',') {
        let domain = hop.strip_prefix(b"@").ok_or(PathError::Syntax)?;
        check_domain(domain, false)?;
    }
    Ok(&s[colon + 1..])
}

/// Checks `Local-part "@" ( Domain / address-literal )`.
pub fn check_mailbox(s: &[u8], utf8: bool) -> Result<(), PathError> {
    let local_end = local_part_len(s, utf8)?;
    if local_end > limits::LOCAL_PART {
        return Err(PathError::TooLong);
    }
    let domain = match s.get(local_end) {
        Some(b'@') => &s[local_end + 1..],
        _ => return Err(PathError::Syntax),
    };
    if domain.starts_with(b"[") {
        check_address_literal(domain)
    } else {
        check_domain(domain, utf8)
    }
}

/// A mailbox, or a local part alone (an unqualified name such as `root`).
pub fn check_mailbox_or_local(s: &[u8], utf8: bool) -> Result<(), PathError> {
    let local_end = local_part_len(s, utf8)?;
    if local_end > limits::LOCAL_PART {
        return Err(PathError::TooLong);
    }
    if local_end == s.len() {
        return Ok(());
    }
    check_mailbox(s, utf8)
}

/// RFC 5322 atext, the octets of an atom.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// The length of the local part at the start of `s` (a Dot-string or a Quoted-string).
fn local_part_len(s: &[u8], utf8: bool) -> Result<usize, PathError> {
    let non_ascii = |b: u8| {
        if b >= 0x80 {
            if utf8 {
                Ok(true)
            } else {
                Err(PathError::NeedsUtf8)
            }
        } else {
            Ok(false)
        }
    };
    if s.first() == Some(&b'"') {
        let mut i = 1;
        while i < s.len() {
            match s[i] {
                b'"' => return Ok(i + 1),
                // quoted-pairSMTP = %d92 %d32-126
                b'\\' => match s.get(i + 1) {
                    Some(&c) if (32..=126).contains(&c) => i += 2,
                    _ => return Err(PathError::Syntax),
                },
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126
                c if (32..=126).contains(&c) => i += 1,
                c if non_ascii(c)? => i += 1,
                _ => return Err(PathError::Syntax),
            }
        }
        return Err(PathError::Syntax);
    }
    // Dot-string = Atom *("." Atom): no empty atom, so no leading, trailing or double dot.
    let mut i = 0;
    let mut atom_len = 0;
    while i < s.len() && s[i] != b'@' {
        let c = s[i];
        if c == b'.' {
            if atom_len == 0 {
                return Err(PathError::Syntax);
            }
            atom_len = 0;
        } else if is_atext(c) || non_ascii(c)? {
            atom_len += 1;
        } else {
            return Err(PathError::Syntax);
        }
        i += 1;
    }
    if atom_len == 0 {
        return Err(PathError::Syntax);
    }
    Ok(i)
}

/// `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`.
/// With `utf8`, U-labels (non-ASCII octets) are allowed as in RFC 6531.
pub fn check_domain(s: &[u8], utf8: bool) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Syntax);
    }
    if s.len() > limits::DOMAIN {
        return Err(PathError::TooLong);
    }
    for label in s.split(|&b| b == b'.') {
        let (Some(&first), Some(&last)) = (label.first(), label.last()) else {
            return Err(PathError::Syntax);
        };
        let letdig = |b: u8| b.is_ascii_alphanumeric() || (utf8 && b >= 0x80);
        if !letdig(first) || !letdig(last) {
            return Err(if first >= 0x80 || last >= 0x80 {
                PathError::NeedsUtf8
            } else {
                PathError::Syntax
            });
        }
        for &b in label {
            if b >= 0x80 && !utf8 {
                return Err(PathError::NeedsUtf8);
            }
            if !(letdig(b) || b == b'-') {
                return Err(PathError::Syntax);
            }
        }
    }
    Ok(())
}

/// `address-literal = "[" ( IPv4 / "IPv6:" IPv6 / Standardized-tag ":" 1*dcontent ) "]"`.
fn check_address_literal(s: &[u8]) -> Result<(), PathError> {
    let inner = s
        .strip_prefix(b"[")
        .and_then(|s| s.strip_suffix(b"]"))
        .ok_or(PathError::Syntax)?;
    let text = core::str::from_utf8(inner).map_err(|_| PathError::Syntax)?;
    if text.parse::<core::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if let Some(v6) = text
        .strip_prefix("IPv6:")
        .or_else(|| text.strip_prefix("ipv6:"))
    {
        return v6
            .parse::<core::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| PathError::Syntax);
    }
    // General-address-literal: Standardized-tag ":" 1*dcontent, dcontent = %d33-90 / %d94-126.
    let (tag, content) = text.split_once(':').ok_or(PathError::Syntax)?;
    let tag_ok = !tag.is_empty()
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tag.ends_with('-');
    let content_ok = !content.is_empty()
        && content
            .bytes()
            .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b));
    if tag_ok && content_ok {
        Ok(())
    } else {
        Err(PathError::Syntax)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathError::*;
    use PathKind::*;

    #[test]
    fn path_table() {
        let long_local = [b'a'; 65];
        let mut too_long_local = long_local.to_vec();
        too_long_local.extend_from_slice(b"@x.org");
        type Case<'a> = (
            Vec<u8>,
            PathKind,
            bool,
            Result<(&'a [u8], &'a [u8]), PathError>,
        );
        let mut cases: Vec<Case> = vec![
            (b"<a@b.c>".to_vec(), Reverse, false, Ok((b"a@b.c", b""))),
            (
                b"<a@b.c> SIZE=1".to_vec(),
                Reverse,
                false,
                Ok((b"a@b.c", b" SIZE=1")),
            ),
            (b"<>".to_vec(), Reverse, false, Ok((b"", b""))),
            (b"<>".to_vec(), Forward, false, Err(Syntax)),
            (
                b"<Postmaster>".to_vec(),
                Forward,
                false,
                Ok((b"Postmaster", b"")),
            ),
            // Bare names are taken in both directions; the session qualifies them.
            (b"<root>".to_vec(), Reverse, false, Ok((b"root", b""))),
            (b"<a.b>".to_vec(), Forward, false, Ok((b"a.b", b""))),
            (b"<a..b>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a b>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a@>".to_vec(), Forward, false, Err(Syntax)),
            (
                b"<first.last+tag@sub.example.com>".to_vec(),
                Forward,
                false,
                Ok((b"first.last+tag@sub.example.com", b"")),
            ),
            (
                b"<\"john doe\"@example.com>".to_vec(),
                Forward,
                false,
                Ok((b"\"john doe\"@example.com", b"")),
            ),
            (
                b"<\"a\\\"b\"@example.com>".to_vec(),
                Forward,
                false,
                Ok((b"\"a\\\"b\"@example.com", b"")),
            ),
            (
                b"<\"unterminated@example.com>".to_vec(),
                Forward,
                false,
                Err(Syntax),
            ),
            (
                b"<@relay1.org,@relay2.org:user@example.com>".to_vec(),
                Forward,
                false,
                Ok((b"user@example.com", b"")),
            ),
            (
                b"<@bad_route:user@example.com>".to_vec(),
                Forward,
                false,
                Err(Syntax),
            ),
            (
                b"<user@[192.0.2.1]>".to_vec(),
                Forward,
                false,
                Ok((b"user@[192.0.2.1]", b"")),
            ),
            (
                b"<user@[IPv6:2001:db8::1]>".to_vec(),
                Forward,
                false,
                Ok((b"user@[IPv6:2001:db8::1]", b"")),
            ),
            (
                b"<user@[IPv6:nonsense]>".to_vec(),
                Forward,
                false,
                Err(Syntax),
            ),
            (b"<user@[300.1.1.1]>".to_vec(), Forward, false, Err(Syntax)),
            (
                b"<user@[x-tag:stuff]>".to_vec(),
                Forward,
                false,
                Ok((b"user@[x-tag:stuff]", b"")),
            ),
            (b"<.a@b.c>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a.@b.c>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a..b@b.c>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a@b..c>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a@-b.c>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a@b.c.>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a@b_c.d>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a@>".to_vec(), Forward, false, Err(Syntax)),
            (b"<@b.c>".to_vec(), Forward, false, Err(Syntax)),
            (b"<ab.c>".to_vec(), Forward, false, Ok((b"ab.c", b""))),
            (b"<a b@c.d>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a@b.c".to_vec(), Forward, false, Err(Syntax)),
            (b"<a\x00@b.c>".to_vec(), Forward, false, Err(Syntax)),
            (b"<a\r@b.c>".to_vec(), Forward, false, Err(Syntax)),
            (b"a@b.c".to_vec(), Forward, false, Ok((b"a@b.c", b""))),
            (
                b"a@b.c SIZE=5".to_vec(),
                Reverse,
                false,
                Ok((b"a@b.c", b" SIZE=5")),
            ),
            (
                "<jos\u{e9}@ex.org>".as_bytes().to_vec(),
                Forward,
                false,
                Err(NeedsUtf8),
            ),
            (
                "<jos\u{e9}@ex.org>".as_bytes().to_vec(),
                Forward,
                true,
                Ok(("jos\u{e9}@ex.org".as_bytes(), b"")),
            ),
            (
                "<a@b\u{fc}cher.de>".as_bytes().to_vec(),
                Forward,
                true,
                Ok(("a@b\u{fc}cher.de".as_bytes(), b"")),
            ),
            (b"<a\xff@b.c>".to_vec(), Forward, true, Err(Syntax)),
        ];
        let mut p = b"<".to_vec();
        p.extend_from_slice(&too_long_local);
        p.push(b'>');
        cases.push((p, Forward, false, Err(TooLong)));
        let mut p = b"<a@".to_vec();
        p.extend(std::iter::repeat_n(b'x', 300));
        p.push(b'>');
        cases.push((p, Forward, false, Err(TooLong)));

        for (input, kind, utf8, want) in cases {
            let got = parse_path(&input, kind, utf8);
            let got = got
                .as_ref()
                .map(|(m, rest)| (&m[..], *rest))
                .map_err(|e| *e);
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(&input));
        }
    }
}
