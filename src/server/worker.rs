//! A worker: the thin IO shell around `ServerSession`. It serves one connection at a
//! time with blocking reads into a fixed buffer, and does what the session says:
//! send replies, open, write, commit or discard a spool file, close.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::Shared;
use super::passthrough::Passthrough;
use crate::config::Mode;
use crate::config::{BareNewline, Config};
use crate::protocol::client::Reply;
use crate::protocol::driver::{self, End, Input, Shell};
use crate::protocol::policy::Senders;
use crate::protocol::server::{
    Peer, Refusal, ServerSession, Settings, Stamp, StoreError, received_header,
};
use crate::relay::Control;
use crate::spool::{self, QueueId, Spool};
use crate::time;

#[cfg(feature = "tls")]
pub use crate::tls::server::TlsServer;
#[cfg(feature = "tls")]
type Layer = crate::tls::server::TlsStream;

/// Without the `tls` feature there is no server certificate to hold.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub struct TlsServer;
#[cfg(not(feature = "tls"))]
type Layer = crate::stream::NoTls;

type Stream = crate::stream::Stream<Layer>;

/// A connection for the pool, whether its listener speaks TLS from the first byte,
/// and the client's address as the acceptor counted it.
pub type Incoming = (TcpStream, bool, std::net::IpAddr);

/// The read buffer: one `read` takes at most this much.
const READ_BUF: usize = 16 * 1024;

pub struct Worker {
    pub index: usize,
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    pub relay: Sender<Control>,
    pub rescan: Arc<AtomicBool>,
    pub shared: Arc<Shared>,
    pub tls: Option<TlsServer>,
    /// For `mode passthrough`: the smarthosts (and their health) the relay also uses.
    pub hosts: crate::relay::Hosts,
    pub policy: Arc<crate::protocol::policy::Policy>,
    pub stats: Arc<crate::stats::Stats>,
    #[cfg(feature = "tls")]
    pub users: Option<Arc<crate::auth::Users>>,
    /// Of the settings above (`Live::generation`): a reload gives a new one.
    pub generation: u64,
}

pub fn settings(config: &Config, policy: Arc<crate::protocol::policy::Policy>) -> Settings {
    Settings {
        hostname: heapless::String::try_from(config.hostname.as_str()).unwrap_or_default(),
        max_message_size: config.max_message_size,
        reject_bare_newline: config.bare_newline == BareNewline::Reject,
        max_hops: config.max_hops,
        tls_available: config.tls_cert.is_some(),
        auth_available: config.auth_users.is_some(),
        require_auth: config.require_auth,
        policy,
        passthrough: config.mode == crate::config::Mode::Passthrough,
        add_missing_headers: config.add_missing_headers,
    }
}

/// A socket timeout off by less than this from the deadline is left as it is: a
/// client that keeps up costs no syscall per read, and a deadline is missed by at
/// most this much.
const SLACK: Duration = Duration::from_secs(1);

/// The time by which the client must have finished what it is sending: a whole
/// command line within `command_timeout` of the last one (RFC 5321 §4.5.3.2.7), and
/// the message text within `data_timeout` of its last progress, where progress is
/// measured at `min_data_rate` (Postfix's `smtpd_min_data_rate`): a client that sends
/// one octet every few seconds cannot hold a worker for ever, as a timeout per read
/// would let it.
struct Deadline {
    at: Instant,
    /// The socket's read timeout as last set.
    socket: Duration,
}

impl Deadline {
    fn new(now: Instant, limit: Duration) -> Self {
        Self {
            at: now + limit,
            socket: limit,
        }
    }

    fn restart(&mut self, now: Instant, limit: Duration) {
        self.at = now + limit;
    }

    /// `n` octets of message text came: the deadline moves by their worth at `rate`
    /// octets a second, never past `limit` from now (0: every read restarts it).
    fn data(&mut self, now: Instant, n: usize, rate: u64, limit: Duration) {
        let earned = match rate {
            0 => limit,
            r => Duration::from_micros((n as u64).saturating_mul(1_000_000) / r),
        };
        self.at = (self.at + earned).min(now + limit);
    }

    /// Before a read: sets the socket's timeout to what is left, when it is off by
    /// more than `SLACK`. False when the deadline has passed.
    fn arm(&mut self, stream: &Stream, now: Instant) -> bool {
        let left = self.at.saturating_duration_since(now);
        if left.is_zero() {
            return false;
        }
        if (self.socket > left + SLACK || left > self.socket + SLACK)
            && let Some(tcp) = stream.tcp()
        {
            let _ = tcp.set_read_timeout(Some(left));
            self.socket = left;
        }
        true
    }
}

/// Made out of line, so that no temporary of the (large) session sits in the frame
/// of `Worker::run`, whose stack pages stay resident for the worker's life.
#[inline(never)]
fn new_session(settings: Settings) -> Box<ServerSession> {
    Box::new(ServerSession::new(settings))
}

impl Worker {
    /// A new session for the current settings.
    fn fresh(&self) -> Box<ServerSession> {
        new_session(settings(&self.config, Arc::clone(&self.policy)))
    }

    /// Takes the settings of a reload, if there was one: the next session (this
    /// connection's) uses them; the passthrough connection is made again.
    fn refresh(
        &mut self,
        memory: &mut Option<(Box<ServerSession>, Box<[u8]>)>,
        pass: &mut Option<Passthrough>,
    ) {
        let live = self.shared.live();
        if live.generation == self.generation {
            return;
        }
        self.generation = live.generation;
        self.config = Arc::clone(&live.config);
        self.policy = Arc::clone(&live.policy);
        self.hosts = Arc::clone(&live.hosts);
        self.tls = live.tls.clone();
        #[cfg(feature = "tls")]
        {
            self.users = live.users.clone();
        }
        if let Some((session, _)) = memory.as_mut() {
            *session = self.fresh();
        }
        if let Some(p) = pass.take() {
            p.close();
            *pass = Some(Passthrough::new(
                Arc::clone(&self.config),
                Arc::clone(&self.hosts),
            ));
        }
    }

    pub fn run(mut self, pool: Receiver<Incoming>) {
        // All per-session memory is taken once, at the worker's first connection (a
        // relay that only ever hears from sendmail never pays for it), and reused.
        let mut memory: Option<(Box<ServerSession>, Box<[u8]>)> = None;
        let mut pass = (self.config.mode == Mode::Passthrough)
            .then(|| Passthrough::new(Arc::clone(&self.config), Arc::clone(&self.hosts)));
        loop {
            // In passthrough, the smarthost connection is kept between clients and
            // closed once idle for smarthost_idle.
            let next = match pass.as_ref().and_then(Passthrough::idle_wait) {
                Some(wait) => match pool.recv_timeout(wait) {
                    Ok(next) => next,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        pass.as_mut().map(Passthrough::idle);
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                },
                None => match pool.recv() {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let (stream, implicit_tls, ip) = next;
            self.refresh(&mut memory, &mut pass);
            if memory.is_none() {
                memory = Some((self.fresh(), vec![0u8; READ_BUF].into_boxed_slice()));
            }
            let Some((session, buf)) = memory.as_mut() else {
                continue;
            };
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.serve(session, buf, stream, implicit_tls, pass.as_mut());
            }));
            if let Some(p) = pass.as_mut() {
                // A transaction the client left: RSET at the next MAIL, or (inside
                // DATA) the connection is closed so nothing half-sent is delivered.
                p.abandon();
            }
            self.shared.per_ip.leave(ip);
            if served.is_err() {
                log::error!(
                    "worker {}: session panicked; connection dropped",
                    self.index
                );
                *session = self.fresh();
                self.release();
            }
        }
        if let Some(p) = pass {
            p.close();
        }
    }

    /// The connection is closed: its slot and its place under `max_connections` are free.
    fn release(&self) {
        let slot = &self.shared.slots[self.index];
        *slot.stream.lock().unwrap_or_else(|e| e.into_inner()) = None;
        slot.in_transaction.store(false, Ordering::Relaxed);
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }

    // Out of line: its frame is large, and only a worker that serves needs it.
    #[inline(never)]
    fn serve(
        &self,
        session: &mut ServerSession,
        buf: &mut [u8],
        tcp: TcpStream,
        implicit_tls: bool,
        pass: Option<&mut Passthrough>,
    ) {
        let mut stream = Stream::Plain(tcp);
        let Some(tcp) = stream.tcp() else { return };
        let Ok(addr) = tcp.peer_addr() else {
            self.release();
            return;
        };
        let ip = addr.ip().to_canonical();
        log::info!("connect from [{ip}]:{}", addr.port());
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nonblocking(false);
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(self.config.command_timeout));
        let _ = tcp.set_write_timeout(Some(self.config.command_timeout));
        if let Ok(clone) = tcp.try_clone() {
            *self.shared.slots[self.index]
                .stream
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(clone);
        }
        if implicit_tls && !self.handshake(&mut stream, ip, addr.port()) {
            drop(stream);
            self.release();
            log::info!("disconnect from [{ip}]:{} messages=0", addr.port());
            return;
        }
        session.start(Peer {
            ip,
            relay_allowed: self.config.relay_allowed(ip),
            tls: implicit_tls,
            auth_plaintext: self.config.auth_plaintext && tcp_local_is_loopback(stream.tcp()),
        });
        let now = Instant::now();
        let mut conn = Connection {
            worker: self,
            stream: &mut stream,
            addr,
            messages: 0,
            deadline: Deadline::new(now, self.config.command_timeout),
            in_data: false,
            pass,
            passing: None,
        };
        let end = driver::run(session, &mut conn, buf);
        let messages = conn.messages;
        let _ = stream.flush();
        match end {
            End::Quit | End::Shutdown => {}
            End::Lost(when) => {
                log::info!("lost connection after {when} from [{ip}]:{}", addr.port())
            }
            End::Timeout(when) => log::info!("timeout after {when} from [{ip}]:{}", addr.port()),
        }
        drop(stream);
        self.release();
        log::info!("disconnect from [{ip}]:{} messages={messages}", addr.port());
    }

    /// Checks AUTH credentials against `auth_users`. A failure is logged in one line
    /// (for fail2ban: `AUTH failed from [IP]`) and answered late when the address
    /// keeps failing.
    /// On success, the senders the users file gives the user (`None`: any).
    fn check_auth(
        &self,
        session: &ServerSession,
        addr: SocketAddr,
    ) -> Option<Option<crate::protocol::policy::Senders>> {
        let ip = addr.ip().to_canonical();
        let (user, mechanism) = (
            session.auth_user().escape_debug().to_string(),
            session.auth_mechanism(),
        );
        #[cfg(feature = "tls")]
        {
            let ok = match (&self.users, session.credentials()) {
                (Some(users), Some((name, password))) => users.check(name, password),
                _ => None,
            };
            if ok.is_some() {
                self.shared.auth_throttle.succeeded(ip);
                log::info!("[{ip}]:{}: AUTH {mechanism} as {user}", addr.port());
            } else {
                let delay = self.shared.auth_throttle.failed(ip);
                self.stats.reject(crate::stats::Reject::Auth);
                log::warn!(
                    "AUTH failed from [{ip}]:{}: user=<{user}>, mechanism={mechanism}",
                    addr.port()
                );
                std::thread::sleep(delay);
            }
            ok
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (ip, user, mechanism);
            None
        }
    }

    /// Replaces the plain stream by TLS over it. Logs the outcome either way.
    fn handshake(&self, stream: &mut Stream, ip: std::net::IpAddr, port: u16) -> bool {
        #[cfg(feature = "tls")]
        if let (Some(tls), Some(tcp)) = (&self.tls, stream.take_plain()) {
            return match tls.handshake(tcp) {
                Ok(s) => {
                    log::info!(
                        "[{ip}]:{port}: TLS established ({})",
                        crate::tls::server::describe(&s)
                    );
                    *stream = Stream::Tls(Box::new(s));
                    true
                }
                Err(e) => {
                    log::info!("[{ip}]:{port}: {e}");
                    false
                }
            };
        }
        let _ = (stream, &self.tls);
        log::warn!("[{ip}]:{port}: TLS requested but not available");
        false
    }

    /// The line that records a message taken from a client. `size`: the message as
    /// stored and sent on, its `Received:` line included (as `mailq` shows it).
    fn log_message(&self, session: &ServerSession, id: &str, size: u64) {
        let env = session.envelope();
        let to: Vec<String> = env
            .recipients
            .iter()
            .map(|r| format!("<{}>", String::from_utf8_lossy(r)))
            .collect();
        let sasl = session
            .authenticated_user()
            .map(|u| format!(", sasl_username={}", u.escape_debug()))
            .unwrap_or_default();
        log::info!(
            "{id}: from=<{}>, to={}, size={}, nrcpt={}, client=[{}], helo={}{sasl}",
            String::from_utf8_lossy(&env.sender),
            to.join(","),
            size,
            env.recipients.len(),
            session.peer().ip,
            session.helo()
        );
    }

    fn accepted(&self, session: &ServerSession, id: QueueId, size: u64) {
        self.log_message(session, &id, size);
        self.stats.accepted(size);
        if self.relay.try_send(Control::Queued(id)).is_err() {
            // The relay is busy; it will find the message in queue/.
            self.rescan.store(true, Ordering::Relaxed);
        }
    }
}

/// Passthrough: the message going out, its start, and the size of its trace line.
type Passing = (QueueId, Instant, u64, String);

/// One connection as the session's shell: its stream and deadline, the message
/// going out in passthrough, and what the disconnect line counts.
struct Connection<'a> {
    worker: &'a Worker,
    stream: &'a mut Stream,
    addr: SocketAddr,
    messages: u32,
    deadline: Deadline,
    /// The session read message text at the last read (the deadline's rule).
    in_data: bool,
    pass: Option<&'a mut Passthrough>,
    passing: Option<Passing>,
}

/// A spool file being written for a session: what the daemon's workers and
/// `sendmail -bs` both do with the messages they take.
pub struct Spooling {
    /// `None` once committed.
    writer: Option<spool::Writer>,
    id: QueueId,
    /// When it was received, RFC 5322.
    date: String,
}

impl Spooling {
    /// Creates the spool file for the session's transaction, `client` named in its
    /// envelope, with its `Received:` line.
    pub fn open(
        spool: &Spool,
        session: &ServerSession,
        client: String,
    ) -> Result<Spooling, StoreError> {
        let now = time::now_unix();
        let record = envelope_record(session, now, client);
        let mut writer = spool.create(spool.new_id(), &record).map_err(|e| {
            log::error!("cannot create spool file: {e}");
            store_error(&e)
        })?;
        let date = time::rfc5322(now);
        let mut trace = String::with_capacity(256);
        let id = writer.id().clone();
        let _ = received_header(&mut trace, session, &id, &date);
        if let Err(e) = writer.write(trace.as_bytes()) {
            writer.abort();
            return Err(store_error(&e));
        }
        Ok(Spooling {
            writer: Some(writer),
            id,
            date,
        })
    }

    pub fn stamp(&self) -> Stamp<'_> {
        Stamp {
            id: &self.id,
            date: &self.date,
        }
    }

    pub fn id(&self) -> &QueueId {
        &self.id
    }

    pub fn write(&mut self, body: &[u8]) -> Result<(), StoreError> {
        let Some(w) = self.writer.as_mut() else {
            return Err(StoreError::Local);
        };
        w.write(body).map_err(|e| {
            log::error!("{}: cannot write spool file: {e}", self.id);
            store_error(&e)
        })
    }

    /// Commits the message (marked when it has long lines); its stored size.
    pub fn commit(&mut self, spool: &Spool, session: &ServerSession) -> Result<u64, StoreError> {
        let Some(mut w) = self.writer.take() else {
            return Err(StoreError::Local);
        };
        if session.saw_long_line() {
            w.set_long_lines();
        }
        let size = w.size();
        match spool.commit(w) {
            Ok(_) => Ok(size),
            Err(e) => {
                log::error!("{}: cannot commit to spool: {e}", self.id);
                Err(store_error(&e))
            }
        }
    }

    pub fn abort(self) {
        if let Some(w) = self.writer {
            w.abort();
        }
    }
}

impl Shell for Connection<'_> {
    type Message = Spooling;

    fn read(&mut self, buf: &mut [u8], session: &ServerSession) -> Input {
        let config = &self.worker.config;
        if session.in_data() != self.in_data {
            self.in_data = session.in_data();
            let limit = if self.in_data {
                config.data_timeout
            } else {
                config.command_timeout
            };
            self.deadline.restart(Instant::now(), limit);
        }
        self.worker.shared.slots[self.worker.index]
            .in_transaction
            .store(session.in_transaction(), Ordering::Relaxed);
        loop {
            let read = if self.deadline.arm(self.stream, Instant::now()) {
                self.stream.read(buf)
            } else {
                Err(io::ErrorKind::TimedOut.into())
            };
            let n = match read {
                Ok(0) if self.worker.shared.shutting_down.load(Ordering::Relaxed) => {
                    return Input::Shutdown;
                }
                Ok(0) => return Input::Closed,
                Ok(n) => n,
                // The socket's timeout was shorter than what is left (the deadline
                // moved since it was set): wait on.
                Err(e) if crate::is_timeout(&e) && Instant::now() < self.deadline.at => continue,
                Err(e) if crate::is_timeout(&e) => return Input::TimedOut,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Input::Closed,
            };
            #[cfg(feature = "fault-injection")]
            if buf[..n].starts_with(b"XPANIC") {
                panic!("fault injection: XPANIC");
            }
            if self.in_data {
                self.deadline
                    .data(Instant::now(), n, config.min_data_rate, config.data_timeout);
            } else if buf[..n].contains(&b'\n') {
                // A command line is whole: the next one has command_timeout from now.
                self.deadline
                    .restart(Instant::now(), config.command_timeout);
            }
            return Input::Bytes(n);
        }
    }

    fn write(&mut self, replies: &[u8]) -> Result<(), driver::Gone> {
        self.stream
            .write_all(replies)
            .and_then(|()| self.stream.flush())
            .map_err(|_| driver::Gone)
    }

    fn open(&mut self, session: &ServerSession) -> Result<Spooling, StoreError> {
        Spooling::open(&self.worker.spool, session, session.peer().ip.to_string())
    }

    fn stamp<'m>(&self, m: &'m Spooling) -> Stamp<'m> {
        m.stamp()
    }

    fn write_body(&mut self, m: &mut Spooling, body: &[u8]) -> Result<(), StoreError> {
        m.write(body)
    }

    fn commit(&mut self, m: &mut Spooling, session: &ServerSession) -> Result<(), StoreError> {
        let size = m.commit(&self.worker.spool, session)?;
        self.messages += 1;
        self.worker.accepted(session, m.id().clone(), size);
        Ok(())
    }

    fn discard(&mut self, m: Spooling) {
        m.abort();
    }

    fn check_space(&mut self, size: u64) -> bool {
        self.worker.spool.has_room(size)
    }

    fn check_rate(&mut self, ip: IpAddr) -> bool {
        let rate = self.worker.shared.rate.as_ref();
        rate.is_none_or(|r| r.take(ip, Instant::now()))
    }

    fn authenticate(&mut self, session: &ServerSession) -> Option<Option<Senders>> {
        self.worker.check_auth(session, self.addr)
    }

    fn tls_available(&self) -> bool {
        self.worker.tls.is_some()
    }

    fn handshake(&mut self) -> bool {
        let (ip, port) = (self.addr.ip().to_canonical(), self.addr.port());
        self.worker.handshake(self.stream, ip, port)
    }

    fn refused(&mut self, why: &Refusal, session: &ServerSession, id: Option<&str>) {
        let passing = self.passing.as_ref().map(|p| p.0.as_str());
        log_refusal(why, session, self.addr.port(), id.or(passing));
        self.worker.stats.reject(reject_kind(why));
    }

    fn upstream_mail(&mut self, session: &ServerSession) -> Option<Reply> {
        Some(self.pass.as_deref_mut()?.mail(session.envelope()))
    }

    fn upstream_rcpt(&mut self, session: &ServerSession, first: usize) -> Option<Vec<Reply>> {
        let p = self.pass.as_deref_mut()?;
        Some(p.rcpt(&session.envelope().recipients[first..]))
    }

    fn upstream_data(&mut self, session: &ServerSession) -> Option<Reply> {
        let p = self.pass.as_deref_mut()?;
        let now = time::now_unix();
        let id = self.worker.spool.new_id();
        let date = time::rfc5322(now);
        let mut trace = String::with_capacity(256);
        let _ = received_header(&mut trace, session, &id, &date);
        let r = p.data(trace.as_bytes());
        if r.code == 354 {
            self.passing = Some((id, Instant::now(), trace.len() as u64, date));
        }
        Some(r)
    }

    fn upstream_stamp(&self) -> Option<Stamp<'_>> {
        let (id, _, _, date) = self.passing.as_ref()?;
        Some(Stamp { id, date })
    }

    fn upstream_body(&mut self, body: &[u8]) {
        if let Some(p) = self.pass.as_deref_mut() {
            p.body(body);
        }
    }

    fn upstream_end(&mut self, session: &ServerSession) -> Option<Reply> {
        let p = self.pass.as_deref_mut()?;
        let r = p.end();
        let worker = self.worker;
        let (id, started, trace, _) = self
            .passing
            .take()
            .unwrap_or_else(|| (worker.spool.new_id(), Instant::now(), 0, String::new()));
        worker.log_message(session, &id, trace + session.message_size());
        let status = if r.code / 100 == 2 { "sent" } else { "refused" };
        for rcpt in &session.envelope().recipients {
            log::info!(
                "{id}: to=<{}>, relay={}, delay={}s, status={status} ({r}), passthrough",
                String::from_utf8_lossy(rcpt),
                p.relay_name(),
                started.elapsed().as_secs()
            );
        }
        if r.code / 100 == 2 {
            self.messages += 1;
            let size = trace + session.message_size();
            worker.stats.accepted(size);
            for (n, rcpt) in session.envelope().recipients.iter().enumerate() {
                let d = crate::stats::Delivery {
                    time: time::now_unix(),
                    id: id.to_string(),
                    rcpt: String::from_utf8_lossy(rcpt).into_owned(),
                    relay: p.relay_name().to_string(),
                    delay: started.elapsed().as_secs(),
                };
                worker.stats.delivered(d, if n == 0 { size } else { 0 });
            }
        }
        Some(r)
    }

    fn upstream_abandon(&mut self) {
        self.passing = None;
        if let Some(p) = self.pass.as_deref_mut() {
            p.abandon();
        }
    }
}

/// Logs what a session refused, in the one wording every shell uses: the port is
/// named where the line is about the connection (DATA, STARTTLS).
pub fn log_refusal(why: &Refusal, session: &ServerSession, port: u16, id: Option<&str>) {
    let mut line = String::with_capacity(160);
    let port = matches!(why, Refusal::Data { .. } | Refusal::DataAfterStartTls).then_some(port);
    let _ = why.describe(
        &mut line,
        session.peer().ip,
        port,
        id.unwrap_or(""),
        session.authenticated_user(),
    );
    if why.is_warning() {
        log::warn!("{line}");
    } else {
        log::info!("{line}");
    }
}

/// The spool envelope of the session's transaction.
pub fn envelope_record(session: &ServerSession, created: u64, client: String) -> spool::Envelope {
    let env = session.envelope();
    spool::Envelope {
        created,
        client,
        helo: session.helo().to_string(),
        eight_bit: env.body == crate::protocol::command::BodyType::EightBitMime,
        smtputf8: env.smtputf8,
        sender: String::from_utf8_lossy(&env.sender).into_owned(),
        recipients: env
            .recipients
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect(),
    }
}

fn tcp_local_is_loopback(tcp: Option<&TcpStream>) -> bool {
    tcp.and_then(|t| t.local_addr().ok())
        .is_some_and(|a| a.ip().to_canonical().is_loopback())
}

fn store_error(e: &io::Error) -> StoreError {
    if spool::is_no_space(e) {
        StoreError::NoSpace
    } else {
        StoreError::Local
    }
}

/// The metrics' reason for a refusal.
fn reject_kind(why: &Refusal) -> crate::stats::Reject {
    use crate::stats::Reject;
    match why {
        Refusal::Relay { .. } => Reject::Relay,
        Refusal::Sender { .. } => Reject::Sender,
        Refusal::Recipient { .. } => Reject::Recipient,
        Refusal::TooManyMessages { .. } => Reject::TooManyMessages,
        Refusal::Rate { .. } => Reject::Rate,
        Refusal::NoSpace { .. } => Reject::NoSpace,
        Refusal::Data { .. } => Reject::Data,
        Refusal::DataAfterStartTls => Reject::StartTls,
        Refusal::Upstream { .. } => Reject::Upstream,
    }
}
