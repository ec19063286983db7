//! A worker: the thin IO shell around `ServerSession`. It serves one connection at a
//! time with blocking reads into a fixed buffer, and does what the session says:
//! send replies, open, write, commit or discard a spool file, close.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::Shared;
use super::passthrough::Passthrough;
use crate::config::Mode;
use crate::config::{BareNewline, Config};
use crate::protocol::data::Verdict;
use crate::protocol::reply;
use crate::protocol::server::{
    Ask, Peer, ServerSession, Settings, Step, StoreError, received_header,
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
    /// For `mode passthrough`: the smarthost TLS settings the relay thread also uses.
    pub upstream_tls: Option<crate::relay::TlsClient>,
    pub policy: Arc<crate::policy::Policy>,
    #[cfg(feature = "tls")]
    pub users: Option<Arc<crate::auth::Users>>,
}

/// How a session ended, for the disconnect line.
enum End {
    Quit,
    Lost(&'static str),
    Timeout(&'static str),
    Shutdown,
}

pub fn settings(config: &Config, policy: Arc<crate::policy::Policy>) -> Settings {
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
    pub fn run(self, pool: Receiver<Incoming>) {
        // All per-session memory is taken once, at the worker's first connection (a
        // relay that only ever hears from sendmail never pays for it), and reused.
        let fresh = || new_session(settings(&self.config, Arc::clone(&self.policy)));
        let mut memory: Option<(Box<ServerSession>, Box<[u8]>)> = None;
        let mut pass = (self.config.mode == Mode::Passthrough)
            .then(|| Passthrough::new(Arc::clone(&self.config), self.upstream_tls.clone()));
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
            let (session, buf) =
                memory.get_or_insert_with(|| (fresh(), vec![0u8; READ_BUF].into_boxed_slice()));
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
                *session = fresh();
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
        let mut messages = 0u32;
        let end = self.session_loop(session, buf, &mut stream, addr, &mut messages, pass);
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

    fn session_loop(
        &self,
        session: &mut ServerSession,
        buf: &mut [u8],
        stream: &mut Stream,
        addr: SocketAddr,
        messages: &mut u32,
        mut pass: Option<&mut Passthrough>,
    ) -> End {
        let slot = &self.shared.slots[self.index];
        let mut message: Option<(QueueId, spool::Writer)> = None;
        // Passthrough: the id, start and trace-line size of the message going out.
        let mut passing: Option<Passing> = None;
        let mut write_error: Option<StoreError> = None;
        let mut in_data = false;
        let phase = |s: &ServerSession| if s.in_data() { "DATA" } else { "command" };
        let (command_timeout, data_timeout) =
            (self.config.command_timeout, self.config.data_timeout);
        let mut deadline = Deadline::new(Instant::now(), command_timeout);
        loop {
            if send(stream, session).is_err() {
                return End::Lost(phase(session));
            }
            if session.in_data() != in_data {
                in_data = session.in_data();
                let limit = if in_data {
                    data_timeout
                } else {
                    command_timeout
                };
                deadline.restart(Instant::now(), limit);
            }
            slot.in_transaction
                .store(session.in_transaction(), Ordering::Relaxed);
            let read = if deadline.arm(stream, Instant::now()) {
                stream.read(buf)
            } else {
                Err(io::ErrorKind::TimedOut.into())
            };
            let n = match read {
                Ok(0) if self.shared.shutting_down.load(Ordering::Relaxed) => {
                    let _ = stream.write_all(reply::SHUTTING_DOWN.as_bytes());
                    abort(&mut message);
                    return End::Shutdown;
                }
                Ok(0) => {
                    abort(&mut message);
                    return End::Lost(phase(session));
                }
                Ok(n) => n,
                // The socket's timeout was shorter than what is left (the deadline
                // moved since it was set): wait on.
                Err(e) if crate::is_timeout(&e) && Instant::now() < deadline.at => continue,
                Err(e) if crate::is_timeout(&e) => {
                    let _ = stream.write_all(reply::TIMEOUT.as_bytes());
                    abort(&mut message);
                    return End::Timeout(phase(session));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    abort(&mut message);
                    return End::Lost(phase(session));
                }
            };
            #[cfg(feature = "fault-injection")]
            if buf[..n].starts_with(b"XPANIC") {
                panic!("fault injection: XPANIC");
            }
            if in_data {
                deadline.data(Instant::now(), n, self.config.min_data_rate, data_timeout);
            } else if buf[..n].contains(&b'\n') {
                // A command line is whole: the next one has command_timeout from now.
                deadline.restart(Instant::now(), command_timeout);
            }
            let mut pos = 0;
            loop {
                let (used, step) = session.feed(&buf[pos..n]);
                pos += used;
                match step {
                    Step::NeedInput => break,
                    Step::Flush => {
                        if send(stream, session).is_err() {
                            abort(&mut message);
                            return End::Lost(phase(session));
                        }
                    }
                    Step::OpenMessage => {
                        write_error = None;
                        let opened = self.open_message(session);
                        let result = opened.as_ref().map(|_| ()).map_err(|e| *e);
                        session.spool_opened(result);
                        if let Ok((id, w, date)) = opened {
                            session.add_missing(&id, &date);
                            message = Some((id, w));
                        }
                    }
                    Step::CheckSpace(size) => {
                        let room = self.spool.has_room(size);
                        if !room {
                            log::warn!(
                                "reject: MAIL from [{}]: 452 4.3.1 not enough disk space for SIZE={size}",
                                addr.ip()
                            );
                        }
                        session.space_checked(room);
                    }
                    Step::WriteBody => {
                        match pass.as_deref_mut() {
                            Some(p) => p.body(session.body()),
                            None => write_body(session, &mut message, &mut write_error),
                        }
                        session.clear_body();
                    }
                    Step::Upstream(ask) => {
                        let Some(p) = pass.as_deref_mut() else {
                            // Not configured; cannot happen, answered all the same.
                            session.upstream_unavailable();
                            continue;
                        };
                        if self.upstream(session, p, ask, &mut passing) {
                            *messages += 1;
                        }
                    }
                    Step::StoreMessage => {
                        write_body(session, &mut message, &mut write_error);
                        match (message.take(), write_error.take()) {
                            (Some((id, mut w)), None) => {
                                if session.saw_long_line() {
                                    w.set_long_lines();
                                }
                                let size = w.size();
                                match self.spool.commit(&id, w) {
                                    Ok(()) => {
                                        *messages += 1;
                                        self.accepted(session, &id, size);
                                        session.stored(Ok(&id));
                                    }
                                    Err(e) => {
                                        log::error!("{id}: cannot commit to spool: {e}");
                                        session.stored(Err(store_error(&e)));
                                    }
                                }
                            }
                            (m, err) => {
                                if let Some((_, w)) = m {
                                    w.abort();
                                }
                                session.stored(Err(err.unwrap_or(StoreError::Local)));
                            }
                        }
                    }
                    Step::DiscardMessage => {
                        let id = message
                            .as_ref()
                            .map(|(id, _)| id.clone())
                            .or(passing.take().map(|(id, ..)| id))
                            .unwrap_or_default();
                        abort(&mut message);
                        if let Some(p) = pass.as_deref_mut() {
                            p.abandon();
                        }
                        let why = match session.last_verdict() {
                            Verdict::TooBig => "552 5.3.4 message too big",
                            Verdict::BareNewline => "550 5.6.0 bare CR or LF",
                            Verdict::TooManyHops | Verdict::Accept => "554 5.4.6 too many hops",
                        };
                        log::info!(
                            "{id}: reject: DATA from [{}]:{}: {why}; size={}",
                            addr.ip(),
                            addr.port(),
                            session.message_size()
                        );
                    }
                    Step::StartTls => {
                        // Anything after STARTTLS in this read was pipelined in
                        // plaintext: the session refuses it and ends.
                        if !session.start_tls(pos == n) {
                            log::warn!(
                                "data after STARTTLS from [{}]:{} (possible command injection); closing",
                                addr.ip(),
                                addr.port()
                            );
                            continue;
                        }
                        if send(stream, session).is_err()
                            || !self.handshake(stream, addr.ip().to_canonical(), addr.port())
                        {
                            return End::Lost("STARTTLS");
                        }
                        session.tls_established();
                    }
                    Step::Authenticate => {
                        let result = self.check_auth(session, addr);
                        session.authenticated(result);
                    }
                    Step::Close => {
                        let _ = send(stream, session);
                        return End::Quit;
                    }
                }
            }
        }
    }

    /// Checks AUTH credentials against `auth_users`. A failure is logged in one line
    /// (for fail2ban: `AUTH failed from [IP]`) and answered late when the address
    /// keeps failing.
    /// On success, the senders the users file gives the user (`None`: any).
    fn check_auth(
        &self,
        session: &ServerSession,
        addr: SocketAddr,
    ) -> Option<Option<crate::policy::Senders>> {
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

    /// The message's spool file with its `Received:` line, and the date written there.
    fn open_message(
        &self,
        session: &ServerSession,
    ) -> Result<(QueueId, spool::Writer, String), StoreError> {
        let now = time::now_unix();
        let id = self.spool.new_id();
        let record = envelope_record(session, now, session.peer().ip.to_string());
        let mut w = self.spool.create(&id, &record).map_err(|e| {
            log::error!("cannot create spool file: {e}");
            store_error(&e)
        })?;
        let date = time::rfc5322(now);
        let mut trace = String::with_capacity(256);
        let _ = received_header(&mut trace, session, &id, &date);
        if let Err(e) = w.write(trace.as_bytes()) {
            w.abort();
            return Err(store_error(&e));
        }
        Ok((id, w, date))
    }

    /// Passthrough: asks the smarthost what `ask` needs and gives the session its
    /// answer. Returns true when a message was delivered.
    fn upstream(
        &self,
        session: &mut ServerSession,
        p: &mut Passthrough,
        ask: Ask,
        passing: &mut Option<Passing>,
    ) -> bool {
        match ask {
            Ask::Mail => {
                let r = p.mail(session.envelope());
                if r.code / 100 != 2 {
                    log::info!(
                        "reject: MAIL from [{}]: {r} (smarthost); from=<{}>",
                        session.peer().ip,
                        String::from_utf8_lossy(&session.envelope().sender)
                    );
                }
                session.upstream_replied(&r);
            }
            Ask::Rcpt { first } => {
                let replies = p.rcpt(&session.envelope().recipients[first..]);
                session.upstream_rcpt(&replies);
            }
            Ask::Data => {
                let now = time::now_unix();
                let id = self.spool.new_id();
                let date = time::rfc5322(now);
                let mut trace = String::with_capacity(256);
                let _ = received_header(&mut trace, session, &id, &date);
                let r = p.data(trace.as_bytes());
                session.upstream_replied(&r);
                if r.code == 354 {
                    session.add_missing(&id, &date);
                    *passing = Some((id, std::time::Instant::now(), trace.len() as u64));
                } else {
                    log::info!("reject: DATA from [{}]: {r} (smarthost)", session.peer().ip);
                }
            }
            Ask::End => {
                p.body(session.body());
                session.clear_body();
                let r = p.end();
                let (id, started, trace) = passing
                    .take()
                    .unwrap_or_else(|| (self.spool.new_id(), std::time::Instant::now(), 0));
                self.log_message(session, &id, trace + session.message_size());
                let status = if r.code / 100 == 2 { "sent" } else { "refused" };
                for rcpt in &session.envelope().recipients {
                    log::info!(
                        "{id}: to=<{}>, relay={}, delay={}s, status={status} ({r}), passthrough",
                        String::from_utf8_lossy(rcpt),
                        self.config.smarthost,
                        started.elapsed().as_secs()
                    );
                }
                session.upstream_replied(&r);
                return r.code / 100 == 2;
            }
        }
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

    fn accepted(&self, session: &ServerSession, id: &str, size: u64) {
        self.log_message(session, id, size);
        let id = QueueId::try_from(id).unwrap_or_default();
        if self.relay.try_send(Control::Queued(id)).is_err() {
            // The relay is busy; it will find the message in queue/.
            self.rescan.store(true, Ordering::Relaxed);
        }
    }
}

/// Passthrough: the message going out, its start, and the size of its trace line.
type Passing = (QueueId, Instant, u64);

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

fn send(stream: &mut Stream, session: &mut ServerSession) -> io::Result<()> {
    if session.output().is_empty() {
        return Ok(());
    }
    let r = stream
        .write_all(session.output())
        .and_then(|()| stream.flush());
    session.clear_output();
    r
}

fn write_body(
    session: &ServerSession,
    message: &mut Option<(QueueId, spool::Writer)>,
    error: &mut Option<StoreError>,
) {
    if error.is_some() || session.body().is_empty() {
        return;
    }
    if let Some((id, w)) = message.as_mut()
        && let Err(e) = w.write(session.body())
    {
        log::error!("{id}: cannot write spool file: {e}");
        *error = Some(store_error(&e));
    }
}

fn abort(message: &mut Option<(QueueId, spool::Writer)>) {
    if let Some((_, w)) = message.take() {
        w.abort();
    }
}

fn store_error(e: &io::Error) -> StoreError {
    if spool::is_no_space(e) {
        StoreError::NoSpace
    } else {
        StoreError::Local
    }
}
