//! The relay thread: it owns the schedule of queued messages and the one connection
//! to the smarthost, and moves each message to delivered, deferred or failed.
//!
//! Workers send it the id of each newly queued message over a bounded channel; if
//! the channel is full they raise `rescan` instead, and the relay re-reads `queue/`.
//! At start it reads `queue/` and tries everything promptly.

mod upstream;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::Config;
use crate::protocol::client::{RcptResult, Reply, Stage, Transaction};
use crate::spool::{Message, QueueId, RcptState, ReadError, Record, Spool};
use crate::time::now_unix;
pub use upstream::{TlsClient, Upstream};

/// What the relay thread is told.
#[derive(Debug)]
pub enum Control {
    /// A message was committed to `queue/`.
    Queued(QueueId),
    /// Look at the stop flag and the rescan flag.
    Wake,
    /// A queue command from `smtp-relayd queue` / sendmail, and where to answer
    /// (boxed: a socket address is large, and every slot of the channel is as large
    /// as the largest message).
    Request(Box<(Request, Option<std::os::unix::net::SocketAddr>)>),
}

/// A queue command. The relay thread carries it out between deliveries, so it never
/// races a delivery in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// sendmail queued this message.
    Queued(QueueId),
    /// Try everything now.
    Flush,
    /// Remove a message from the queue or the failed area.
    Delete(QueueId),
    /// Put failed messages (one, or all: `None`) back in the queue.
    RetryFailed(Option<QueueId>),
}

impl Request {
    /// The datagram form: `queued ID`, `flush`, `delete ID`, `retry-failed ID|all`.
    pub fn encode(&self) -> String {
        match self {
            Request::Queued(id) => format!("queued {id}"),
            Request::Flush => "flush".into(),
            Request::Delete(id) => format!("delete {id}"),
            Request::RetryFailed(Some(id)) => format!("retry-failed {id}"),
            Request::RetryFailed(None) => "retry-failed all".into(),
        }
    }

    pub fn decode(text: &str) -> Option<Request> {
        let id = QueueId::parse;
        match text.split_once(' ').unwrap_or((text, "")) {
            ("queued", i) => id(i).map(Request::Queued),
            ("flush", "") => Some(Request::Flush),
            ("delete", i) => id(i).map(Request::Delete),
            ("retry-failed", "all") => Some(Request::RetryFailed(None)),
            ("retry-failed", i) => id(i).map(|i| Request::RetryFailed(Some(i))),
            _ => None,
        }
    }
}

/// The relay's answer to a queue command: what was done, or why it could not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Done(String),
    Failed(String),
}

impl Answer {
    /// The datagram form: `ok TEXT` or `error TEXT`.
    pub fn encode(&self) -> String {
        match self {
            Answer::Done(t) => format!("ok {t}"),
            Answer::Failed(t) => format!("error {t}"),
        }
    }

    /// Anything that is not `ok TEXT` is a failure, its text as it came.
    pub fn decode(text: &str) -> Answer {
        match text.split_once(' ') {
            Some(("ok", t)) => Answer::Done(t.to_string()),
            Some(("error", t)) => Answer::Failed(t.to_string()),
            _ => Answer::Failed(format!("unexpected answer from the daemon: {text:?}")),
        }
    }
}

/// The lock only the running relay holds (the daemon's relay thread, or a queue
/// command doing a delivery pass itself when no daemon runs).
pub fn lock_path(spool: &Spool) -> std::path::PathBuf {
    spool.root().join("relay.lock")
}

/// The datagram socket a running daemon takes queue commands on.
pub fn control_path(spool: &Spool) -> std::path::PathBuf {
    spool.root().join("control")
}

/// Tells a running daemon that a message was queued outside it (sendmail). Without a
/// daemon nothing happens: the next start finds the message.
pub fn notify_queued(spool: &Spool, id: &QueueId) {
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = s.send_to(
            Request::Queued(id.clone()).encode().as_bytes(),
            control_path(spool),
        );
    }
}

/// How often `queue/` is re-read even when nobody asked, as a safety net.
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// The delay before retry number `attempt` (1-based): `retry_min` doubled each time,
/// capped at `retry_max`.
pub fn backoff(config: &Config, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1).min(31))
        .unwrap_or(u32::MAX);
    config
        .retry_min
        .checked_mul(factor)
        .unwrap_or(config.retry_max)
        .min(config.retry_max)
}

pub struct Relay {
    config: Arc<Config>,
    spool: Arc<Spool>,
    rx: Receiver<Control>,
    stop: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    due: VecDeque<QueueId>,
    waiting: BinaryHeap<Reverse<(Instant, QueueId)>>,
    known: HashSet<QueueId>,
    conn: Option<Upstream>,
    tls: Option<TlsClient>,
    idle_since: Instant,
    last_scan: Instant,
}

impl Relay {
    pub fn new(
        config: Arc<Config>,
        spool: Arc<Spool>,
        rx: Receiver<Control>,
        stop: Arc<AtomicBool>,
        rescan: Arc<AtomicBool>,
        tls: Option<TlsClient>,
    ) -> Relay {
        Relay {
            config,
            spool,
            rx,
            stop,
            rescan,
            due: VecDeque::new(),
            waiting: BinaryHeap::new(),
            known: HashSet::new(),
            conn: None,
            tls,
            idle_since: Instant::now(),
            last_scan: Instant::now(),
        }
    }

    /// Takes the relay lock, waiting while a queue command holds it.
    fn lock(&self) -> Option<std::fs::File> {
        let open = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(&self.spool));
        match open.and_then(|f| f.lock().map(|()| f)) {
            Ok(f) => Some(f),
            Err(e) => {
                log::error!(
                    "relay: cannot lock {}: {e}",
                    lock_path(&self.spool).display()
                );
                None
            }
        }
    }

    /// One delivery pass over the whole queue, then QUIT (for `queue flush` when no
    /// daemon runs). The caller holds the relay lock.
    pub fn run_once(mut self) -> usize {
        self.scan();
        let mut tried = 0;
        while let Some(id) = self.due.pop_front() {
            self.deliver(id);
            tried += 1;
        }
        if let Some(c) = self.conn.take() {
            c.quit();
        }
        tried
    }

    pub fn run(mut self) {
        let _lock = self.lock();
        self.scan();
        if !self.due.is_empty() {
            log::info!("relay: {} message(s) in the queue at start", self.due.len());
        }
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(c) = self.rx.try_recv() {
                self.take(c);
            }
            if self.rescan.swap(false, Ordering::Relaxed)
                || self.last_scan.elapsed() >= RESCAN_EVERY
            {
                self.scan();
            }
            let now = Instant::now();
            while let Some(Reverse((at, _))) = self.waiting.peek() {
                if *at > now {
                    break;
                }
                let Reverse((_, id)) = self.waiting.pop().expect("peeked");
                self.due.push_back(id);
            }
            if let Some(id) = self.due.pop_front() {
                self.deliver(id);
                continue;
            }
            // Nothing due: sleep until the next retry, a new message, or the moment to
            // close an idle connection.
            let mut wait = self
                .waiting
                .peek()
                .map_or(RESCAN_EVERY, |Reverse((at, _))| {
                    at.saturating_duration_since(now)
                });
            wait = wait.min(RESCAN_EVERY);
            if self.conn.is_some() {
                let left = self
                    .config
                    .smarthost_idle
                    .saturating_sub(self.idle_since.elapsed());
                if left.is_zero() {
                    if let Some(c) = self.conn.take() {
                        log::debug!("relay: closing idle connection to {}", c.name);
                        c.quit();
                    }
                    continue;
                }
                wait = wait.min(left);
            }
            match self.rx.recv_timeout(wait) {
                Ok(c) => self.take(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(c) = self.conn.take() {
            c.quit();
        }
        log::info!(
            "relay: stopped; {} message(s) stay queued",
            self.known.len()
        );
    }

    fn take(&mut self, c: Control) {
        match c {
            Control::Queued(id) => self.enqueue(id),
            Control::Wake => {}
            Control::Request(boxed) => {
                let (req, reply_to) = *boxed;
                let answer = self.handle(req).encode();
                if let Some(addr) = reply_to {
                    let sent = std::os::unix::net::UnixDatagram::unbound()
                        .and_then(|s| s.send_to_addr(answer.as_bytes(), &addr));
                    if let Err(e) = sent {
                        log::warn!("relay: cannot answer the queue command: {e}");
                    }
                }
            }
        }
    }

    /// Puts a message on the due list, unless it is already scheduled.
    fn enqueue(&mut self, id: QueueId) {
        if self.known.insert(id.clone()) {
            self.due.push_back(id);
        }
    }

    /// Carries out a queue command.
    pub fn handle(&mut self, req: Request) -> Answer {
        let now = now_unix();
        match req {
            Request::Queued(id) => {
                self.enqueue(id);
                Answer::Done("queued".into())
            }
            Request::Flush => {
                self.scan();
                let n = self.waiting.len();
                while let Some(Reverse((_, id))) = self.waiting.pop() {
                    self.due.push_back(id);
                }
                log::info!(
                    "relay: flush requested: {} message(s) to try now",
                    self.due.len()
                );
                Answer::Done(format!(
                    "flushing {} message(s) ({n} were waiting for a retry)",
                    self.due.len()
                ))
            }
            Request::Delete(id) => {
                self.due.retain(|d| *d != id);
                self.waiting.retain(|Reverse((_, w))| *w != id);
                self.forget(&id);
                match self.spool.delete(&id) {
                    Ok(true) => {
                        log::info!("{id}: deleted by queue command");
                        Answer::Done(format!("deleted {id}"))
                    }
                    Ok(false) => Answer::Failed(format!("no message {id}")),
                    Err(e) => Answer::Failed(format!("cannot delete {id}: {e}")),
                }
            }
            Request::RetryFailed(which) => {
                let ids = match which {
                    Some(id) => vec![id],
                    None => self.spool.list_failed().unwrap_or_default(),
                };
                let mut moved = 0;
                for id in ids {
                    match self.spool.retry_failed(&id, now) {
                        Ok(true) => {
                            log::info!("{id}: back in the queue (retry-failed)");
                            moved += 1;
                            self.enqueue(id);
                        }
                        Ok(false) => return Answer::Failed(format!("no failed message {id}")),
                        Err(e) => return Answer::Failed(format!("cannot retry {id}: {e}")),
                    }
                }
                Answer::Done(format!("{moved} message(s) back in the queue"))
            }
        }
    }

    /// Puts every message in `queue/` that is not scheduled yet on the due list.
    fn scan(&mut self) {
        self.last_scan = Instant::now();
        match self.spool.list_queue() {
            Ok(ids) => {
                for id in ids {
                    self.enqueue(id);
                }
            }
            Err(e) => log::error!(
                "relay: cannot read {}/queue: {e}",
                self.spool.root().display()
            ),
        }
    }

    fn schedule(&mut self, id: QueueId, delay: Duration) {
        self.waiting.push(Reverse((Instant::now() + delay, id)));
    }

    fn forget(&mut self, id: &QueueId) {
        self.known.remove(id);
    }

    fn read(&mut self, id: &QueueId) -> Option<Message> {
        match self.spool.read(id) {
            Ok(m) => Some(m),
            Err(ReadError::Missing) => {
                self.forget(id);
                None
            }
            Err(ReadError::Corrupt(why)) => {
                match self.spool.move_aside(id) {
                    Ok(()) => log::error!(
                        "{id}: spool file is damaged ({why}); moved to {}/corrupt/",
                        self.spool.root().display()
                    ),
                    Err(e) => log::error!(
                        "{id}: spool file is damaged ({why}); cannot move it aside: {e}"
                    ),
                }
                self.forget(id);
                None
            }
            Err(ReadError::Io(e)) => {
                log::warn!("{id}: cannot read spool file: {e}; will try again");
                self.schedule(id.clone(), self.config.retry_min);
                None
            }
        }
    }

    fn deliver(&mut self, id: QueueId) {
        let Some(msg) = self.read(&id) else { return };
        let now = now_unix();
        if msg.attempts == 0 && msg.envelope.client.starts_with("local ") {
            // No worker logged it: the daemon's log names it before its first try.
            log_local(&msg);
        }
        let pending: Vec<usize> = (0..msg.rcpt_state.len())
            .filter(|&i| msg.rcpt_state[i] == RcptState::Pending)
            .collect();
        if pending.is_empty() {
            self.finish(&msg, now);
            return;
        }
        // An old message is still tried: it expires only when an attempt defers
        // (as Postfix does), so a smarthost back after a long outage gets it.
        let rcpts: Vec<&str> = pending
            .iter()
            .map(|&i| msg.envelope.recipients[i].as_str())
            .collect();
        // rewrite_sender and rewrite_from apply as the message leaves, so a changed
        // setting reaches mail already queued. The null sender is never rewritten.
        let config = Arc::clone(&self.config);
        let sender = match &config.rewrite_sender {
            Some(s) if !msg.envelope.sender.is_empty() => s.as_str(),
            _ => msg.envelope.sender.as_str(),
        };
        let header = config
            .rewrite_from
            .as_deref()
            .and_then(|new| rewritten_header(&msg, new));
        // Lines over 998 octets: the parts that allow it go re-encoded (two passes
        // over the file, only for such messages), the rest folded by the stuffer.
        let plan = if msg.long_lines {
            plan_long_lines(&msg, header.as_ref())
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
        let mut results = None;
        // A reused connection may have been closed by the server while idle; that
        // costs one reconnect, not a deferral.
        for fresh_try in [false, true] {
            let reused = self.conn.is_some() && !fresh_try;
            let conn = match self.connection() {
                Ok(c) => c,
                Err(reply) => {
                    self.defer_everything_due(msg, &reply);
                    return;
                }
            };
            if let Err(reply) = conn.check(&tx) {
                results = Some(vec![RcptResult::Failed(reply); rcpts.len()]);
                break;
            }
            match conn.send(&tx, &msg, header.as_ref(), plan.as_ref()) {
                Ok(r) => {
                    results = Some(r);
                    break;
                }
                Err(r) => {
                    self.conn = None;
                    let nothing_happened = r.iter().all(|x| matches!(x, RcptResult::Deferred(_)));
                    results = Some(r);
                    if !(reused && nothing_happened) {
                        break;
                    }
                    log::debug!("relay: reused connection failed; reconnecting");
                }
            }
        }
        self.idle_since = Instant::now();
        let results = results.unwrap_or_default();
        // Results and their delay= are of the moment the smarthost answered.
        self.apply(msg, &pending, &results, now_unix());
    }

    /// The open connection, or a new one. A failure is logged here, in one line.
    fn connection(&mut self) -> Result<&mut Upstream, Reply> {
        if self.conn.is_none() {
            let c = Upstream::connect(&self.config, self.tls.as_ref()).map_err(|e| {
                let password = self.config.smarthost_auth == crate::config::SmarthostAuth::Password;
                if e.stage == Stage::Auth && e.reply.is_permanent() && password {
                    log::error!(
                        "relay: {} refused our credentials ({}): check smarthost_user and \
                         smarthost_password_file; mail stays queued",
                        self.config.smarthost,
                        e.reply
                    );
                } else if e.stage == Stage::Auth && e.reply.is_permanent() {
                    log::error!(
                        "relay: {} refused a fresh OAuth2 token ({}): check smarthost_user (the \
                         mailbox the token is for), the app's permission to send (Microsoft: \
                         SMTP.SendAsApp or SMTP.Send, and SMTP AUTH enabled for the mailbox; \
                         Google: the https://mail.google.com/ scope); mail stays queued",
                        self.config.smarthost,
                        e.reply
                    );
                } else {
                    log::warn!("relay: {}", e.reply);
                }
                e.reply
            })?;
            log::debug!("relay: connected to {}", c.name);
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    fn expired(&self, msg: &Message, now: u64) -> bool {
        now.saturating_sub(msg.envelope.created) >= self.config.max_queue_lifetime.as_secs()
    }

    /// The smarthost cannot be reached: this message and all others due now wait for
    /// their next try, each by its own schedule, without a connection attempt each.
    fn defer_everything_due(&mut self, first: Message, reply: &Reply) {
        let now = now_unix();
        self.defer(&first, reply, now);
        while let Some(id) = self.due.pop_front() {
            if let Some(msg) = self.read(&id) {
                self.defer(&msg, reply, now);
            }
        }
    }

    fn defer(&mut self, msg: &Message, reply: &Reply, now: u64) {
        if self.expired(msg, now) {
            self.fail_message(msg, now, &format!("message expired; last error: {reply}"));
            return;
        }
        let delay = backoff(&self.config, msg.attempts + 1);
        let next = now + delay.as_secs();
        if let Err(e) = self.spool.record(
            &msg.id,
            &Record::Deferred {
                time: now,
                next,
                reply: reply.to_string(),
            },
        ) {
            log::error!("{}: cannot record deferral: {e}", msg.id);
        }
        for (i, r) in msg.envelope.recipients.iter().enumerate() {
            if msg.rcpt_state[i] == RcptState::Pending {
                log::info!(
                    "{}: to=<{r}>, relay={}, delay={}s, status=deferred ({reply}), next try in {}s",
                    msg.id,
                    self.config.smarthost,
                    now.saturating_sub(msg.envelope.created),
                    delay.as_secs()
                );
            }
        }
        self.schedule(msg.id.clone(), delay);
    }

    fn apply(&mut self, mut msg: Message, pending: &[usize], results: &[RcptResult], now: u64) {
        let mut deferred: Option<Reply> = None;
        let delay = now.saturating_sub(msg.envelope.created);
        // Delivered to everyone at once: the file goes, and the per-recipient records
        // (a sync each) would be written for nothing.
        let whole = results.len() == pending.len()
            && results
                .iter()
                .all(|r| matches!(r, RcptResult::Delivered(_)));
        for (&i, r) in pending.iter().zip(results) {
            let rcpt = &msg.envelope.recipients[i];
            let relay = &self.config.smarthost;
            match r {
                RcptResult::Delivered(reply) => {
                    log::info!(
                        "{}: to=<{rcpt}>, relay={relay}, delay={delay}s, status=sent ({reply})",
                        msg.id
                    );
                    // Delivered to everyone at once, the file is removed: no record.
                    if !whole
                        && let Err(e) = self.spool.record(
                            &msg.id,
                            &Record::Delivered {
                                rcpt: i,
                                time: now,
                                reply: reply.to_string(),
                            },
                        )
                    {
                        log::error!(
                            "{}: cannot record delivery (it may be sent again): {e}",
                            msg.id
                        );
                    }
                    msg.rcpt_state[i] = RcptState::Delivered;
                }
                RcptResult::Failed(reply) => {
                    log::warn!(
                        "{}: to=<{rcpt}>, relay={relay}, delay={delay}s, status=failed ({reply})",
                        msg.id
                    );
                    if let Err(e) = self.spool.record(
                        &msg.id,
                        &Record::Failed {
                            rcpt: i,
                            time: now,
                            reply: reply.to_string(),
                        },
                    ) {
                        log::error!("{}: cannot record failure: {e}", msg.id);
                    }
                    msg.rcpt_state[i] = RcptState::Failed;
                }
                RcptResult::Deferred(reply) => {
                    deferred.get_or_insert_with(|| reply.clone());
                }
            }
        }
        match deferred {
            Some(reply) => self.defer(&msg, &reply, now),
            None if results.len() < pending.len() => {
                self.defer(
                    &msg,
                    &Reply::new(451, "4.3.0 no result for every recipient"),
                    now,
                );
            }
            None => self.finish(&msg, now),
        }
    }

    /// Every recipient has a final result.
    fn finish(&mut self, msg: &Message, now: u64) {
        let failed = msg
            .rcpt_state
            .iter()
            .filter(|s| **s == RcptState::Failed)
            .count();
        if failed > 0 {
            self.fail_message(msg, now, &format!("{failed} recipient(s) failed"));
            return;
        }
        match self.spool.remove(&msg.id) {
            Ok(()) => log::info!("{}: removed (delivered)", msg.id),
            Err(e) => log::error!("{}: delivered, but cannot remove spool file: {e}", msg.id),
        }
        self.forget(&msg.id);
    }

    fn fail_message(&mut self, msg: &Message, now: u64, why: &str) {
        match self.spool.move_to_failed(&msg.id, now, why) {
            Ok(()) => log::error!(
                "{}: failed: {why}; moved to {}/failed/",
                msg.id,
                self.spool.root().display()
            ),
            Err(e) => log::error!("{}: failed: {why}; cannot move to failed/: {e}", msg.id),
        }
        self.forget(&msg.id);
    }
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

/// The line a worker writes for a message from a client, for one that `sendmail`
/// queued: `ID: from=<S>, to=<R>,..., size=N, nrcpt=N, client=local uid=N`.
fn log_local(msg: &Message) {
    let to: Vec<String> = msg
        .envelope
        .recipients
        .iter()
        .map(|r| format!("<{r}>"))
        .collect();
    log::info!(
        "{}: from=<{}>, to={}, size={}, nrcpt={}, client={}",
        msg.id,
        msg.envelope.sender,
        to.join(","),
        msg.size,
        msg.envelope.recipients.len(),
        msg.envelope.client
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn backoff_doubles_and_caps() {
        let c = Config::parse(
            Path::new("t"),
            "smarthost a.b:25\nretry_min 1m\nretry_max 10m\n",
        )
        .unwrap();
        let secs: Vec<u64> = (1..=7).map(|a| backoff(&c, a).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(backoff(&c, 1000).as_secs(), 600);
    }

    /// The control socket's two datagram forms parse back to what was sent.
    #[test]
    fn requests_and_answers_round_trip() {
        let id = QueueId::parse("19A2B3C4D5E6F7080001ABC").unwrap();
        let requests = [
            Request::Queued(id.clone()),
            Request::Flush,
            Request::Delete(id.clone()),
            Request::RetryFailed(Some(id)),
            Request::RetryFailed(None),
        ];
        for r in requests {
            assert_eq!(Request::decode(&r.encode()), Some(r));
        }
        for bad in ["", "flush now", "delete ../x", "queued", "retry-failed"] {
            assert_eq!(Request::decode(bad), None, "{bad}");
        }
        for a in [
            Answer::Done("deleted X".into()),
            Answer::Failed("no message X".into()),
        ] {
            assert_eq!(Answer::decode(&a.encode()), a);
        }
        assert!(matches!(Answer::decode("garbage"), Answer::Failed(_)));
    }
}
