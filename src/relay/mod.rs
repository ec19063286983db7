//! The relay thread: it owns the schedule of queued messages and the one connection
//! to the smarthost, and moves each message to delivered, deferred or failed.
//!
//! Workers send it the id of each newly queued message over a bounded channel; if
//! the channel is full they raise `rescan` instead, and the relay re-reads `queue/`.
//! At start it reads `queue/` and tries everything promptly.

pub mod hosts;
mod lane;
mod notices;
mod upstream;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::notice;
use crate::protocol::client::{RcptResult, Reply};
use crate::spool::{Message, QueueId, RcptState, ReadError, Record, Spool};
use crate::time::now_unix;
pub use hosts::{Host, Hosts};
use lane::{Job, Outcome, Work, local};
pub use upstream::{TlsClient, Upstream, trace as upstream_trace};

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
    /// SIGHUP: deliver with these from now on.
    Reload(Box<Settings>),
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
    /// `smtp-relayd status`: the daemon's counters and smarthosts (answered by the
    /// control thread itself, so a busy relay does not delay it).
    Status,
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
            Request::Status => "status".into(),
        }
    }

    pub fn decode(text: &str) -> Option<Request> {
        let id = QueueId::parse;
        match text.split_once(' ').unwrap_or((text, "")) {
            ("queued", i) => id(i).map(Request::Queued),
            ("flush", "") => Some(Request::Flush),
            ("status", "") => Some(Request::Status),
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

/// What the relay last wrote of its smarthosts' health, for `status`.
pub fn state_path(spool: &Spool) -> std::path::PathBuf {
    spool.root().join("state")
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

/// What the relay delivers with: the config, the smarthosts, the aliases (for
/// notices). A reload hands it a new set.
#[derive(Clone)]
pub struct Settings {
    pub config: Arc<Config>,
    pub hosts: Hosts,
    pub policy: Arc<crate::protocol::policy::Policy>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Settings({} smarthost(s))", self.hosts.len())
    }
}

/// The flags the relay looks at: stop, and re-read `queue/`.
#[derive(Clone, Default)]
pub struct Flags {
    pub stop: Arc<AtomicBool>,
    pub rescan: Arc<AtomicBool>,
}

pub struct Relay {
    config: Arc<Config>,
    spool: Arc<Spool>,
    rx: Receiver<Control>,
    stop: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    due: VecDeque<QueueId>,
    waiting: BinaryHeap<Reverse<(Instant, QueueId)>>,
    /// Every id scheduled: due, waiting, or being delivered.
    known: HashSet<QueueId>,
    hosts: Hosts,
    /// For the notices' recipients: qualification and aliases.
    policy: Arc<crate::protocol::policy::Policy>,
    /// Counters for `status` and the metrics.
    stats: Arc<crate::stats::Stats>,
    lanes: Vec<Lanes>,
    done_tx: Sender<Outcome>,
    done_rx: Receiver<Outcome>,
    /// Messages with jobs placed or in a lane.
    progress: HashMap<QueueId, Progress>,
    last_scan: Instant,
    /// Shutting down: no job starts any more.
    stopping: bool,
}

/// One smarthost's lanes: the channel they take work from, how many are busy, the
/// jobs waiting for one, the threads.
struct Lanes {
    tx: Option<Sender<Work>>,
    busy: usize,
    backlog: VecDeque<Job>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A message being delivered: its jobs not finished, and what they found so far.
#[derive(Default)]
struct Progress {
    jobs: usize,
    /// Jobs of it in a lane now.
    running: usize,
    /// It was split across routes: the records hold each route's results.
    split: bool,
    /// The first deferral's reason, and the smarthost it came from.
    deferred: Option<(Reply, Option<usize>)>,
    /// The smarthost last tried for each recipient, for the log.
    tried: Vec<(usize, usize)>,
}

impl Relay {
    pub fn new(
        settings: Settings,
        spool: Arc<Spool>,
        rx: Receiver<Control>,
        flags: Flags,
        stats: Arc<crate::stats::Stats>,
    ) -> Relay {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let Settings {
            config,
            hosts,
            policy,
        } = settings;
        Relay {
            config,
            spool,
            rx,
            stop: flags.stop,
            rescan: flags.rescan,
            due: VecDeque::new(),
            waiting: BinaryHeap::new(),
            known: HashSet::new(),
            lanes: Vec::new(),
            hosts,
            policy,
            stats,
            done_tx,
            done_rx,
            progress: HashMap::new(),
            last_scan: Instant::now(),
            stopping: false,
        }
    }

    /// Starts every smarthost's lanes: `smarthost_connections` threads each.
    fn start_lanes(&mut self) {
        for (i, h) in self.hosts.iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded::<Work>();
            let mut threads = Vec::new();
            for n in 0..h.conf.connections {
                let (config, hosts, rx, done) = (
                    Arc::clone(&self.config),
                    Arc::clone(&self.hosts),
                    rx.clone(),
                    self.done_tx.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name(format!("relay-{i}.{n}"))
                    .stack_size(256 * 1024)
                    .spawn(move || lane::run(config, hosts, i, rx, done));
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => log::error!("relay: cannot start a lane for {}: {e}", h.name()),
                }
            }
            self.lanes.push(Lanes {
                tx: Some(tx),
                busy: 0,
                backlog: VecDeque::new(),
                threads,
            });
        }
    }

    /// Drops the lanes' channels (each lane says QUIT and ends) and waits for them.
    fn stop_lanes(&mut self) {
        for l in &mut self.lanes {
            l.tx = None;
        }
        for l in &mut self.lanes {
            for t in l.threads.drain(..) {
                let _ = t.join();
            }
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
    /// daemon runs). The caller holds the relay lock. Returns the messages tried.
    pub fn run_once(mut self) -> usize {
        self.start_lanes();
        self.owed_notices();
        self.scan();
        let tried = self.due.len();
        while let Some(id) = self.due.pop_front() {
            self.start(id);
        }
        while !self.progress.is_empty() {
            match self.done_rx.recv() {
                Ok(o) => self.finished(o),
                Err(_) => break,
            }
        }
        self.stop_lanes();
        tried
    }

    pub fn run(mut self) {
        let _lock = self.lock();
        self.start_lanes();
        self.owed_notices();
        self.scan();
        if !self.due.is_empty() {
            log::info!("relay: {} message(s) in the queue at start", self.due.len());
        }
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(c) = self.rx.try_recv() {
                self.take(c);
            }
            while let Ok(o) = self.done_rx.try_recv() {
                self.finished(o);
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
                self.start(id);
                continue;
            }
            // Nothing due: sleep until the next retry, a new message, a lane's result.
            let wait = self
                .waiting
                .peek()
                .map_or(RESCAN_EVERY, |Reverse((at, _))| {
                    at.saturating_duration_since(now)
                })
                .min(RESCAN_EVERY);
            crossbeam_channel::select! {
                recv(self.rx) -> c => match c {
                    Ok(c) => self.take(c),
                    Err(_) => break,
                },
                recv(self.done_rx) -> o => {
                    if let Ok(o) = o {
                        self.finished(o);
                    }
                }
                default(wait) => {}
            }
        }
        // Stopping: no new job starts; the ones in a lane finish and are recorded.
        self.stopping = true;
        for l in &mut self.lanes {
            l.backlog.clear();
        }
        while self.lanes.iter().any(|l| l.busy > 0) {
            match self.done_rx.recv() {
                Ok(o) => self.finished(o),
                Err(_) => break,
            }
        }
        self.stop_lanes();
        self.save_state(Some(now_unix()));
        log::info!(
            "relay: stopped; {} message(s) stay queued",
            self.spool
                .list_queue()
                .map_or(self.known.len(), |q| q.len())
        );
    }

    fn take(&mut self, c: Control) {
        match c {
            Control::Queued(id) => self.enqueue(id),
            Control::Wake => {}
            Control::Reload(settings) => self.reload(*settings),
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

    /// A reload: the deliveries under way finish with the old settings; then the
    /// lanes are made again for the new smarthosts (each keeping the health of the
    /// one of the same name), and the schedule goes on: messages waiting for a retry
    /// keep their time, the rest is due.
    fn reload(&mut self, settings: Settings) {
        self.stopping = true;
        for l in &mut self.lanes {
            l.backlog.clear();
        }
        while self.lanes.iter().any(|l| l.busy > 0) {
            match self.done_rx.recv() {
                Ok(o) => self.finished(o),
                Err(_) => break,
            }
        }
        self.stopping = false;
        self.progress.clear();
        self.stop_lanes();
        self.lanes.clear();
        for h in settings.hosts.iter() {
            if let Some(old) = self.hosts.iter().find(|o| o.name() == h.name()) {
                h.carry_health(old);
            }
        }
        self.config = settings.config;
        self.hosts = settings.hosts;
        self.policy = settings.policy;
        self.start_lanes();
        self.due.clear();
        self.known = self
            .waiting
            .iter()
            .map(|Reverse((_, id))| id.clone())
            .collect();
        self.scan();
        log::info!(
            "relay: reloaded: {} smarthost(s); {} message(s) due now",
            self.hosts.len(),
            self.due.len()
        );
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
                for h in self.hosts.iter() {
                    h.retry_now();
                }
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
                // A delivery of it in flight ends first (it is then delivered once,
                // or deleted and never sent), as a delete waits for the relay.
                while self.progress.get(&id).is_some_and(|p| p.running > 0) {
                    match self.done_rx.recv() {
                        Ok(o) => self.finished(o),
                        Err(_) => break,
                    }
                }
                self.due.retain(|d| *d != id);
                self.waiting.retain(|Reverse((_, w))| *w != id);
                for l in &mut self.lanes {
                    l.backlog.retain(|j| j.id != id);
                }
                self.progress.remove(&id);
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
            Request::Status => {
                let hosts = self.hosts.iter().map(|h| h.status()).collect();
                Answer::Done(crate::stats::Snapshot::of(&self.stats, hosts).encode())
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

    /// A message is due: its pending recipients, grouped by route, become jobs.
    fn start(&mut self, id: QueueId) {
        if self.progress.contains_key(&id) {
            return;
        }
        let Some(msg) = self.read(&id) else { return };
        if msg.attempts == 0 && msg.envelope.client.starts_with("local ") {
            // No worker logged it: the daemon's log names it before its first try.
            log_local(&msg);
        }
        // An old message is still tried: it expires only when an attempt defers
        // (as Postfix does), so a smarthost back after a long outage gets it.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        let sender = msg.envelope.sender.as_bytes();
        for (i, r) in msg.envelope.recipients.iter().enumerate() {
            if msg.rcpt_state[i] != RcptState::Pending {
                continue;
            }
            let route = self.config.route_of(sender, r.as_bytes());
            match groups.iter_mut().find(|(g, _)| *g == route) {
                Some((_, rcpts)) => rcpts.push(i),
                None => groups.push((route, vec![i])),
            }
        }
        if groups.is_empty() {
            self.finish(&msg, now_unix());
            return;
        }
        self.progress.insert(
            id.clone(),
            Progress {
                jobs: groups.len(),
                split: groups.len() > 1,
                ..Progress::default()
            },
        );
        let mut msg = Some(msg);
        for (route, rcpts) in groups {
            let job = Job {
                id: id.clone(),
                route,
                rcpts,
                tried: 0,
            };
            let host = hosts::pick(
                &self.hosts,
                &self.config.routes[route].hosts,
                0,
                Instant::now(),
            )
            .expect("a route has a smarthost");
            self.place(job, host, msg.take());
        }
    }

    /// Gives the job to a free lane of `host`, or puts it in that smarthost's backlog.
    fn place(&mut self, job: Job, host: usize, msg: Option<Message>) {
        if self.stopping {
            // It stays queued on disk for the next start.
            return self.abandon(job);
        }
        let lanes = &mut self.lanes[host];
        if lanes.busy >= lanes.threads.len().max(1) || !lanes.backlog.is_empty() {
            lanes.backlog.push_back(job);
            return;
        }
        let msg = match msg {
            Some(m) => m,
            None => match self.read(&job.id) {
                Some(m) => m,
                None => return self.abandon(job),
            },
        };
        self.send(job, host, msg);
    }

    fn send(&mut self, job: Job, host: usize, msg: Message) {
        if let Some(p) = self.progress.get_mut(&job.id) {
            p.running += 1;
            for &i in &job.rcpts {
                p.tried.retain(|(r, _)| *r != i);
                p.tried.push((i, host));
            }
        }
        let lanes = &mut self.lanes[host];
        lanes.busy += 1;
        let work = Work { job, msg };
        let refused = match &lanes.tx {
            Some(tx) => tx.send(work).err().map(|e| e.into_inner()),
            None => Some(work),
        };
        if let Some(Work { job, .. }) = refused {
            // No lane takes it (none could be started): it waits for its retry.
            lanes.busy -= 1;
            if let Some(p) = self.progress.get_mut(&job.id) {
                p.running -= 1;
            }
            let reply = local("4.3.0 no delivery lane for this smarthost");
            self.job_deferred(job, reply, Some(host));
        }
    }

    /// Hands backlogged jobs to the lanes that are free.
    fn pump(&mut self, host: usize) {
        loop {
            let lanes = &mut self.lanes[host];
            if lanes.busy >= lanes.threads.len() {
                return;
            }
            let Some(job) = lanes.backlog.pop_front() else {
                return;
            };
            match self.read(&job.id) {
                Some(msg) => self.send(job, host, msg),
                None => self.abandon(job),
            }
        }
    }

    /// The message of `job` is gone or cannot be read now: it has no result.
    fn abandon(&mut self, job: Job) {
        if let Some(p) = self.progress.get_mut(&job.id) {
            p.jobs -= 1;
            if p.jobs == 0 {
                self.progress.remove(&job.id);
            }
        }
    }

    /// A lane is done with a job.
    fn finished(&mut self, o: Outcome) {
        let Outcome {
            job,
            host,
            msg,
            result,
        } = o;
        self.lanes[host].busy -= 1;
        if let Some(p) = self.progress.get_mut(&job.id) {
            p.running -= 1;
        }
        let was_failing = self.hosts[host].health().failures > 0;
        self.finished_result(job, host, msg, result);
        if (self.hosts[host].health().failures > 0) != was_failing {
            self.save_state(None);
        }
        self.stats.changed();
        for h in 0..self.lanes.len() {
            self.pump(h);
        }
    }

    /// `SPOOL/state`: what `status` shows of the smarthosts when no daemon runs.
    fn save_state(&self, stopped: Option<u64>) {
        let hosts = self.hosts.iter().map(|h| h.status()).collect();
        let mut snap = crate::stats::Snapshot::of(&self.stats, hosts);
        snap.stopped = stopped;
        if let Err(e) = snap.save(&state_path(&self.spool)) {
            log::warn!(
                "relay: cannot write {}: {e}",
                state_path(&self.spool).display()
            );
        }
    }

    fn finished_result(&mut self, mut job: Job, host: usize, msg: Message, result: lane::Result) {
        match result {
            lane::Result::Unusable(e) => {
                let skip = self.hosts[host].failed(&self.config, &e.reply);
                self.log_unusable(host, &e, skip);
                job.tried |= 1 << host;
                // This job and those waiting for the same smarthost go to the next
                // one of their route; with none left, they wait for their retry.
                let mut jobs = vec![(job, Some(msg))];
                jobs.extend(self.lanes[host].backlog.drain(..).map(|j| (j, None)));
                let mut moved: Vec<(usize, usize)> = Vec::new();
                let now = Instant::now();
                for (mut j, m) in jobs {
                    j.tried |= 1 << host;
                    let route = &self.config.routes[j.route].hosts;
                    match hosts::pick(&self.hosts, route, j.tried, now) {
                        Some(next) => {
                            match moved.iter_mut().find(|(h, _)| *h == next) {
                                Some((_, n)) => *n += 1,
                                None => moved.push((next, 1)),
                            }
                            self.place(j, next, m);
                        }
                        None => self.job_deferred(j, e.reply.clone(), Some(host)),
                    }
                }
                for (next, n) in moved {
                    log::info!(
                        "relay: failing over from {} to {}: {n} message(s)",
                        self.hosts[host].name(),
                        self.hosts[next].name()
                    );
                }
            }
            lane::Result::Done(results) => {
                if !results.is_empty() {
                    self.hosts[host].worked();
                }
                self.apply(job, host, msg, &results, now_unix());
            }
        }
    }

    /// Why a smarthost could not be used, in one line; a refusal of our credentials
    /// says what to check.
    fn log_unusable(&self, host: usize, e: &upstream::ConnectError, skip: Duration) {
        use crate::protocol::client::Stage;
        let h = &self.hosts[host];
        let password = h.conf.auth == crate::config::SmarthostAuth::Password;
        if e.stage == Stage::Auth && e.reply.is_permanent() && password {
            log::error!(
                "relay: {} refused our credentials ({}): check smarthost_user and \
                 smarthost_password_file; mail stays queued",
                h.name(),
                e.reply
            );
        } else if e.stage == Stage::Auth && e.reply.is_permanent() {
            log::error!(
                "relay: {} refused a fresh OAuth2 token ({}): check smarthost_user (the \
                 mailbox the token is for), the app's permission to send (Microsoft: \
                 SMTP.SendAsApp or SMTP.Send, and SMTP AUTH enabled for the mailbox; \
                 Google: the https://mail.google.com/ scope); mail stays queued",
                h.name(),
                e.reply
            );
        } else {
            log::warn!("relay: {}", e.reply);
        }
        if self.hosts.len() > 1 {
            log::warn!(
                "relay: smarthost {} failing ({} in a row): the next of each route takes its \
                 mail for {}s",
                h.name(),
                h.health().failures,
                skip.as_secs()
            );
        }
    }

    /// A job gets no delivery in this attempt.
    fn job_deferred(&mut self, job: Job, reply: Reply, host: Option<usize>) {
        let Some(p) = self.progress.get_mut(&job.id) else {
            return;
        };
        p.deferred.get_or_insert((reply, host));
        p.jobs -= 1;
        if p.jobs == 0 {
            self.complete(&job.id, None);
        }
    }

    /// Records a job's results; when it was the message's last job, the message is
    /// finished, deferred or failed.
    fn apply(&mut self, job: Job, host: usize, mut msg: Message, results: &[RcptResult], now: u64) {
        let Some(p) = self.progress.get_mut(&job.id) else {
            return;
        };
        let delay = now.saturating_sub(msg.envelope.created);
        let relay = self.hosts[host].name();
        // Delivered to everyone at once: the file goes, and the per-recipient records
        // (a sync each) would be written for nothing.
        let whole = !p.split
            && results.len() == job.rcpts.len()
            && results
                .iter()
                .all(|r| matches!(r, RcptResult::Delivered(_)));
        let mut deferred = None;
        let mut counted = false;
        for (&i, r) in job.rcpts.iter().zip(results) {
            let rcpt = &msg.envelope.recipients[i];
            match r {
                RcptResult::Delivered(reply) => {
                    log::info!(
                        "{}: to=<{rcpt}>, relay={relay}, delay={delay}s, status=sent ({reply})",
                        msg.id
                    );
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
                    let first = !counted;
                    counted = true;
                    self.stats.delivered(
                        crate::stats::Delivery {
                            time: now,
                            id: msg.id.to_string(),
                            rcpt: rcpt.clone(),
                            relay: relay.to_string(),
                            delay,
                        },
                        if first { msg.size } else { 0 },
                    );
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
        if deferred.is_none() && results.len() < job.rcpts.len() {
            deferred = Some(local("4.3.0 no result for every recipient"));
        }
        if let Some(reply) = deferred {
            p.deferred.get_or_insert((reply, Some(host)));
        }
        p.jobs -= 1;
        if p.jobs == 0 {
            let split = p.split;
            // Split: the other routes' results are in the file, not in this `msg`.
            self.complete(&job.id, (!split).then_some(msg));
        }
    }

    /// Every job of a message has ended: it is deferred, failed or done.
    fn complete(&mut self, id: &QueueId, msg: Option<Message>) {
        let Some(p) = self.progress.remove(id) else {
            return;
        };
        let now = now_unix();
        let msg = match msg {
            Some(m) => m,
            None => match self.read(id) {
                Some(m) => m,
                None => return,
            },
        };
        match p.deferred {
            Some((reply, host)) => self.defer(&msg, &reply, host, &p.tried, now),
            None => self.finish(&msg, now),
        }
    }

    fn expired(&self, msg: &Message, now: u64) -> bool {
        now.saturating_sub(msg.envelope.created) >= self.config.max_queue_lifetime.as_secs()
    }

    fn defer(
        &mut self,
        msg: &Message,
        reply: &Reply,
        host: Option<usize>,
        tried: &[(usize, usize)],
        now: u64,
    ) {
        if self.expired(msg, now) {
            let why = format!(
                "message expired after {}; last error: {reply}",
                human_age(self.config.max_queue_lifetime.as_secs())
            );
            self.fail_message(msg, now, &why, true);
            return;
        }
        let delay = backoff(&self.config, msg.attempts + 1);
        let next = now + delay.as_secs();
        let text = match host {
            // Named smarthosts: the record says which one answered (`queue list`).
            Some(h) if self.hosts[h].conf.named => {
                format!("relay={} {reply}", self.hosts[h].name())
            }
            _ => reply.to_string(),
        };
        if let Err(e) = self.spool.record(
            &msg.id,
            &Record::Deferred {
                time: now,
                next,
                reply: text,
            },
        ) {
            log::error!("{}: cannot record deferral: {e}", msg.id);
        }
        for (i, r) in msg.envelope.recipients.iter().enumerate() {
            if msg.rcpt_state[i] == RcptState::Pending {
                self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                let relay = tried
                    .iter()
                    .find(|(r, _)| *r == i)
                    .map(|&(_, h)| h)
                    .or(host)
                    .map_or("none", |h| self.hosts[h].name());
                log::info!(
                    "{}: to=<{r}>, relay={relay}, delay={}s, status=deferred ({reply}), next try in {}s",
                    msg.id,
                    now.saturating_sub(msg.envelope.created),
                    delay.as_secs()
                );
            }
        }
        self.schedule(msg.id.clone(), delay);
        // The deferral's reply is the warning's reason (it is in the file now).
        if self.config.delay_warning.is_some()
            && !msg.warned
            && let Some(m) = self.read(&msg.id)
        {
            self.maybe_warn(&m, now);
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
            self.fail_message(msg, now, &format!("{failed} recipient(s) failed"), false);
            return;
        }
        match self.spool.remove(&msg.id) {
            Ok(()) => log::info!("{}: removed (delivered)", msg.id),
            Err(e) => log::error!("{}: delivered, but cannot remove spool file: {e}", msg.id),
        }
        self.forget(&msg.id);
    }

    /// Moves a message to `failed/`; its sender (or `notify_failed`) gets a notice,
    /// unless it is one or came from `<>`.
    fn fail_message(&mut self, msg: &Message, now: u64, why: &str, expired: bool) {
        let notify = self.wants_notice(msg);
        if notify
            && let Err(e) = self
                .spool
                .record(&msg.id, &Record::NoticeOwed { time: now })
        {
            log::error!("{}: cannot record that a notice is owed: {e}", msg.id);
        }
        match self.spool.move_to_failed(&msg.id, now, why) {
            Ok(()) => log::error!(
                "{}: failed: {why}; moved to {}/failed/",
                msg.id,
                self.spool.root().display()
            ),
            Err(e) => {
                log::error!("{}: failed: {why}; cannot move to failed/: {e}", msg.id);
                self.forget(&msg.id);
                return;
            }
        }
        self.forget(&msg.id);
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        if notify {
            // Read again: the records of the last attempt are in the file.
            match self.spool.read_failed(&msg.id) {
                Ok(m) => self.send_notice(
                    &m,
                    notice::Kind::Failed,
                    notices::Area::Failed,
                    expired.then_some(why),
                ),
                Err(e) => log::error!("{}: cannot read it back for its notice: {e:?}", msg.id),
            }
        } else if msg.envelope.client == notice::CLIENT {
            log::warn!("{}: a notice that failed gets no notice of its own", msg.id);
        }
    }
}

/// `5d`, `3h`, `20m`, `45s`: the largest whole unit.
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s >= 86400 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
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
            Request::Status,
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
