//! The command parser: one line (CRLF already removed) in, one `Command` or one
//! `CommandError` out. It borrows from the line and never allocates.

use super::address::{Mailbox, PathError, PathKind, parse_path};
use super::reply;

/// RFC 6152 body types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// The MAIL command with the parameters this server offers (SIZE, BODY, SMTPUTF8).
#[derive(Debug, PartialEq, Eq)]
pub struct Mail {
    pub sender: Mailbox,
    /// RFC 1870 SIZE=, the client's estimate.
    pub size: Option<u64>,
    pub body: BodyType,
    /// RFC 6531: the transaction may carry UTF-8 addresses and headers.
    pub smtputf8: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// The client's name: the first word of the argument (later words are ignored, §4.1.1.1).
    Ehlo(&'a [u8]),
    Helo(&'a [u8]),
    Mail(Mail),
    Rcpt(Mailbox),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    /// RFC 3207.
    StartTls,
    /// RFC 4954: a mechanism name and, maybe, an initial response.
    Auth {
        mechanism: &'a [u8],
        initial: Option<&'a [u8]>,
    },
    /// A known SMTP verb this server does not offer (STARTTLS, AUTH, BDAT, ETRN, TURN...).
    NotImplemented,
}

/// Why a line is not a command we accept; each variant is exactly one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    Unrecognized,
    BadCharacters,
    HeloSyntax,
    EhloSyntax,
    MailSyntax,
    RcptSyntax,
    BadSender,
    BadRecipient,
    NoArguments,
    Syntax,
    UnknownParameter,
    NeedsSmtputf8,
}

impl CommandError {
    pub fn reply(self) -> &'static str {
        match self {
            Self::Unrecognized => reply::UNRECOGNIZED,
            Self::BadCharacters => reply::BAD_CHARACTERS,
            Self::HeloSyntax => reply::HELO_SYNTAX,
            Self::EhloSyntax => reply::EHLO_SYNTAX,
            Self::MailSyntax => reply::MAIL_SYNTAX,
            Self::RcptSyntax => reply::RCPT_SYNTAX,
            Self::BadSender => reply::BAD_SENDER,
            Self::BadRecipient => reply::BAD_RECIPIENT,
            Self::NoArguments => reply::NO_ARGUMENTS,
            Self::Syntax => reply::SYNTAX,
            Self::UnknownParameter => reply::UNKNOWN_PARAMETER,
            Self::NeedsSmtputf8 => reply::UTF8_WITHOUT_SMTPUTF8,
        }
    }
}

/// Parses one command line. `utf8` says whether the transaction was opened with
/// SMTPUTF8 (it governs RCPT); MAIL decides it for itself from its parameters.
pub fn parse(line: &[u8], utf8: bool) -> Result<Command<'_>, CommandError> {
    // Control characters are never part of a command; 8-bit octets only in paths.
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(CommandError::BadCharacters);
    }
    let (verb, arg) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &line[line.len()..]),
    };
    let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
    let no_arg = |cmd: Command<'static>| {
        if arg.is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::NoArguments)
        }
    };
    if is(b"EHLO") {
        client_name(arg)
            .map(Command::Ehlo)
            .ok_or(CommandError::EhloSyntax)
    } else if is(b"HELO") {
        client_name(arg)
            .map(Command::Helo)
            .ok_or(CommandError::HeloSyntax)
    } else if is(b"MAIL") {
        parse_mail(arg)
    } else if is(b"RCPT") {
        parse_rcpt(arg, utf8)
    } else if is(b"DATA") {
        no_arg(Command::Data)
    } else if is(b"RSET") {
        no_arg(Command::Rset)
    } else if is(b"QUIT") {
        no_arg(Command::Quit)
    } else if is(b"NOOP") {
        Ok(Command::Noop)
    } else if is(b"HELP") {
        Ok(Command::Help)
    } else if is(b"VRFY") {
        if arg.is_empty() {
            Err(CommandError::Syntax)
        } else {
            Ok(Command::Vrfy)
        }
    } else if is(b"EXPN") {
        Ok(Command::Expn)
    } else if is(b"STARTTLS") {
        no_arg(Command::StartTls)
    } else if is(b"AUTH") {
        let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let mechanism = words.next().ok_or(CommandError::Syntax)?;
        let initial = words.next();
        if words.next().is_some() {
            return Err(CommandError::Syntax);
        }
        Ok(Command::Auth { mechanism, initial })
    } else if [
        &b"BDAT"[..],
        b"ETRN",
        b"TURN",
        b"ATRN",
        b"SEND",
        b"SOML",
        b"SAML",
    ]
    .iter()
    .any(|v| is(v))
    {
        Ok(Command::NotImplemented)
    } else if verb.iter().any(|&b| b >= 0x80) {
        Err(CommandError::BadCharacters)
    } else {
        Err(CommandError::Unrecognized)
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    let end = s.iter().rposition(|&b| b != b' ').map_or(start, |i| i + 1);
    &s[start..end]
}

/// The first word of a HELO/EHLO argument, if it is printable ASCII of a sane length.
/// Names are not held to the Domain grammar: devices send `camera_01` and worse, and
/// Postfix accepts them too. The name only ever appears in the Received header.
fn client_name(arg: &[u8]) -> Option<&[u8]> {
    let word = &arg[..arg.iter().position(|&b| b == b' ').unwrap_or(arg.len())];
    let ok = !word.is_empty()
        && word.len() <= super::limits::DOMAIN
        && word.iter().all(|&b| (0x21..0x7f).contains(&b));
    ok.then_some(word)
}

/// `FROM:` / `TO:` then optional spaces (tolerated, as Postfix does), then the path.
fn after_prefix<'a>(arg: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if arg.len() < prefix.len() || !arg[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    Some(trim(&arg[prefix.len()..]))
}

fn parse_mail(arg: &[u8]) -> Result<Command<'_>, CommandError> {
    let rest = after_prefix(arg, b"FROM:").ok_or(CommandError::MailSyntax)?;
    let (sender, params) = match parse_path(rest, PathKind::Reverse, true) {
        Ok(v) => v,
        Err(PathError::Syntax | PathError::TooLong | PathError::NeedsUtf8) => {
            return Err(CommandError::BadSender);
        }
    };
    let mut mail = Mail {
        sender,
        size: None,
        body: BodyType::SevenBit,
        smtputf8: false,
    };
    let (mut seen_size, mut seen_body) = (false, false);
    for param in params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        if key.is_empty() || !key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(CommandError::Syntax);
        }
        if key.eq_ignore_ascii_case(b"SIZE") && !seen_size {
            seen_size = true;
            // RFC 1870: size-value = 1*20DIGIT
            let v = value
                .filter(|v| !v.is_empty() && v.len() <= 20 && v.iter().all(u8::is_ascii_digit));
            let v = v.ok_or(CommandError::Syntax)?;
            let n = v.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            mail.size = Some(n.unwrap_or(u64::MAX));
        } else if key.eq_ignore_ascii_case(b"BODY") && !seen_body {
            seen_body = true;
            mail.body = match value {
                Some(v) if v.eq_ignore_ascii_case(b"7BIT") => BodyType::SevenBit,
                Some(v) if v.eq_ignore_ascii_case(b"8BITMIME") => BodyType::EightBitMime,
                _ => return Err(CommandError::UnknownParameter),
            };
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") && value.is_none() && !mail.smtputf8 {
            mail.smtputf8 = true;
        } else if key.eq_ignore_ascii_case(b"AUTH") && value.is_some_and(|v| !v.is_empty()) {
            // RFC 4954 §5: the identity that submitted the message; not used.
        } else {
            return Err(CommandError::UnknownParameter);
        }
    }
    if !mail.smtputf8 && !mail.sender.is_ascii() {
        return Err(CommandError::NeedsSmtputf8);
    }
    Ok(Command::Mail(mail))
}

fn parse_rcpt(arg: &[u8], utf8: bool) -> Result<Command<'_>, CommandError> {
    let rest = after_prefix(arg, b"TO:").ok_or(CommandError::RcptSyntax)?;
    let (rcpt, params) = match parse_path(rest, PathKind::Forward, utf8) {
        Ok(v) => v,
        Err(PathError::NeedsUtf8) => return Err(CommandError::NeedsSmtputf8),
        Err(_) => return Err(CommandError::BadRecipient),
    };
    // No RCPT parameters are offered (no DSN): any is unrecognised (RFC 5321 §4.1.1.3).
    if !trim(params).is_empty() {
        return Err(if params.starts_with(b" ") {
            CommandError::UnknownParameter
        } else {
            CommandError::BadRecipient
        });
    }
    Ok(Command::Rcpt(rcpt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommandError as E;

    fn mb(s: &[u8]) -> Mailbox {
        Mailbox::from_slice(s).unwrap()
    }

    fn mail(sender: &[u8], size: Option<u64>, body: BodyType, smtputf8: bool) -> Command<'static> {
        Command::Mail(Mail {
            sender: mb(sender),
            size,
            body,
            smtputf8,
        })
    }

    #[test]
    fn command_table() {
        use BodyType::*;
        let cases: &[(&[u8], Result<Command, CommandError>)] = &[
            (b"EHLO client.example", Ok(Command::Ehlo(b"client.example"))),
            (b"ehlo client.example", Ok(Command::Ehlo(b"client.example"))),
            (b"EhLo [192.0.2.1]", Ok(Command::Ehlo(b"[192.0.2.1]"))),
            (
                b"EHLO camera_01 extra words",
                Ok(Command::Ehlo(b"camera_01")),
            ),
            (b"EHLO", Err(E::EhloSyntax)),
            (b"EHLO ", Err(E::EhloSyntax)),
            (b"HELO", Err(E::HeloSyntax)),
            (b"HELO x", Ok(Command::Helo(b"x"))),
            (
                b"MAIL FROM:<a@b.c>",
                Ok(mail(b"a@b.c", None, SevenBit, false)),
            ),
            (
                b"mail from:<a@b.c>",
                Ok(mail(b"a@b.c", None, SevenBit, false)),
            ),
            (
                b"MAIL FROM: <a@b.c>",
                Ok(mail(b"a@b.c", None, SevenBit, false)),
            ),
            (b"MAIL FROM:<>", Ok(mail(b"", None, SevenBit, false))),
            (
                b"MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME",
                Ok(mail(b"a@b.c", Some(1000), EightBitMime, false)),
            ),
            (
                b"MAIL FROM:<a@b.c> size=12 body=7bit ",
                Ok(mail(b"a@b.c", Some(12), SevenBit, false)),
            ),
            (
                b"MAIL FROM:<a@b.c> SIZE=99999999999999999999",
                Ok(mail(b"a@b.c", Some(u64::MAX), SevenBit, false)),
            ),
            (
                b"MAIL FROM:<a@b.c> SIZE=123456789012345678901",
                Err(E::Syntax),
            ),
            (b"MAIL FROM:<a@b.c> SIZE=", Err(E::Syntax)),
            (b"MAIL FROM:<a@b.c> SIZE=12x", Err(E::Syntax)),
            (b"MAIL FROM:<a@b.c> SIZE=1 SIZE=2", Err(E::UnknownParameter)),
            (
                b"MAIL FROM:<a@b.c> BODY=BINARYMIME",
                Err(E::UnknownParameter),
            ),
            (b"MAIL FROM:<a@b.c> RET=HDRS", Err(E::UnknownParameter)),
            (b"MAIL FROM:<a@b.c> X_Y=1", Err(E::Syntax)),
            (
                "MAIL FROM:<jos\u{e9}@b.c> SMTPUTF8".as_bytes(),
                Ok(mail("jos\u{e9}@b.c".as_bytes(), None, SevenBit, true)),
            ),
            (
                "MAIL FROM:<jos\u{e9}@b.c>".as_bytes(),
                Err(E::NeedsSmtputf8),
            ),
            (b"MAIL FROM:<a@b.c> SMTPUTF8=yes", Err(E::UnknownParameter)),
            (
                b"MAIL FROM:a@b.c",
                Ok(mail(b"a@b.c", None, SevenBit, false)),
            ),
            (b"MAIL FROM:<a@b.c", Err(E::BadSender)),
            (b"MAIL FROM:<a@@b.c>", Err(E::BadSender)),
            (b"MAIL FROM:", Err(E::BadSender)),
            (b"MAIL TO:<a@b.c>", Err(E::MailSyntax)),
            (b"MAIL", Err(E::MailSyntax)),
            (b"RCPT TO:<a@b.c>", Ok(Command::Rcpt(mb(b"a@b.c")))),
            (
                b"RCPT TO:<Postmaster>",
                Ok(Command::Rcpt(mb(b"Postmaster"))),
            ),
            (b"RCPT TO:<>", Err(E::BadRecipient)),
            (b"RCPT TO:<a@b.c> NOTIFY=NEVER", Err(E::UnknownParameter)),
            (b"RCPT TO:<a@b.c>junk", Err(E::BadRecipient)),
            (b"RCPT FROM:<a@b.c>", Err(E::RcptSyntax)),
            ("RCPT TO:<\u{fc}@b.c>".as_bytes(), Err(E::NeedsSmtputf8)),
            (b"DATA", Ok(Command::Data)),
            (b"data", Ok(Command::Data)),
            (b"DATA x", Err(E::NoArguments)),
            (b"RSET", Ok(Command::Rset)),
            (b"QUIT", Ok(Command::Quit)),
            (b"QUIT now", Err(E::NoArguments)),
            (b"NOOP", Ok(Command::Noop)),
            (b"NOOP anything at all", Ok(Command::Noop)),
            (b"HELP", Ok(Command::Help)),
            (b"HELP MAIL", Ok(Command::Help)),
            (b"VRFY root", Ok(Command::Vrfy)),
            (b"VRFY", Err(E::Syntax)),
            (b"EXPN staff", Ok(Command::Expn)),
            (b"STARTTLS", Ok(Command::StartTls)),
            (b"starttls x", Err(E::NoArguments)),
            (
                b"AUTH PLAIN AGFhAGI=",
                Ok(Command::Auth {
                    mechanism: b"PLAIN",
                    initial: Some(b"AGFhAGI="),
                }),
            ),
            (
                b"auth login",
                Ok(Command::Auth {
                    mechanism: b"login",
                    initial: None,
                }),
            ),
            (b"AUTH", Err(E::Syntax)),
            (b"AUTH PLAIN a b", Err(E::Syntax)),
            (
                b"MAIL FROM:<a@b.c> AUTH=<>",
                Ok(mail(b"a@b.c", None, SevenBit, false)),
            ),
            (b"BDAT 100 LAST", Ok(Command::NotImplemented)),
            (b"FOO", Err(E::Unrecognized)),
            (b"", Err(E::Unrecognized)),
            (b"GET / HTTP/1.1", Err(E::Unrecognized)),
            (b"MAIL FROM:<a@b.c>\rRCPT TO:<x@y.z>", Err(E::BadCharacters)),
            (b"NOOP \x00", Err(E::BadCharacters)),
            (b"\xff\xfe", Err(E::BadCharacters)),
        ];
        for (line, want) in cases {
            assert_eq!(
                &parse(line, false),
                want,
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
        // RCPT in an SMTPUTF8 transaction takes UTF-8.
        assert_eq!(
            parse("RCPT TO:<\u{fc}@b.c>".as_bytes(), true),
            Ok(Command::Rcpt(mb("\u{fc}@b.c".as_bytes())))
        );
    }
}
