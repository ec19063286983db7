//! A delivery lane: one thread, one connection to one smarthost (kept open for the
//! next job for `smarthost_idle`), one job at a time. The scheduler hands it a job
//! only when it is free, and the lane hands back the message with the results; it
//! writes nothing to the spool, so each spool file has one writer, the scheduler.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::hosts::Hosts;
use super::upstream::{self, ConnectError, Upstream};
use crate::config::Config;
use crate::protocol::client::{RcptResult, Reply, Transaction};
use crate::spool::{Message, QueueId};

/// Recipients of one message that go the same route, and the smarthosts already
/// tried for them in this attempt (a bit per index).
#[derive(Debug)]
pub struct Job {
    pub id: QueueId,
    pub route: usize,
    pub rcpts: Vec<usize>,
    pub tried: u64,
}

/// A job on its way to a lane, with the message read from the spool.
pub struct Work {
    pub job: Job,
    pub msg: Message,
}

pub enum Result {
    /// The smarthost could not be used; nothing was sent for this job.
    Unusable(ConnectError),
    /// One result per recipient of the job, in its order (fewer: the rest is not
    /// known, and is deferred).
    Done(Vec<RcptResult>),
}

pub struct Outcome {
    pub job: Job,
    pub host: usize,
    pub msg: Message,
    pub result: Result,
}

/// The lane's loop: until the scheduler drops its end of `jobs`.
pub fn run(
    config: Arc<Config>,
    hosts: Hosts,
    host: usize,
    jobs: Receiver<Work>,
    done: Sender<Outcome>,
) {
    let mut conn: Option<Upstream> = None;
    let mut idle_since = Instant::now();
    loop {
        let idle = hosts[host].conf.idle;
        let work = match &conn {
            Some(_) => match jobs.recv_timeout(idle.saturating_sub(idle_since.elapsed())) {
                Ok(w) => w,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(c) = conn.take() {
                        log::debug!("relay: closing idle connection to {}", c.name);
                        c.quit();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match jobs.recv() {
                Ok(w) => w,
                Err(_) => break,
            },
        };
        let Work { job, msg } = work;
        // A bug in one delivery must not take the lane (and its slot) away.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deliver(&config, &hosts, host, &mut conn, &job, &msg)
        }))
        .unwrap_or_else(|_| {
            conn = None;
            log::error!("{}: delivery panicked; the message is deferred", job.id);
            Result::Done(Vec::new())
        });
        idle_since = Instant::now();
        let outcome = Outcome {
            job,
            host,
            msg,
            result,
        };
        if done.send(outcome).is_err() {
            break;
        }
    }
    if let Some(c) = conn.take() {
        c.quit();
    }
}

/// One job over the open connection or a new one. A reused connection may have been
/// closed by the server while idle; that costs one reconnect, not a deferral.
fn deliver(
    config: &Config,
    hosts: &Hosts,
    host: usize,
    conn: &mut Option<Upstream>,
    job: &Job,
    msg: &Message,
) -> Result {
    let rcpts: Vec<&str> = job
        .rcpts
        .iter()
        .map(|&i| msg.envelope.recipients[i].as_str())
        .collect();
    // rewrite_sender and rewrite_from apply as the message leaves, so a changed
    // setting reaches mail already queued. The null sender is never rewritten.
    let sender = match &config.rewrite_sender {
        Some(s) if !msg.envelope.sender.is_empty() => s.as_str(),
        _ => msg.envelope.sender.as_str(),
    };
    let header = config
        .rewrite_from
        .as_deref()
        .and_then(|new| rewritten_header(msg, new));
    // Lines over 998 octets: the parts that allow it go re-encoded (two passes
    // over the file, only for such messages), the rest folded by the stuffer.
    let plan = if msg.long_lines {
        plan_long_lines(msg, header.as_ref())
    } else {
        None
    };
    let size = match (&plan, &header) {
        (Some((_, encoded)), _) => *encoded,
        (None, Some(h)) => msg.size - h.skip + h.text.len() as u64,
        (None, None) => msg.size,
    };
    let plan = plan.map(|(p, _)| p);
    let tx = Transaction {
        sender,
        recipients: &rcpts,
        size,
        eight_bit: msg.envelope.eight_bit,
        smtputf8: msg.envelope.smtputf8,
    };
    let mut results = Vec::new();
    for fresh_try in [false, true] {
        let reused = conn.is_some() && !fresh_try;
        if conn.is_none() {
            match Upstream::connect(&config.hostname, &hosts[host]) {
                Ok(c) => {
                    log::debug!("relay: connected to {}", c.name);
                    *conn = Some(c);
                }
                Err(e) => return Result::Unusable(e),
            }
        }
        let c = conn.as_mut().expect("just set");
        if let Err(reply) = c.check(&tx) {
            return Result::Done(vec![RcptResult::Failed(reply); rcpts.len()]);
        }
        match c.send(&tx, msg, header.as_ref(), plan.as_ref()) {
            Ok(r) => return Result::Done(r),
            Err(r) => {
                *conn = None;
                let nothing_happened = r.iter().all(|x| matches!(x, RcptResult::Deferred(_)));
                results = r;
                if !(reused && nothing_happened) {
                    break;
                }
                log::debug!("relay: reused connection failed; reconnecting");
            }
        }
    }
    Result::Done(results)
}

/// A reply for what the relay itself could not do.
pub fn local(text: &str) -> Reply {
    Reply::new(451, text)
}

/// The re-encoding of a message with lines over 998 octets, and its size as sent;
/// `None` when the file cannot be read (it is then folded by the stuffer).
fn plan_long_lines(
    msg: &Message,
    header: Option<&upstream::Header>,
) -> Option<(crate::longlines::Plan, u64)> {
    use crate::longlines::{Encoder, Planner};
    use std::io::Read;
    let run = || -> std::io::Result<(crate::longlines::Plan, u64)> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut planner = Planner::new();
        let mut r = upstream::outgoing(msg, header)?;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            planner.feed(&buf[..n]);
        }
        let plan = planner.finish();
        let mut encoder = Encoder::new(plan.clone());
        let (mut out, mut size) = (Vec::new(), 0u64);
        let mut r = upstream::outgoing(msg, header)?;
        loop {
            let n = r.read(&mut buf)?;
            out.clear();
            if n == 0 {
                encoder.finish(&mut out);
                size += out.len() as u64;
                break;
            }
            encoder.feed(&buf[..n], &mut out);
            size += out.len() as u64;
        }
        Ok((plan, size))
    };
    match run() {
        Ok((plan, size)) => {
            match plan.reencoded() {
                0 => log::info!(
                    "{}: lines over 998 octets, folded (no part could be re-encoded)",
                    msg.id
                ),
                n => log::info!(
                    "{}: lines over 998 octets: {n} part(s) sent as quoted-printable",
                    msg.id
                ),
            }
            Some((plan, size))
        }
        Err(e) => {
            log::warn!(
                "{}: cannot read the message to re-encode it: {e}; long lines folded",
                msg.id
            );
            None
        }
    }
}

/// The header section of a message with `From:` rewritten to `new`, and how many
/// octets of the content it replaces; `None` when nothing changes or the header
/// cannot be read (the message then goes as it is, which the log says).
fn rewritten_header(msg: &Message, new: &str) -> Option<upstream::Header> {
    use std::io::Read;
    let mut content = match msg.open_content() {
        Ok(c) => c,
        Err(e) => {
            log::warn!("{}: cannot read the header to rewrite From: {e}", msg.id);
            return None;
        }
    };
    let mut buf = Vec::with_capacity(crate::rewrite::HEADER_CAP.min(msg.size as usize));
    if let Err(e) = (&mut content)
        .take(crate::rewrite::HEADER_CAP as u64)
        .read_to_end(&mut buf)
    {
        log::warn!("{}: cannot read the header to rewrite From: {e}", msg.id);
        return None;
    }
    let complete = buf.len() as u64 == msg.size;
    let Some(len) = crate::rewrite::header_len(&buf, complete) else {
        log::warn!(
            "{}: header section longer than {} octets; From: not rewritten",
            msg.id,
            crate::rewrite::HEADER_CAP
        );
        return None;
    };
    let text = crate::rewrite::rewrite_from(&buf[..len], new)?;
    log::debug!("{}: From: rewritten to <{new}>", msg.id);
    Some(upstream::Header {
        text,
        skip: len as u64,
    })
}
