//! Delivery status notifications (RFC 3464): the text of a failure notice or a delay
//! warning for a message, as a `multipart/report; report-type=delivery-status` with
//! a readable part, the machine-readable report and the original's header section
//! (`text/rfc822-headers`, RFC 6522). Sans-IO: the relay gives it what it read from
//! the spool and queues what it returns.
//!
//! A notice is queued with the envelope client `notice` and, unless `notify_from` is
//! set, the null sender; a message that is a notice, or that came from the null
//! sender, never gets one, so notices cannot loop (RFC 5321 §4.5.5, §6.1).

use std::fmt::Write as _;

/// The envelope client of every notice: how the relay knows one.
pub const CLIENT: &str = "notice";

/// The header section of the original is cut at this many octets.
pub const MAX_HEADERS: usize = 32 * 1024;

/// What the notice says about the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Some recipients failed for good (a 5xx, or `max_queue_lifetime`).
    Failed,
    /// Still being retried after `delay_warning`.
    Delayed,
}

/// One recipient the notice is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    pub addr: String,
    /// The last reply for it, as recorded (`550 5.1.1 no such user`), if any.
    pub reply: Option<String>,
    /// The smarthost that gave that reply, if one did.
    pub remote: Option<String>,
}

/// Everything a notice is made of.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub kind: Kind,
    /// This relay's name (`hostname`).
    pub hostname: &'a str,
    /// The original's queue id.
    pub id: &'a str,
    /// The original's envelope sender (never empty: such a message gets no notice).
    pub sender: &'a str,
    /// Whom the notice goes to.
    pub to: &'a str,
    /// `From:` of the notice: `notify_from`, else `MAILER-DAEMON@hostname`.
    pub from: &'a str,
    /// When the original was accepted, and now (Unix seconds).
    pub arrival: u64,
    pub now: u64,
    /// For a delay warning: when the relay gives up.
    pub retry_until: Option<u64>,
    /// For a failure by expiry, the reason (`message expired after 5d`).
    pub expired: Option<&'a str>,
    pub rcpts: Vec<Rcpt>,
    /// The original's header section, as spooled (CRLF lines).
    pub headers: &'a [u8],
    /// Whether the original or these headers need 8BITMIME / SMTPUTF8 upstream.
    pub utf8: bool,
}

/// `5.1.1` from a reply `550 5.1.1 text`; else the class of the code with `.0.0`
/// (`4.0.0`), or `default` when there is no code at all.
pub fn status_of(reply: &str, default: &str) -> String {
    let mut words = reply.split(' ');
    let code = words.next().unwrap_or("");
    let class = match code.as_bytes().first() {
        Some(c @ (b'2' | b'4' | b'5')) if code.len() == 3 => *c as char,
        _ => return default.to_string(),
    };
    if let Some(enh) = words.next() {
        let parts: Vec<&str> = enh.split('.').collect();
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
        if parts.len() == 3
            && parts[0].len() == 1
            && parts[0].starts_with(class)
            && parts.iter().all(|p| digits(p))
        {
            return enh.to_string();
        }
    }
    format!("{class}.0.0")
}

/// A reply recorded for a deferral may start with `relay=NAME `: the smarthost's
/// name, and the reply itself.
pub fn split_relay(reply: &str) -> (Option<&str>, &str) {
    match reply.strip_prefix("relay=").and_then(|r| r.split_once(' ')) {
        Some((name, rest)) => (Some(name), rest),
        None => (None, reply),
    }
}

/// Keeps a header value to printable ASCII on one line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The header lines of the original, each whole line at most 998 octets with CRLF,
/// cut at `MAX_HEADERS`, bare LF made CRLF.
fn original_headers(headers: &[u8], out: &mut Vec<u8>) {
    let mut taken = 0;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.is_empty() {
            break;
        }
        if taken + body.len() + 2 > MAX_HEADERS {
            break;
        }
        let body = &body[..body.len().min(996)];
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
        taken += body.len() + 2;
    }
}

impl Notice<'_> {
    /// The notice's `Message-ID:`, made from the original's id.
    fn message_id(&self) -> String {
        let tag = match self.kind {
            Kind::Failed => "failed",
            Kind::Delayed => "delayed",
        };
        format!("<{}.{tag}@{}>", self.id, clean(self.hostname))
    }

    /// The whole message, CRLF line endings, ready for the spool.
    pub fn render(&self) -> Vec<u8> {
        let mut t = String::with_capacity(2048);
        let boundary = format!("{}/{}", self.id, clean(self.hostname));
        let date = crate::time::rfc5322(self.now);
        let subject = match self.kind {
            Kind::Failed => "Undelivered Mail Returned to Sender",
            Kind::Delayed => "Delayed Mail (still being retried)",
        };
        let _ = write!(
            t,
            "From: Mail Delivery System <{}>\r\n\
             To: <{}>\r\n\
             Subject: {subject}\r\n\
             Date: {date}\r\n\
             Message-ID: {}\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\
             \tboundary=\"{boundary}\"\r\n\
             \r\n\
             This is a MIME-encapsulated message.\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Description: Notification\r\n\
             Content-Type: text/plain; charset={}\r\n\
             \r\n",
            clean(self.from),
            self.to,
            self.message_id(),
            if self.utf8 { "utf-8" } else { "us-ascii" }
        );
        self.human(&mut t);
        let _ = write!(
            t,
            "\r\n--{boundary}\r\n\
             Content-Description: Delivery report\r\n\
             Content-Type: {}\r\n\
             \r\n\
             Reporting-MTA: dns; {}\r\n\
             X-Queue-ID: {}\r\n\
             Arrival-Date: {}\r\n",
            if self.utf8 {
                "message/global-delivery-status"
            } else {
                "message/delivery-status"
            },
            clean(self.hostname),
            self.id,
            crate::time::rfc5322(self.arrival)
        );
        for r in &self.rcpts {
            self.report(r, &mut t);
        }
        let _ = write!(
            t,
            "\r\n--{boundary}\r\n\
             Content-Description: Undelivered Message Headers\r\n\
             Content-Type: {}\r\n\
             \r\n",
            if self.utf8 {
                "message/global-headers"
            } else {
                "text/rfc822-headers"
            }
        );
        let mut out = t.into_bytes();
        original_headers(self.headers, &mut out);
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        out
    }

    /// The part a person reads.
    fn human(&self, t: &mut String) {
        let host = clean(self.hostname);
        match self.kind {
            Kind::Failed => {
                let _ = write!(
                    t,
                    "This is the mail system at host {host}.\r\n\r\n\
                     Your message could not be delivered to one or more recipients.\r\n\
                     It has been kept in the failed area as {}; the operator can\r\n\
                     send it again with \"smtp-relayd queue retry-failed {}\".\r\n",
                    self.id, self.id
                );
                if let Some(why) = self.expired {
                    let _ = write!(t, "\r\nIt was not delivered in time: {}.\r\n", clean(why));
                }
            }
            Kind::Delayed => {
                let until = self
                    .retry_until
                    .map(crate::time::rfc5322)
                    .unwrap_or_default();
                let _ = write!(
                    t,
                    "This is the mail system at host {host}.\r\n\r\n\
                     ####################################################\r\n\
                     # THIS IS A WARNING ONLY. YOU DO NOT NEED TO SEND  #\r\n\
                     # YOUR MESSAGE AGAIN.                              #\r\n\
                     ####################################################\r\n\r\n\
                     Your message (queue id {}) could not be delivered yet.\r\n\
                     The mail system will keep trying until {until}.\r\n",
                    self.id
                );
            }
        }
        let _ = write!(t, "\r\nSender: <{}>\r\n", self.sender);
        for r in &self.rcpts {
            let reply = r
                .reply
                .as_deref()
                .map(clean)
                .unwrap_or_else(|| "no reply".into());
            let via = r
                .remote
                .as_deref()
                .map(|h| format!(" (from {})", clean(h)))
                .unwrap_or_default();
            let _ = write!(t, "<{}>: {reply}{via}\r\n", r.addr);
        }
    }

    /// One recipient's fields of the report (RFC 3464 §2.3).
    fn report(&self, r: &Rcpt, t: &mut String) {
        let (action, default) = match (self.kind, self.expired) {
            (Kind::Delayed, _) => ("delayed", "4.0.0"),
            (Kind::Failed, Some(_)) => ("failed", "4.4.7"),
            (Kind::Failed, None) => ("failed", "5.0.0"),
        };
        let status = match r.reply.as_deref() {
            Some(reply) => status_of(reply, default),
            None => default.to_string(),
        };
        let addr_type = if self.utf8 { "utf-8" } else { "rfc822" };
        let _ = write!(
            t,
            "\r\nFinal-Recipient: {addr_type}; {}\r\nAction: {action}\r\nStatus: {status}\r\n",
            r.addr
        );
        if let Some(h) = &r.remote {
            let _ = write!(t, "Remote-MTA: dns; {}\r\n", clean(h));
        }
        if let Some(reply) = &r.reply {
            let _ = write!(t, "Diagnostic-Code: smtp; {}\r\n", clean(reply));
        }
        let _ = write!(
            t,
            "Last-Attempt-Date: {}\r\n",
            crate::time::rfc5322(self.now)
        );
        if let Some(until) = self.retry_until {
            let _ = write!(t, "Will-Retry-Until: {}\r\n", crate::time::rfc5322(until));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: Kind) -> Notice<'static> {
        Notice {
            kind,
            hostname: "gw.lan",
            id: "19A2B3C4D5E6F7080001ABC",
            sender: "cam@gw.lan",
            to: "admin@example.net",
            from: "MAILER-DAEMON@gw.lan",
            arrival: 1_796_000_000,
            now: 1_796_000_600,
            retry_until: None,
            expired: None,
            rcpts: vec![Rcpt {
                addr: "nobody@example.org".into(),
                reply: Some("550 5.1.1 <nobody@example.org>: user unknown".into()),
                remote: Some("smtp.example.net".into()),
            }],
            headers:
                b"Received: from cam\r\n\tby gw.lan\r\nSubject: motion\r\nFrom: cam@gw.lan\r\n\r\n",
            utf8: false,
        }
    }

    /// RFC 3463's status from the reply, and the class when it has none.
    #[test]
    fn status_codes() {
        for (reply, want) in [
            ("550 5.1.1 user unknown", "5.1.1"),
            ("552 5.3.4 too big", "5.3.4"),
            ("554 transaction failed", "5.0.0"),
            ("451 4.4.1 timeout", "4.4.1"),
            ("550 4.1.1 mismatched class", "5.0.0"),
            ("550 5.1234.1 bad", "5.0.0"),
            ("timeout", "4.4.7"),
            ("", "4.4.7"),
        ] {
            assert_eq!(status_of(reply, "4.4.7"), want, "{reply:?}");
        }
        assert_eq!(
            split_relay("relay=b 451 4.3.0 busy"),
            (Some("b"), "451 4.3.0 busy")
        );
        assert_eq!(split_relay("451 4.3.0 busy"), (None, "451 4.3.0 busy"));
    }

    /// The layout RFC 3464 §2 and RFC 6522 give: a multipart/report of three parts,
    /// the per-message fields, then one block per recipient; the original's headers
    /// to their end and no further.
    #[test]
    fn failure_notice_layout() {
        let text = String::from_utf8(notice(Kind::Failed).render()).unwrap();
        assert!(text.contains(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\
             \tboundary=\"19A2B3C4D5E6F7080001ABC/gw.lan\"\r\n"
        ));
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(text.contains("Message-ID: <19A2B3C4D5E6F7080001ABC.failed@gw.lan>\r\n"));
        assert!(text.contains(
            "Content-Type: message/delivery-status\r\n\r\n\
             Reporting-MTA: dns; gw.lan\r\n\
             X-Queue-ID: 19A2B3C4D5E6F7080001ABC\r\n"
        ));
        assert!(text.contains(
            "\r\nFinal-Recipient: rfc822; nobody@example.org\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; smtp.example.net\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>: user unknown\r\n"
        ));
        assert!(text.contains(
            "Content-Type: text/rfc822-headers\r\n\r\n\
             Received: from cam\r\n\tby gw.lan\r\nSubject: motion\r\nFrom: cam@gw.lan\r\n\
             \r\n--19A2B3C4D5E6F7080001ABC/gw.lan--\r\n"
        ));
        assert!(text.ends_with("--\r\n"));
        assert_eq!(text.matches("\n").count(), text.matches("\r\n").count());
        assert_eq!(
            text.matches("--19A2B3C4D5E6F7080001ABC/gw.lan\r\n").count(),
            3
        );
        assert!(text.lines().all(|l| l.len() <= 998));
    }

    /// A delay warning: Action delayed, Will-Retry-Until, and the warning text.
    #[test]
    fn delay_warning_layout() {
        let mut n = notice(Kind::Delayed);
        n.retry_until = Some(1_796_432_000);
        n.rcpts[0].reply = Some("451 4.4.1 connection timed out".into());
        let text = String::from_utf8(n.render()).unwrap();
        assert!(text.contains("Subject: Delayed Mail (still being retried)\r\n"));
        assert!(text.contains("Action: delayed\r\nStatus: 4.4.1\r\n"));
        assert!(text.contains("Will-Retry-Until: "));
        assert!(text.contains("THIS IS A WARNING ONLY"));
    }

    /// Expiry: a recipient whose last reply had no enhanced code gets 4.4.7.
    #[test]
    fn expiry_status() {
        let mut n = notice(Kind::Failed);
        n.expired = Some("message expired after 5d");
        n.rcpts[0].reply = Some("451 connection refused".into());
        n.rcpts[0].remote = None;
        let text = String::from_utf8(n.render()).unwrap();
        assert!(
            text.contains("Action: failed\r\nStatus: 4.0.0\r\n"),
            "{text}"
        );
        n.rcpts[0].reply = None;
        let text = String::from_utf8(n.render()).unwrap();
        assert!(
            text.contains("Action: failed\r\nStatus: 4.4.7\r\n"),
            "{text}"
        );
        assert!(!text.contains("Remote-MTA"));
    }

    /// Over-long header lines and a header section past the cap are cut; bare LF
    /// becomes CRLF; a control character in a reply cannot start a new field.
    #[test]
    fn hostile_headers_and_replies_are_bounded() {
        let long = format!("X-Long: {}\n", "a".repeat(5000));
        let mut many = long.clone();
        for i in 0..2000 {
            many.push_str(&format!("X-{i}: value\n"));
        }
        let mut n = notice(Kind::Failed);
        n.headers = Box::leak(many.into_bytes().into_boxed_slice());
        n.rcpts[0].reply = Some("550 5.0.0 bad\r\nX-Injected: yes".into());
        let out = n.render();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| l.len() <= 998));
        assert!(text.len() < MAX_HEADERS + 4096, "{}", text.len());
        assert!(!text.contains("\r\nX-Injected"));
        assert_eq!(text.matches("\n").count(), text.matches("\r\n").count());
    }
}
