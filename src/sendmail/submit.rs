//! `sendmail`: a message from stdin into the spool, with the same atomic, fsynced
//! commit as SMTP mail, whether or not the daemon runs; a running daemon is told at once.

use std::io::Read;

use super::args::Options;
use super::message::{self, Context, DataError};
use crate::config::Config;
use crate::protocol::address::Mailbox;
use crate::protocol::server::received_local;
use crate::relay;
use crate::spool::{self, QueueId, Spool};
use crate::time;

/// sysexits.h codes sendmail callers know.
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_CANTCREAT: u8 = 73;
pub const EX_IOERR: u8 = 74;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_NOPERM: u8 = 77;
pub const EX_CONFIG: u8 = 78;

/// A failure: the exit code and one line for stderr.
#[derive(Debug)]
pub struct Failure(pub u8, pub String);

impl From<DataError> for Failure {
    fn from(e: DataError) -> Self {
        Failure(EX_DATAERR, e.0)
    }
}

fn spool_failure(e: &std::io::Error, what: &str) -> Failure {
    let code = if spool::is_no_space(e) {
        EX_TEMPFAIL
    } else if matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::NotFound
            | std::io::ErrorKind::ReadOnlyFilesystem
    ) {
        EX_CANTCREAT
    } else {
        EX_IOERR
    };
    Failure(code, format!("{what}: {e}"))
}

/// The envelope sender: `-f`/`-r`, else `sendmail_from`, else the caller's name at
/// the host name (as sendmail does).
fn envelope_sender(config: &Config, opts: &Options) -> Result<String, Failure> {
    if let Some(s) = &opts.sender {
        let s = s.trim().trim_start_matches('<').trim_end_matches('>');
        if s.is_empty() {
            return Ok(String::new());
        }
        return Ok(message::qualify(s, config.qualify_domain())?);
    }
    if let Some(s) = &config.sendmail_from {
        return Ok(s.clone());
    }
    let user = crate::privileges::current_user().unwrap_or_else(|| "root".into());
    Ok(message::qualify(&user, config.qualify_domain())?)
}

/// Maps the recipients through the aliases and checks them against
/// `allow_recipient`, as the daemon does for RCPT.
fn apply_policy(config: &Config, recipients: Vec<String>) -> Result<Vec<String>, Failure> {
    let policy = config.policy().map_err(|e| Failure(EX_CONFIG, e))?;
    let mut out: Vec<String> = Vec::with_capacity(recipients.len());
    for r in recipients {
        // `qualify` checked the length: it fits a mailbox.
        let addr = Mailbox::from_slice(r.as_bytes()).unwrap_or_default();
        let targets = policy.recipient(&addr).map_err(|refused| {
            Failure(
                EX_NOPERM,
                format!(
                    "recipient <{}> not allowed by allow_recipient",
                    String::from_utf8_lossy(refused)
                ),
            )
        })?;
        for t in targets {
            let t = String::from_utf8_lossy(t).into_owned();
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// Queues the message read from `input`. Returns its queue id.
pub fn submit(config: &Config, opts: &Options, mut input: impl Read) -> Result<QueueId, Failure> {
    let sender = envelope_sender(config, opts)?;
    let mut recipients = Vec::new();
    for arg in &opts.recipients {
        for a in message::address_list(arg) {
            recipients.push(message::qualify(&a, config.qualify_domain())?);
        }
    }
    // The message is read whole, up to the size limit (and a byte more to tell).
    let mut raw = Vec::new();
    (&mut input)
        .take(config.max_message_size + 1)
        .read_to_end(&mut raw)
        .map_err(|e| Failure(EX_IOERR, format!("cannot read the message: {e}")))?;
    if raw.len() as u64 > config.max_message_size {
        return Err(Failure(
            EX_DATAERR,
            format!(
                "message larger than max_message_size ({} bytes)",
                config.max_message_size
            ),
        ));
    }
    let spool = Spool::attach(&config.spool)
        .map_err(|e| spool_failure(&e, &format!("cannot open spool {}", config.spool.display())))?;
    let id = spool.new_id();
    let now = time::now_unix();
    let date = time::rfc5322(now);
    let ctx = Context {
        hostname: config.qualify_domain(),
        sender: if sender.is_empty() {
            "MAILER-DAEMON"
        } else {
            &sender
        },
        full_name: opts.full_name.as_deref(),
        date: &date,
        message_id: &format!("<{id}@{}>", config.hostname),
        extract_recipients: opts.extract_recipients,
        ignore_dots: opts.ignore_dots,
        add_missing: config.add_missing_headers,
    };
    let prepared = message::prepare(&raw, &ctx)?;
    for r in prepared.header_recipients {
        if !recipients.contains(&r) {
            recipients.push(r);
        }
    }
    let recipients = apply_policy(config, recipients)?;
    if recipients.is_empty() {
        return Err(Failure(
            EX_USAGE,
            "no recipients (give them as arguments, or use -t)".into(),
        ));
    }
    if recipients.len() > crate::protocol::limits::RECIPIENTS {
        return Err(Failure(
            EX_USAGE,
            format!(
                "too many recipients (at most {})",
                crate::protocol::limits::RECIPIENTS
            ),
        ));
    }
    let uid = crate::privileges::uid();
    let envelope = spool::Envelope {
        created: now,
        client: format!("local uid={uid}"),
        helo: "sendmail".into(),
        eight_bit: prepared.eight_bit,
        smtputf8: !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
        sender,
        recipients,
    };
    let mut w = spool
        .create(id.clone(), &envelope)
        .map_err(|e| spool_failure(&e, "cannot write the spool"))?;
    let mut trace = String::with_capacity(128);
    let _ = received_local(&mut trace, &config.hostname, uid, &id, &date);
    w.write(trace.as_bytes())
        .and_then(|()| w.write(&prepared.content))
        .map_err(|e| spool_failure(&e, "cannot write the spool"))?;
    if crate::longlines::has_long_line(&prepared.content) {
        w.set_long_lines();
    }
    let id = spool
        .commit(w)
        .map_err(|e| spool_failure(&e, "cannot commit to the spool"))?;
    // A running daemon picks it up now; a stopped one at its next start.
    relay::notify_queued(&spool, &id);
    Ok(id)
}
