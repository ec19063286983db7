//! Failure notices and delay warnings, as the scheduler queues them.
//!
//! A failure: the scheduler writes `O` (a notice is owed) in the message, moves it
//! to `failed/`, queues the notice and then writes `N ID` in the failed file. A
//! start finds an `O` without its `N` and queues the notice then. The notice's id is
//! fixed by the message's (`QueueId::notice`), so one that was committed before a
//! crash is found in the spool and not made again: at most one notice per failure.
//! A delay warning is written the same way, with `W ID` after it.

use std::io::Read;

use super::Relay;
use crate::notice::{self, Kind, Notice, Rcpt};
use crate::spool::{Envelope, Message, QueueId, RcptState, Record};
use crate::time::now_unix;

/// Where the message is, for the record written after its notice.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Area {
    Queue,
    Failed,
}

impl Relay {
    /// Whether a message gets notices: not one from the null sender, not a notice.
    pub(super) fn wants_notice(&self, msg: &Message) -> bool {
        !self.config.notify_off
            && !msg.envelope.sender.is_empty()
            && msg.envelope.client != notice::CLIENT
    }

    /// The notice's recipients: `notify_failed` or the sender, qualified and
    /// looked up in the aliases.
    fn notice_to(&self, msg: &Message) -> Vec<String> {
        let to = self
            .config
            .notify_failed
            .as_deref()
            .unwrap_or(&msg.envelope.sender);
        let Ok(q) = self.policy.qualify(to.as_bytes()) else {
            return vec![to.to_string()];
        };
        match self.policy.alias(&q) {
            Some(targets) => targets
                .iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect(),
            None => vec![String::from_utf8_lossy(&q).into_owned()],
        }
    }

    /// Queues the notice of `kind` for `msg` (already in `area`), unless it is in
    /// the spool already, and records it in `msg`.
    pub(super) fn send_notice(&mut self, msg: &Message, kind: Kind, area: Area, why: Option<&str>) {
        let now = now_unix();
        let nid = msg.id.notice(match kind {
            Kind::Failed => 1,
            Kind::Delayed => 2,
        });
        let to = self.notice_to(msg);
        let what = match kind {
            Kind::Failed => "failure notice",
            Kind::Delayed => "delay warning",
        };
        if self.spool.holds(&nid) {
            log::info!("{}: {what} {nid} was already queued", msg.id);
        } else if let Err(e) = self.make_notice(msg, kind, &nid, &to, why, now) {
            log::error!("{}: cannot queue a {what}: {e}", msg.id);
            return;
        } else {
            self.stats
                .notices
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::info!(
                "{}: {what} {nid} queued for {}",
                msg.id,
                to.iter()
                    .map(|t| format!("<{t}>"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        let notice = nid.as_str().to_string();
        let record = match kind {
            Kind::Failed => Record::Notified { time: now, notice },
            Kind::Delayed => Record::Warned { time: now, notice },
        };
        let written = match area {
            Area::Queue => self.spool.record(&msg.id, &record),
            Area::Failed => self.spool.record_failed(&msg.id, &record),
        };
        if let Err(e) = written {
            log::error!("{}: cannot record the {what}: {e}", msg.id);
        }
        self.enqueue(nid);
    }

    fn make_notice(
        &self,
        msg: &Message,
        kind: Kind,
        nid: &QueueId,
        to: &[String],
        why: Option<&str>,
        now: u64,
    ) -> std::io::Result<()> {
        let headers = read_headers(msg)?;
        let rcpts: Vec<Rcpt> = msg
            .envelope
            .recipients
            .iter()
            .enumerate()
            .filter(|(i, _)| match kind {
                Kind::Failed => {
                    msg.rcpt_state[*i] == RcptState::Failed
                        || (why.is_some() && msg.rcpt_state[*i] == RcptState::Pending)
                }
                Kind::Delayed => msg.rcpt_state[*i] == RcptState::Pending,
            })
            .map(|(i, addr)| {
                let recorded = match msg.rcpt_state[i] {
                    RcptState::Failed => msg.replies[i].as_deref(),
                    _ => msg.last_reply.as_deref(),
                };
                let (relay, reply) = match recorded {
                    Some(r) => {
                        let (relay, reply) = notice::split_relay(r);
                        (relay, Some(reply.to_string()))
                    }
                    None => (None, None),
                };
                // The smarthost that answered: named in a deferral's record; for a
                // 5xx, the one smarthost when there is only one.
                let remote = match relay {
                    Some(name) => self.hosts.iter().find(|h| h.name() == name),
                    None if msg.rcpt_state[i] == RcptState::Failed && self.hosts.len() == 1 => {
                        self.hosts.first()
                    }
                    None => None,
                }
                .map(|h| h.conf.address.host.clone());
                Rcpt {
                    addr: addr.clone(),
                    reply,
                    remote,
                }
            })
            .collect();
        let utf8 = msg.envelope.smtputf8
            || !headers.is_ascii()
            || rcpts.iter().any(|r| !r.addr.is_ascii())
            || !msg.envelope.sender.is_ascii();
        let daemon = format!("MAILER-DAEMON@{}", self.config.hostname);
        let from = self.config.notify_from.as_deref().unwrap_or(&daemon);
        let text = Notice {
            kind,
            hostname: &self.config.hostname,
            id: &msg.id,
            sender: &msg.envelope.sender,
            to: &to.join(">, <"),
            from,
            arrival: msg.envelope.created,
            now,
            retry_until: (kind == Kind::Delayed)
                .then(|| msg.envelope.created + self.config.max_queue_lifetime.as_secs()),
            expired: why,
            rcpts,
            headers: &headers,
            utf8,
        }
        .render();
        let env = Envelope {
            created: now,
            client: notice::CLIENT.to_string(),
            helo: self.config.hostname.clone(),
            eight_bit: utf8,
            smtputf8: utf8 && (to.iter().any(|t| !t.is_ascii()) || !from.is_ascii()),
            sender: self.config.notify_from.clone().unwrap_or_default(),
            recipients: to.to_vec(),
        };
        let mut w = self.spool.create(nid.clone(), &env)?;
        w.write(&text)?;
        self.spool.commit(w)?;
        Ok(())
    }

    /// At start: notices owed by messages that failed just before a crash.
    pub(super) fn owed_notices(&mut self) {
        let Ok(ids) = self.spool.list_failed() else {
            return;
        };
        for id in ids {
            if let Ok(msg) = self.spool.read_failed(&id)
                && msg.notice_owed
                && self.wants_notice(&msg)
            {
                let expired = msg
                    .rcpt_state
                    .contains(&RcptState::Pending)
                    .then_some("message expired");
                self.send_notice(&msg, Kind::Failed, Area::Failed, expired);
            }
        }
    }

    /// After a deferral: the delay warning, once, when `delay_warning` has passed.
    pub(super) fn maybe_warn(&mut self, msg: &Message, now: u64) {
        let Some(after) = self.config.delay_warning else {
            return;
        };
        if msg.warned
            || !self.wants_notice(msg)
            || now.saturating_sub(msg.envelope.created) < after.as_secs()
        {
            return;
        }
        self.send_notice(msg, Kind::Delayed, Area::Queue, None);
    }
}

/// The message's header section, at most `notice::MAX_HEADERS` octets of it.
fn read_headers(msg: &Message) -> std::io::Result<Vec<u8>> {
    let mut content = msg.open_content()?.take(notice::MAX_HEADERS as u64);
    let mut buf = Vec::with_capacity(4096);
    content.read_to_end(&mut buf)?;
    let complete = (buf.len() as u64) == msg.size;
    let len = crate::header::header_len(&buf, complete).unwrap_or(buf.len());
    buf.truncate(len);
    Ok(buf)
}
