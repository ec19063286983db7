//! The one loop that drives a `ServerSession`: every shell (the daemon's workers,
//! `sendmail -bs`, the tests and the fuzz target) runs its sessions through `run` (or
//! `Driver::feed`, one read at a time) and differs only in its `Shell`.
//!
//! The driver does what each `Step` says through the shell and spends every token
//! with the shell's answer, so no step is left unanswered: a shell that lacks a
//! capability says so (`tls_available` false, no smarthost), and the session refuses
//! in its own words. The driver owns the message being spooled, so a message is
//! committed or discarded whatever way the session ends.
//!
//! Like the session, the driver does no IO of its own: the shell reads, writes,
//! spools and logs.

use core::net::IpAddr;

use super::client::Reply;
use super::policy::Senders;
use super::reply;
use super::server::{Ask, Refusal, ServerSession, Stamp, Step, StoreError, TlsAnswer, Upstream};

/// What a read of the client gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// This many octets, at the start of the buffer.
    Bytes(usize),
    /// The client closed the connection, or it failed.
    Closed,
    /// The client was too slow (the shell's deadline passed): 421, and the end.
    TimedOut,
    /// The server is shutting down: 421, and the end.
    Shutdown,
}

/// How a session ended, for the shell's disconnect line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The session closed it: QUIT, or a refusal that ends it.
    Quit,
    /// The connection was lost while the session waited for this (`command`,
    /// `DATA`, `STARTTLS`).
    Lost(&'static str),
    /// The client was too slow, at this point.
    Timeout(&'static str),
    Shutdown,
}

/// The client's connection is gone (a write to it failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// What a session needs from the world around it. Every method answers a question
/// the session asks; the driver calls them in protocol order.
pub trait Shell {
    /// An open spool file.
    type Message;

    /// Reads client bytes into `buf`. The session tells what it waits for
    /// (`in_data`, `in_transaction`), for deadlines and shutdown.
    fn read(&mut self, buf: &mut [u8], session: &ServerSession) -> Input;

    /// Sends replies to the client; an error means the connection is gone.
    fn write(&mut self, replies: &[u8]) -> Result<(), Gone>;

    /// Opens a spool file for the session's transaction (its `Received:` line
    /// written).
    fn open(&mut self, session: &ServerSession) -> Result<Self::Message, StoreError>;

    /// The id and date of an open message, borrowed from it (nothing is copied).
    fn stamp<'m>(&self, message: &'m Self::Message) -> Stamp<'m>;

    /// Appends decoded message text.
    fn write_body(&mut self, message: &mut Self::Message, body: &[u8]) -> Result<(), StoreError>;

    /// Makes the message durable and queues it; it is then the relay's to deliver.
    /// The message is spent either way (its stamp still reads).
    fn commit(
        &mut self,
        message: &mut Self::Message,
        session: &ServerSession,
    ) -> Result<(), StoreError>;

    /// Drops a message that will not be stored.
    fn discard(&mut self, message: Self::Message);

    /// Whether the spool has room for a message of `size` octets (RFC 1870 §6.1).
    fn check_space(&mut self, size: u64) -> bool;

    /// Takes one message from `ip`'s `rate_limit` allowance; false when it is spent.
    fn check_rate(&mut self, ip: IpAddr) -> bool;

    /// Checks `session.credentials()`: `None` for a failure, else the senders the
    /// user may use (`Some(None)`: any the policy allows).
    fn authenticate(&mut self, session: &ServerSession) -> Option<Option<Senders>>;

    /// Whether this shell can run a TLS handshake now.
    fn tls_available(&self) -> bool;

    /// Runs the TLS handshake on the connection; false when it failed (the
    /// connection is then dropped).
    fn handshake(&mut self) -> bool;

    /// Logs what the session refused. `id`: the message's, when there is one.
    fn refused(&mut self, refusal: &Refusal, session: &ServerSession, id: Option<&str>);

    /// Passthrough: `MAIL FROM` the envelope's sender. `None`: no smarthost here.
    fn upstream_mail(&mut self, _session: &ServerSession) -> Option<Reply> {
        None
    }

    /// Passthrough: `RCPT TO` each of `envelope().recipients[first..]`; replies in
    /// order, as many as were answered.
    fn upstream_rcpt(&mut self, _session: &ServerSession, _first: usize) -> Option<Vec<Reply>> {
        None
    }

    /// Passthrough: `DATA`, and on `354` the message's trace line; the reply.
    fn upstream_data(&mut self, _session: &ServerSession) -> Option<Reply> {
        None
    }

    /// Passthrough: the id and date of the message going out, after a `354`.
    fn upstream_stamp(&self) -> Option<Stamp<'_>> {
        None
    }

    /// Passthrough: message text for the smarthost.
    fn upstream_body(&mut self, _body: &[u8]) {}

    /// Passthrough: the end of the data; the smarthost's final reply.
    fn upstream_end(&mut self, _session: &ServerSession) -> Option<Reply> {
        None
    }

    /// Passthrough: the client's message was refused here; the smarthost's DATA is
    /// left unended.
    fn upstream_abandon(&mut self) {}
}

/// Runs `session` (already `start`ed) over `shell` until it ends, reading into `buf`.
pub fn run<S: Shell>(session: &mut ServerSession, shell: &mut S, buf: &mut [u8]) -> End {
    Driver::new().run(session, shell, buf)
}

/// The driver's own state between reads: the message being spooled.
pub struct Driver<M> {
    message: Option<M>,
    /// The first spool write error of the message; it is refused at its end.
    write_error: Option<StoreError>,
}

impl<M> Default for Driver<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Driver<M> {
    pub fn new() -> Self {
        Self {
            message: None,
            write_error: None,
        }
    }

    pub fn run<S: Shell<Message = M>>(
        &mut self,
        session: &mut ServerSession,
        shell: &mut S,
        buf: &mut [u8],
    ) -> End {
        loop {
            if self.flush(session, shell).is_err() {
                return self.end(shell, End::Lost(phase(session)));
            }
            let n = match shell.read(buf, session) {
                Input::Bytes(n) => n.min(buf.len()),
                Input::Closed => return self.end(shell, End::Lost(phase(session))),
                Input::TimedOut => {
                    let _ = shell.write(reply::TIMEOUT.as_bytes());
                    return self.end(shell, End::Timeout(phase(session)));
                }
                Input::Shutdown => {
                    let _ = shell.write(reply::SHUTTING_DOWN.as_bytes());
                    return self.end(shell, End::Shutdown);
                }
            };
            if let Some(end) = self.feed(session, shell, &buf[..n]) {
                return end;
            }
        }
    }

    /// Sends the replies the session has queued.
    pub fn flush<S: Shell<Message = M>>(
        &mut self,
        session: &mut ServerSession,
        shell: &mut S,
    ) -> Result<(), Gone> {
        if session.output().is_empty() {
            return Ok(());
        }
        let sent = shell.write(session.output());
        session.clear_output();
        sent
    }

    /// The session ended: a message still open is dropped.
    fn end<S: Shell<Message = M>>(&mut self, shell: &mut S, end: End) -> End {
        if let Some(m) = self.message.take() {
            shell.discard(m);
        }
        end
    }

    /// Feeds one read's worth of input and does every step it leads to. `Some` when
    /// the session ended (the replies are sent).
    pub fn feed<S: Shell<Message = M>>(
        &mut self,
        session: &mut ServerSession,
        shell: &mut S,
        input: &[u8],
    ) -> Option<End> {
        let mut pos = 0;
        loop {
            let (used, step) = session.feed(&input[pos..]);
            debug_assert!(used <= input.len() - pos);
            pos += used;
            match step {
                Step::NeedInput => return None,
                Step::Flush => {
                    if self.flush(session, shell).is_err() {
                        return Some(self.end(shell, End::Lost(phase(session))));
                    }
                }
                Step::OpenMessage(token) => {
                    self.write_error = None;
                    match shell.open(session) {
                        Ok(m) => {
                            session.spool_opened(token, Ok(shell.stamp(&m)));
                            self.message = Some(m);
                        }
                        Err(e) => session.spool_opened(token, Err(e)),
                    }
                }
                Step::WriteBody => {
                    self.write_body(session, shell);
                    session.clear_body();
                }
                Step::StoreMessage(token) => {
                    self.write_body(session, shell);
                    session.clear_body();
                    match (self.message.take(), self.write_error.take()) {
                        (Some(mut m), None) => match shell.commit(&mut m, session) {
                            Ok(()) => session.stored(token, Ok(shell.stamp(&m).id)),
                            Err(e) => session.stored(token, Err(e)),
                        },
                        (m, error) => {
                            if let Some(m) = m {
                                shell.discard(m);
                            }
                            session.stored(token, Err(error.unwrap_or(StoreError::Local)));
                        }
                    }
                }
                Step::DiscardMessage => {
                    let message = self.message.take();
                    if let Some(why) = session.refusal() {
                        let id = message.as_ref().map(|m| shell.stamp(m).id);
                        shell.refused(why, session, id);
                    }
                    if let Some(m) = message {
                        shell.discard(m);
                    }
                    shell.upstream_abandon();
                }
                Step::CheckSpace(q) => {
                    let room = shell.check_space(q.size());
                    session.space_checked(q, room);
                }
                Step::CheckRate(q) => {
                    let allowed = shell.check_rate(q.ip());
                    session.rate_checked(q, allowed);
                }
                Step::Authenticate(token) => {
                    let result = shell.authenticate(session);
                    session.authenticated(token, result);
                }
                Step::StartTls(token) => {
                    // Anything after STARTTLS in this read was pipelined in plaintext.
                    let answer = if pos < input.len() {
                        TlsAnswer::Pipelined
                    } else if shell.tls_available() {
                        TlsAnswer::Ready
                    } else {
                        TlsAnswer::Unavailable
                    };
                    if let Some(handshake) = session.start_tls(token, answer) {
                        if self.flush(session, shell).is_err() || !shell.handshake() {
                            return Some(self.end(shell, End::Lost("STARTTLS")));
                        }
                        session.tls_established(handshake);
                    }
                }
                Step::Upstream(q) => self.upstream(session, shell, q),
                Step::Refused => {
                    if let Some(why) = session.refusal() {
                        shell.refused(why, session, None);
                    }
                }
                Step::Close => {
                    let _ = self.flush(session, shell);
                    return Some(self.end(shell, End::Quit));
                }
            }
        }
    }

    fn write_body<S: Shell<Message = M>>(&mut self, session: &ServerSession, shell: &mut S) {
        let body = session.body();
        if body.is_empty() {
            return;
        }
        if session.passthrough() {
            shell.upstream_body(body);
            return;
        }
        if let (Some(m), None) = (self.message.as_mut(), self.write_error) {
            self.write_error = shell.write_body(m, body).err();
        }
    }

    /// Passthrough: asks the smarthost and answers the session; what the smarthost
    /// refused is logged.
    fn upstream<S: Shell<Message = M>>(
        &mut self,
        session: &mut ServerSession,
        shell: &mut S,
        q: Upstream,
    ) {
        let refused = |shell: &mut S, session: &ServerSession, verb, reply: &Reply, address| {
            let why = Refusal::Upstream {
                verb,
                reply: reply.clone(),
                address,
            };
            shell.refused(&why, session, None);
        };
        match q.ask() {
            Ask::Mail => match shell.upstream_mail(session) {
                Some(r) => {
                    if r.code / 100 != 2 {
                        let from = session.envelope().sender.clone();
                        refused(shell, session, "MAIL", &r, from);
                    }
                    session.upstream_replied(q, &r, None);
                }
                None => session.upstream_unavailable(q),
            },
            Ask::Rcpt { first } => match shell.upstream_rcpt(session, first) {
                Some(replies) => {
                    let no_reply = Reply::new(451, "4.4.2 no reply from the smarthost");
                    let first_refusal = replies.iter().find(|r| r.code / 100 != 2);
                    let fallback = first_refusal.unwrap_or(&no_reply).clone();
                    let asked = session.envelope().recipients.len() - first;
                    for i in 0..asked {
                        let r = replies.get(i).unwrap_or(&fallback);
                        if r.code / 100 != 2 {
                            let to = session.envelope().recipients[first + i].clone();
                            refused(shell, session, "RCPT", r, to);
                        }
                    }
                    session.upstream_rcpt(q, &replies);
                }
                None => session.upstream_unavailable(q),
            },
            Ask::Data => match shell.upstream_data(session) {
                Some(r) => {
                    if r.code != 354 {
                        refused(shell, session, "DATA", &r, Default::default());
                    }
                    session.upstream_replied(q, &r, shell.upstream_stamp());
                }
                None => session.upstream_unavailable(q),
            },
            Ask::End => {
                self.write_body(session, shell);
                session.clear_body();
                match shell.upstream_end(session) {
                    Some(r) => session.upstream_replied(q, &r, None),
                    None => session.upstream_unavailable(q),
                }
            }
        }
    }
}

/// What the session waits for, for the disconnect line.
fn phase(session: &ServerSession) -> &'static str {
    if session.in_data() { "DATA" } else { "command" }
}
