//! The spool file format as types, each with its parse and emit (smoltcp's `Repr`
//! style): the queue id, the envelope in front of the content, and the delivery
//! records after it. Pure: the file IO is in `super`.
//!
//! ```text
//! smtp-relayd-spool 1
//! created 1796077564
//! client 192.0.2.7
//! helo cam1
//! body 8bitmime
//! smtputf8 no
//! sender <cam1@example.net>
//! rcpt <ops@example.com>
//! size 00000000000000000123
//!
//! <content>
//! D 0 1796077570 250 2.0.0 Ok: queued as 4Xyz      recipient 0 delivered
//!                           (each record ends with TAB LF; one without is torn, ignored)
//! F 1 1796077570 550 5.1.1 no such user            recipient 1 failed for good
//! T 1796077570 1796077630 451 4.3.0 try later       an attempt deferred; next try
//! X 1796077570 message expired: 451 4.3.0 ...      the message failed as a whole
//! R 1796077600                                      sent back to the queue: failed recipients are retried
//! L                                                 the content has lines over 998 octets
//! ```

use core::fmt::Write as _;

pub const MAGIC: &str = "smtp-relayd-spool 1";
/// The size field is written as fixed-width digits, then filled in at commit.
pub const SIZE_WIDTH: usize = 20;
/// What the size field holds until the commit writes the digits: no number, so a
/// file whose content reached the disk before its size did is never read as a
/// message of some size (a power cut can leave that on a disk without a journal).
pub const SIZE_PLACEHOLDER: &str = "????????????????????";
/// An envelope larger than this is not ours (100 recipients of 256 octets fit well).
pub const MAX_HEADER: usize = 64 * 1024;

/// A queue id: microseconds since the epoch, a per-process counter and the pid, in
/// fixed-width hex (23 digits), so ids sort by arrival and never repeat. Only the
/// spool makes new ones (`Spool::new_id`); `parse` checks one read from a file name
/// or a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(heapless::String<24>);

/// The length of every queue id.
pub const ID_LEN: usize = 23;

impl QueueId {
    /// The id made of these parts (for the spool's `new_id`).
    pub(super) fn mint(micros: u64, counter: u32, pid: u32) -> QueueId {
        let mut id = heapless::String::new();
        let _ = write!(
            id,
            "{:013X}{:04X}{:06X}",
            micros & 0x000F_FFFF_FFFF_FFFF,
            counter & 0xffff,
            pid & 0xff_ffff
        );
        QueueId(id)
    }

    /// The id of the notice of `kind` (1: failure, 2: delay warning) for this
    /// message: the same every time it is asked, so a notice made before a crash is
    /// found, not made twice. Its pid field is `F`, the kind and the original's pid's
    /// low 16 bits: above any pid Linux gives (at most 2^22), so no `new_id` is ever
    /// one of these.
    pub fn notice(&self, kind: u8) -> QueueId {
        let mut id = heapless::String::new();
        let _ = write!(id, "{}F{:X}{}", &self.0[..17], kind & 0xf, &self.0[19..]);
        QueueId(id)
    }

    /// `s` if it is a queue id (23 upper-case hex digits), as a file name or a
    /// command gives it.
    pub fn parse(s: &str) -> Option<QueueId> {
        let valid = s.len() == ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        valid.then(|| QueueId(heapless::String::try_from(s).unwrap_or_default()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::ops::Deref for QueueId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Display for QueueId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The envelope stored in front of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub created: u64,
    pub client: String,
    pub helo: String,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Without angle brackets; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
}

/// Why a spool file is not one of ours, or is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    NotOurs,
    Truncated,
    BadLine,
    BadAddress,
    BadNumber,
    UnknownField,
    NoSize,
    /// The size was never written: the file was being received when it was cut.
    Uncommitted,
    NoRecipients,
    ShortContent,
}

impl core::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Corrupt::NotOurs => "not a smtp-relayd spool file",
            Corrupt::Truncated => "truncated envelope",
            Corrupt::BadLine => "bad envelope line",
            Corrupt::BadAddress => "bad address",
            Corrupt::BadNumber => "bad number in the envelope",
            Corrupt::UnknownField => "unknown envelope field",
            Corrupt::NoSize => "no size",
            Corrupt::Uncommitted => "never committed (no size written)",
            Corrupt::NoRecipients => "no recipients",
            Corrupt::ShortContent => "content shorter than its size",
        })
    }
}

/// An envelope as read: what it says, the content size, and where the content starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub envelope: Envelope,
    pub size: u64,
    /// Octets of the envelope and its blank line: the content's offset in the file.
    pub len: usize,
}

impl Envelope {
    /// Writes the envelope and its blank line with the size placeholder; returns the
    /// offset of the size field, which the commit fills in (`SIZE_WIDTH` digits).
    pub fn emit(&self, out: &mut String) -> usize {
        let _ = write!(
            out,
            "{MAGIC}\ncreated {}\nclient {}\nhelo {}\nbody {}\nsmtputf8 {}\nsender <{}>\n",
            self.created,
            self.client,
            self.helo,
            if self.eight_bit { "8bitmime" } else { "7bit" },
            if self.smtputf8 { "yes" } else { "no" },
            self.sender
        );
        for r in &self.recipients {
            let _ = writeln!(out, "rcpt <{r}>");
        }
        out.push_str("size ");
        let size_offset = out.len();
        out.push_str(SIZE_PLACEHOLDER);
        out.push_str("\n\n");
        size_offset
    }

    /// Reads the envelope at the start of `bytes` (the start of a spool file, at
    /// least up to its blank line, or all of it). `Err(Truncated)` when the blank line
    /// is not in `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Head, Corrupt> {
        let end = bytes
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or(Corrupt::Truncated)?;
        if end + 2 > MAX_HEADER {
            return Err(Corrupt::Truncated);
        }
        let text = core::str::from_utf8(&bytes[..end]).map_err(|_| Corrupt::BadLine)?;
        let mut lines = text.split('\n');
        if lines.next() != Some(MAGIC) {
            return Err(Corrupt::NotOurs);
        }
        let mut env = Envelope {
            created: 0,
            client: String::new(),
            helo: String::new(),
            eight_bit: false,
            smtputf8: false,
            sender: String::new(),
            recipients: Vec::new(),
        };
        let mut size = None;
        for line in lines {
            let (k, v) = line.split_once(' ').ok_or(Corrupt::BadLine)?;
            let path = || {
                v.strip_prefix('<')
                    .and_then(|v| v.strip_suffix('>'))
                    .map(str::to_string)
                    .ok_or(Corrupt::BadAddress)
            };
            match k {
                "created" => env.created = v.parse().map_err(|_| Corrupt::BadNumber)?,
                "client" => env.client = v.to_string(),
                "helo" => env.helo = v.to_string(),
                "body" => env.eight_bit = v == "8bitmime",
                "smtputf8" => env.smtputf8 = v == "yes",
                "sender" => env.sender = path()?,
                "rcpt" => env.recipients.push(path()?),
                "size" if v == SIZE_PLACEHOLDER => return Err(Corrupt::Uncommitted),
                "size" => size = Some(v.parse::<u64>().map_err(|_| Corrupt::BadNumber)?),
                _ => return Err(Corrupt::UnknownField),
            }
        }
        let size = size.ok_or(Corrupt::NoSize)?;
        if env.recipients.is_empty() {
            return Err(Corrupt::NoRecipients);
        }
        Ok(Head {
            envelope: env,
            size,
            len: end + 2,
        })
    }
}

/// One delivery record. Times are Unix seconds; a reply is the server's, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `D RCPT TIME REPLY`: recipient number RCPT was delivered.
    Delivered {
        rcpt: usize,
        time: u64,
        reply: String,
    },
    /// `F RCPT TIME REPLY`: recipient number RCPT failed for good.
    Failed {
        rcpt: usize,
        time: u64,
        reply: String,
    },
    /// `T TIME NEXT REPLY`: an attempt was deferred; the next try is at NEXT.
    Deferred { time: u64, next: u64, reply: String },
    /// `X TIME REASON`: the message failed as a whole (moved to `failed/`).
    Expired { time: u64, reason: String },
    /// `R TIME`: put back in the queue; failed recipients are tried again.
    Retry { time: u64 },
    /// `L`: the content has lines over 998 octets (written at commit).
    LongLines,
    /// `O TIME`: the message is failing and its sender is owed a failure notice
    /// (written before the move to `failed/`; a start finds a notice still owed).
    NoticeOwed { time: u64 },
    /// `N TIME ID`: the failure notice was queued as ID.
    Notified { time: u64, notice: String },
    /// `W TIME ID`: the delay warning was queued as ID.
    Warned { time: u64, notice: String },
}

impl Record {
    /// The record's line, TAB LF included. Values stay on one line of printable text
    /// (and hold no TAB, so a torn record is known by its missing TAB LF).
    pub fn emit(&self) -> String {
        let line = match self {
            Record::Delivered { rcpt, time, reply } => format!("D {rcpt} {time} {reply}"),
            Record::Failed { rcpt, time, reply } => format!("F {rcpt} {time} {reply}"),
            Record::Deferred { time, next, reply } => format!("T {time} {next} {reply}"),
            Record::Expired { time, reason } => format!("X {time} {reason}"),
            Record::Retry { time } => format!("R {time}"),
            Record::LongLines => "L".to_string(),
            Record::NoticeOwed { time } => format!("O {time}"),
            Record::Notified { time, notice } => format!("N {time} {notice}"),
            Record::Warned { time, notice } => format!("W {time} {notice}"),
        };
        let mut out: String = line
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        out.push_str("\t\n");
        out
    }

    /// One record's text, without its TAB LF. `None` for what is not a record of
    /// ours (skipped: a newer writer's, or damage).
    pub fn parse(rec: &str) -> Option<Record> {
        let mut f = rec.splitn(4, ' ');
        let num = |s: Option<&str>| s?.parse::<u64>().ok();
        let text = |s: Option<&str>| s.unwrap_or("").to_string();
        Some(match f.next()? {
            "D" | "F" => {
                let rcpt = f.next()?.parse().ok()?;
                let time = num(f.next())?;
                let reply = text(f.next());
                if rec.starts_with('D') {
                    Record::Delivered { rcpt, time, reply }
                } else {
                    Record::Failed { rcpt, time, reply }
                }
            }
            "T" => {
                let time = num(f.next())?;
                let next = num(f.next())?;
                Record::Deferred {
                    time,
                    next,
                    reply: text(f.next()),
                }
            }
            "X" => {
                let mut f = rec.splitn(3, ' ').skip(1);
                let time = num(f.next())?;
                Record::Expired {
                    time,
                    reason: text(f.next()),
                }
            }
            "R" => Record::Retry {
                time: num(f.next())?,
            },
            "L" if f.next().is_none() => Record::LongLines,
            "O" => Record::NoticeOwed {
                time: num(f.next())?,
            },
            "N" | "W" => {
                let time = num(f.next())?;
                let notice = QueueId::parse(f.next()?)?.as_str().to_string();
                if rec.starts_with('N') {
                    Record::Notified { time, notice }
                } else {
                    Record::Warned { time, notice }
                }
            }
            _ => return None,
        })
    }

    /// Every whole record in the text after the content, in order. A record cut short
    /// by a crash has no TAB LF: it never happened.
    pub fn parse_all(records: &str) -> impl Iterator<Item = Record> + '_ {
        records
            .split('\n')
            .filter_map(|r| r.strip_suffix('\t'))
            .filter_map(Record::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            created: 1796077564,
            client: "192.0.2.7".into(),
            helo: "cam1".into(),
            eight_bit: true,
            smtputf8: false,
            sender: "cam1@example.net".into(),
            recipients: vec!["ops@example.com".into(), "b@x.org".into()],
        }
    }

    #[test]
    fn envelope_bytes() {
        let mut text = String::new();
        let at = envelope().emit(&mut text);
        assert_eq!(
            text,
            "smtp-relayd-spool 1\ncreated 1796077564\nclient 192.0.2.7\nhelo cam1\n\
             body 8bitmime\nsmtputf8 no\nsender <cam1@example.net>\nrcpt <ops@example.com>\n\
             rcpt <b@x.org>\nsize ????????????????????\n\n"
        );
        assert_eq!(&text[at..at + SIZE_WIDTH], SIZE_PLACEHOLDER);
        // Until the commit writes the size, the file is no message of any size.
        assert_eq!(Envelope::parse(text.as_bytes()), Err(Corrupt::Uncommitted));
        // The commit fills in the size; the content follows.
        let mut file = text.clone().into_bytes();
        file[at..at + SIZE_WIDTH].copy_from_slice(format!("{:020}", 5).as_bytes());
        file.extend_from_slice(b"hello");
        let head = Envelope::parse(&file).unwrap();
        assert_eq!(head.envelope, envelope());
        assert_eq!(head.size, 5);
        assert_eq!(head.len, text.len());
        // The null sender.
        let mut e = envelope();
        e.sender.clear();
        let mut text = String::new();
        let at = e.emit(&mut text);
        text.replace_range(at..at + SIZE_WIDTH, &format!("{:020}", 0));
        assert!(text.contains("sender <>\n"));
        assert_eq!(Envelope::parse(text.as_bytes()).unwrap().envelope, e);
    }

    #[test]
    fn damaged_envelopes() {
        let good = "smtp-relayd-spool 1\ncreated 1\nclient c\nhelo h\nbody 7bit\n\
                    smtputf8 no\nsender <>\nrcpt <a@b.c>\nsize 00000000000000000001\n\nx";
        assert!(Envelope::parse(good.as_bytes()).is_ok());
        let cases: &[(&str, &str, Corrupt)] = &[
            (
                "smtp-relayd-spool 1",
                "smtp-relayd-spool 2",
                Corrupt::NotOurs,
            ),
            ("\n\nx", "\nx", Corrupt::Truncated),
            ("rcpt <a@b.c>", "rcpt a@b.c", Corrupt::BadAddress),
            ("created 1", "created x", Corrupt::BadNumber),
            ("helo h", "colour blue", Corrupt::UnknownField),
            ("helo h", "helo", Corrupt::BadLine),
            ("\nsize 00000000000000000001", "", Corrupt::NoSize),
            (
                "size 00000000000000000001",
                "size ????????????????????",
                Corrupt::Uncommitted,
            ),
            (
                "size 00000000000000000001",
                "size 000000000000000000?1",
                Corrupt::BadNumber,
            ),
            ("\nrcpt <a@b.c>", "", Corrupt::NoRecipients),
        ];
        for (from, to, want) in cases {
            let text = good.replacen(from, to, 1);
            assert_eq!(Envelope::parse(text.as_bytes()), Err(*want), "{text:?}");
        }
    }

    /// A notice's id is fixed by its message and kind, valid, and outside what
    /// `new_id` makes (whose pid field is below 0x400000).
    #[test]
    fn notice_ids() {
        let id = QueueId::mint(0x19A2B3C4D5E6F, 0x0801, 0x12ABC);
        assert_eq!(id.as_str(), "19A2B3C4D5E6F0801012ABC");
        let f = id.notice(1);
        assert_eq!(f.as_str(), "19A2B3C4D5E6F0801F12ABC");
        assert_eq!(QueueId::parse(f.as_str()), Some(f.clone()));
        assert_ne!(id.notice(2), f);
        assert_eq!(id.notice(1), f);
        assert!(u32::from_str_radix(&f.as_str()[17..], 16).unwrap() >= 0xF0_0000);
    }

    #[test]
    fn record_lines() {
        let cases: &[(Record, &str)] = &[
            (
                Record::Delivered {
                    rcpt: 0,
                    time: 1796077570,
                    reply: "250 2.0.0 Ok: queued as 4Xyz".into(),
                },
                "D 0 1796077570 250 2.0.0 Ok: queued as 4Xyz\t\n",
            ),
            (
                Record::Failed {
                    rcpt: 1,
                    time: 7,
                    reply: "550 5.1.1 no such user".into(),
                },
                "F 1 7 550 5.1.1 no such user\t\n",
            ),
            (
                Record::Deferred {
                    time: 7,
                    next: 67,
                    reply: "451 4.3.0 try later".into(),
                },
                "T 7 67 451 4.3.0 try later\t\n",
            ),
            (
                Record::Expired {
                    time: 9,
                    reason: "message expired: 451 4.3.0 x".into(),
                },
                "X 9 message expired: 451 4.3.0 x\t\n",
            ),
            (Record::Retry { time: 10 }, "R 10\t\n"),
            (Record::LongLines, "L\t\n"),
            (Record::NoticeOwed { time: 11 }, "O 11\t\n"),
            (
                Record::Notified {
                    time: 12,
                    notice: "19A2B3C4D5E6F0801F12ABC".into(),
                },
                "N 12 19A2B3C4D5E6F0801F12ABC\t\n",
            ),
            (
                Record::Warned {
                    time: 13,
                    notice: "19A2B3C4D5E6F0801F22ABC".into(),
                },
                "W 13 19A2B3C4D5E6F0801F22ABC\t\n",
            ),
        ];
        for (rec, line) in cases {
            assert_eq!(rec.emit(), *line);
            assert_eq!(
                Record::parse(line.strip_suffix("\t\n").unwrap()).as_ref(),
                Some(rec)
            );
        }
        // Control characters never break a record's line.
        let r = Record::Failed {
            rcpt: 0,
            time: 1,
            reply: "550 a\tb\nc".into(),
        };
        assert_eq!(r.emit(), "F 0 1 550 a?b?c\t\n");
        // Torn and unknown records are skipped.
        let all: Vec<Record> =
            Record::parse_all("R 5\t\nZ 1 2\t\nD 0 9 250 ok\t\nD 1 9 25").collect();
        assert_eq!(
            all,
            [
                Record::Retry { time: 5 },
                Record::Delivered {
                    rcpt: 0,
                    time: 9,
                    reply: "250 ok".into()
                }
            ]
        );
    }

    #[test]
    fn ids() {
        let id = QueueId::mint(0x1234_5678_9ABC, 0x1_0001, 0x0102_0304);
        assert_eq!(id.as_str(), "0123456789ABC0001020304");
        assert_eq!(QueueId::parse(&id), Some(id.clone()));
        for bad in [
            "0123456789abc0001020304",
            "0123456789ABC000102030",
            "../../etc/passwd",
        ] {
            assert_eq!(QueueId::parse(bad), None, "{bad}");
        }
    }
}
