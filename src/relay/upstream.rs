//! One connection to the smarthost: the IO shell around `protocol::client::Client`.
//!
//! It owns the socket, a fixed read buffer and the reply reader; the client state
//! machine decides what to send. The stream is an enum so that TLS slots in beside
//! plain TCP without touching the protocol code.

use crate::stream::Unreachable;
use std::io::{self, Read, Write};
use std::time::Duration;

use super::hosts::Host;
use crate::config::{Smarthost, SmarthostTls};
use crate::longlines::{Encoder, Plan};
use crate::oauth::Token;
use crate::protocol::client::{
    Client, Event, Options, RcptResult, Reply, ReplyReader, Single, Stage, Transaction,
};
use crate::protocol::stuff::DotStuffer;
use crate::spool::Message;
#[cfg(feature = "tls")]
pub use crate::tls::client::TlsClient;
#[cfg(feature = "tls")]
use crate::tls::client::TlsStream;

thread_local! {
    /// `smtp-relayd test`: print each line sent and received on this thread, secrets
    /// hidden. `Some(hide)`: `hide` is set while the next lines sent are SASL
    /// responses (after a 334).
    static TRACE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Turns the transcript of this thread's connections on (stdout) or off.
pub fn trace(on: bool) {
    TRACE.with(|t| t.set(on.then_some(false)));
}

fn tracing() -> bool {
    TRACE.with(|t| t.get().is_some())
}

/// Prints what is sent, with AUTH's secrets replaced.
fn trace_out(bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).split_terminator("\r\n") {
        let hidden = TRACE.with(|t| t.get() == Some(true));
        let upper = line.to_ascii_uppercase();
        let shown = if hidden {
            "**** (hidden)".to_string()
        } else if upper.starts_with("AUTH ") {
            let mut w = line.splitn(3, ' ');
            let (verb, mech) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
            match w.next() {
                Some(_) => format!("{verb} {mech} **** (hidden)"),
                None => format!("{verb} {mech}"),
            }
        } else {
            line.to_string()
        };
        println!("  > {shown}");
    }
}

fn trace_in(reply: &Reply) {
    println!("  < {reply}");
    TRACE.with(|t| t.set(Some(reply.code == 334)));
}

/// RFC 5321 §4.5.3.2 client timeouts.
const GREETING: Duration = Duration::from_secs(300);
const COMMAND: Duration = Duration::from_secs(300);
const DATA_BLOCK: Duration = Duration::from_secs(180);
const DATA_END: Duration = Duration::from_secs(600);

/// Without the `tls` feature there is nothing to build.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub struct TlsClient;

#[cfg(feature = "tls")]
type Layer = TlsStream;
#[cfg(not(feature = "tls"))]
type Layer = crate::stream::NoTls;

type Stream = crate::stream::Stream<Layer>;

/// Reads the smarthost password: only the relay thread does, at each connection,
/// so a changed password needs no restart and no other thread ever holds it. With
/// OAuth2, `token` is the secret instead.
fn client_options(config: &Smarthost, token: Option<&Token>) -> Result<Options, Reply> {
    use crate::config::SmarthostAuth;
    use crate::protocol::client::{Credentials, Mechanism};
    let bearer = |mechanism| {
        let user = config.user.clone().unwrap_or_default();
        token.map(|t| Credentials {
            user,
            secret: t.secret.expose().to_string(),
            mechanism,
        })
    };
    let credentials = match (config.auth, &config.user) {
        (SmarthostAuth::Xoauth2, _) => bearer(Mechanism::Xoauth2),
        (SmarthostAuth::Oauthbearer, _) => bearer(Mechanism::Oauthbearer {
            host: config.address.host.clone(),
            port: config.address.port,
        }),
        (SmarthostAuth::Password, Some(user)) => match &config.password_file {
            Some(path) => {
                let text = crate::config::check_secret_file(path)
                    .and_then(|()| {
                        std::fs::read_to_string(path)
                            .map_err(|e| format!("{}: {e}", path.display()))
                    })
                    .map_err(|e| {
                        local(&format!("4.7.0 cannot use smarthost_password_file: {e}"))
                    })?;
                let password = text.lines().next().unwrap_or("").to_string();
                Some(Credentials {
                    user: user.clone(),
                    secret: password,
                    mechanism: Mechanism::Password,
                })
            }
            None => None,
        },
        (SmarthostAuth::Password, None) => None,
    };
    Ok(Options {
        starttls: config.tls == SmarthostTls::Starttls,
        implicit_tls: config.tls == SmarthostTls::Implicit,
        credentials,
        auth_plaintext: config.auth_plaintext,
    })
}

pub struct Upstream {
    stream: Stream,
    client: Client,
    reader: ReplyReader,
    buf: Box<[u8; 4096]>,
    start: usize,
    end: usize,
    /// `smarthost_timeout`, overriding the RFC table when set.
    timeout: Option<Duration>,
    pub name: String,
    /// Spool reads and their dot-stuffed form: taken at the first message and kept
    /// for the connection's life, not allocated per message.
    chunk: Vec<u8>,
    wire: Vec<u8>,
    /// The socket's read and write timeouts as last set: a syscall only on a change.
    read_timeout: Duration,
    write_timeout: Duration,
}

/// Spool content is read this much at a time.
const CHUNK: usize = 64 * 1024;

/// Why a connection to the smarthost could not be made ready for mail.
#[derive(Debug)]
pub struct ConnectError {
    pub reply: Reply,
    /// Where it failed.
    pub stage: Stage,
}

/// A failure that has no server reply: made into a 4xx so the message is retried.
fn local(text: &str) -> Reply {
    Reply::new(451, text)
}

/// The content as it leaves: the rewritten header section, if any, then the rest of
/// the spooled content.
pub fn outgoing<'a>(
    msg: &Message,
    header: Option<&'a Header>,
) -> io::Result<io::Chain<&'a [u8], io::Take<std::fs::File>>> {
    let mut content = msg.open_content()?;
    let text: &[u8] = match header {
        Some(h) => {
            use std::io::Seek;
            content
                .get_mut()
                .seek(io::SeekFrom::Current(h.skip as i64))?;
            content.set_limit(msg.size - h.skip);
            &h.text
        }
        None => b"",
    };
    Ok(text.chain(content))
}

/// Spool content is read this much at a time when it is re-encoded (quoted-printable
/// can triple it), so the wire buffer stays within its size.
const ENCODED_CHUNK: usize = 16 * 1024;

/// A replacement for the start of a message's content (`rewrite_from`).
pub struct Header {
    pub text: Vec<u8>,
    /// Octets of the spooled content that `text` replaces.
    pub skip: u64,
}

impl Upstream {
    /// Connects, reads the greeting and says EHLO (or HELO). An `Err` is the reason
    /// to record for every message that was due.
    ///
    /// With OAuth2 the token comes first; a permanent refusal at AUTH of a token from
    /// memory drops it and tries once more with a fresh one.
    pub fn connect(hostname: &str, host: &Host) -> Result<Upstream, ConnectError> {
        let (config, tls) = (&host.conf, host.tls.as_ref());
        #[cfg(feature = "tls")]
        let tokens = tls.and_then(|t| t.tokens.as_deref());
        #[cfg(not(feature = "tls"))]
        let tokens: Option<&crate::oauth::NoTokens> = None;
        let mut retried = false;
        loop {
            let token = match tokens {
                Some(source) => Some(source.token().map_err(|reply| ConnectError {
                    reply,
                    stage: Stage::Token,
                })?),
                None => None,
            };
            let mut stage = Stage::Connect;
            match Self::open(hostname, config, tls, token.as_ref(), &mut stage) {
                Ok(up) => return Ok(up),
                Err(reply) => {
                    if let (Some(source), Some(t)) = (tokens, &token)
                        && stage == Stage::Auth
                        && reply.is_permanent()
                        && t.from_memory
                        && !retried
                    {
                        log::info!(
                            "relay: {} refused the access token from memory ({reply}); \
                             getting a new one",
                            config.name
                        );
                        source.forget(t);
                        retried = true;
                        continue;
                    }
                    return Err(ConnectError { reply, stage });
                }
            }
        }
    }

    fn open(
        hostname: &str,
        config: &Smarthost,
        tls: Option<&TlsClient>,
        token: Option<&Token>,
        stage: &mut Stage,
    ) -> Result<Upstream, Reply> {
        let options = client_options(config, token)?;
        let sh = &config.address;
        let name = match config.named {
            true => format!("{} ({sh})", config.name),
            false => config.name.clone(),
        };
        let tcp = crate::stream::connect(&sh.host, sh.port, config.connect_timeout).map_err(
            |e| match e {
                Unreachable::Resolve(e) => {
                    local(&format!("4.4.3 cannot resolve smarthost {name}: {e}"))
                }
                Unreachable::Connect(why) => {
                    local(&format!("4.4.1 cannot connect to smarthost {name}: {why}"))
                }
            },
        )?;
        let _ = tcp.set_nodelay(true);
        if tracing() {
            let peer = tcp.peer_addr().map_or("?".into(), |a| a.to_string());
            println!("connected to {name} at {peer}");
        }
        let timeout = config.timeout.unwrap_or(GREETING);
        let _ = tcp.set_read_timeout(Some(timeout));
        let _ = tcp.set_write_timeout(Some(timeout));
        let stream = match (config.tls, tls) {
            #[cfg(feature = "tls")]
            (SmarthostTls::Implicit, Some(tls)) => {
                let s = tls
                    .handshake(tcp)
                    .map_err(|e| local(&format!("4.7.0 {name}: {e}")))?;
                if tracing() {
                    println!("TLS (implicit): {}", crate::tls::client::describe(&s));
                }
                Stream::Tls(Box::new(s))
            }
            _ => Stream::Plain(tcp),
        };
        let mut up = Upstream {
            stream,
            client: Client::new(hostname, options),
            reader: ReplyReader::new(),
            buf: Box::new([0; 4096]),
            start: 0,
            end: 0,
            timeout: config.timeout,
            name,
            chunk: Vec::new(),
            wire: Vec::new(),
            read_timeout: timeout,
            write_timeout: timeout,
        };
        if config.tls != SmarthostTls::None && !config.tls_verify {
            log::warn!(
                "relay: TLS certificate of {} NOT verified (smarthost_tls_verify no)",
                up.name
            );
        }
        loop {
            *stage = up.client.stage_now();
            let (reply, caps) = up.read_reply(GREETING)?;
            match up.client.on_reply(reply, caps) {
                Event::Continue => up.flush(COMMAND)?,
                Event::Ready => return Ok(up),
                Event::StartTls => up.start_tls(tls)?,
                Event::Closed(reply) => {
                    // Say QUIT where the client queued it, then report the reason.
                    let _ = up.flush(COMMAND);
                    *stage = up.client.stage();
                    return Err(reply);
                }
                other => return Err(local(&format!("4.5.0 unexpected client event {other:?}"))),
            }
        }
    }

    /// RFC 3207 §4: after `220` to STARTTLS, nothing may have come before the
    /// handshake; whatever did would be taken as if it came over TLS.
    fn start_tls(&mut self, tls: Option<&TlsClient>) -> Result<(), Reply> {
        if self.start < self.end || self.reader.partial() {
            return Err(local(&format!(
                "4.5.0 {} sent data after its STARTTLS reply (protocol error; dropped)",
                self.name
            )));
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = tls {
            let Some(tcp) = self.stream.take_plain() else {
                return Err(local(
                    "4.5.0 STARTTLS on a connection that is not plain TCP",
                ));
            };
            let stream = tls
                .handshake(tcp)
                .map_err(|e| local(&format!("4.7.0 {}: {e}", self.name)))?;
            if tracing() {
                println!("TLS (STARTTLS): {}", crate::tls::client::describe(&stream));
            }
            self.stream = Stream::Tls(Box::new(stream));
            self.client.tls_started();
            return self.flush(COMMAND);
        }
        let _ = tls;
        Err(local("4.7.0 STARTTLS required but this build has no TLS"))
    }

    fn wait(&self, rfc: Duration) -> Duration {
        self.timeout.unwrap_or(rfc)
    }

    /// Sets the socket's write timeout to the wait for `rfc` (RFC 5321 §4.5.3.2).
    fn write_timeout(&mut self, rfc: Duration) {
        let t = self.wait(rfc);
        if t != self.write_timeout
            && let Some(tcp) = self.stream.tcp()
        {
            let _ = tcp.set_write_timeout(Some(t));
            self.write_timeout = t;
        }
    }

    fn read_timeout(&mut self, rfc: Duration) {
        let t = self.wait(rfc);
        if t != self.read_timeout
            && let Some(tcp) = self.stream.tcp()
        {
            let _ = tcp.set_read_timeout(Some(t));
            self.read_timeout = t;
        }
    }

    /// Sends what the client has queued.
    fn flush(&mut self, timeout: Duration) -> Result<(), Reply> {
        if self.client.output().is_empty() {
            return Ok(());
        }
        self.write_timeout(timeout);
        if tracing() {
            trace_out(self.client.output());
        }
        let result = self
            .stream
            .write_all(self.client.output())
            .and_then(|()| self.stream.flush());
        self.client.clear_output();
        result.map_err(|e| {
            local(&format!(
                "4.4.2 lost connection with {} while sending: {e}",
                self.name
            ))
        })
    }

    fn read_reply(
        &mut self,
        timeout: Duration,
    ) -> Result<(Reply, crate::protocol::client::Capabilities), Reply> {
        self.read_timeout(timeout);
        loop {
            if self.start < self.end {
                let (n, got) = self.reader.feed(&self.buf[self.start..self.end]);
                self.start += n;
                match got {
                    Some(Ok(reply)) => {
                        if tracing() {
                            trace_in(&reply.0);
                        }
                        return Ok(reply);
                    }
                    Some(Err(e)) => {
                        return Err(local(&format!("4.5.0 bad reply from {}: {e}", self.name)));
                    }
                    None => {}
                }
            }
            self.start = 0;
            self.end = match self.stream.read(&mut self.buf[..]) {
                Ok(0) => return Err(local(&format!("4.4.2 connection closed by {}", self.name))),
                Ok(n) => n,
                Err(e) if crate::is_timeout(&e) => {
                    return Err(local(&format!("4.4.2 timeout waiting for {}", self.name)));
                }
                Err(e) => {
                    return Err(local(&format!(
                        "4.4.2 lost connection with {}: {e}",
                        self.name
                    )));
                }
            };
        }
    }

    /// Checks a message against the server's limits; an `Err` fails every recipient.
    pub fn check(&self, tx: &Transaction<'_>) -> Result<(), Reply> {
        self.client.check(tx)
    }

    /// Runs one transaction. On `Err` the connection is unusable and must be dropped;
    /// the results then hold what is known (the rest is deferred).
    pub fn send(
        &mut self,
        tx: &Transaction<'_>,
        msg: &Message,
        header: Option<&Header>,
        plan: Option<&Plan>,
    ) -> Result<Vec<RcptResult>, Vec<RcptResult>> {
        self.client.start(tx);
        let mut timeout = COMMAND;
        let outcome = loop {
            if let Err(reason) = self.flush(COMMAND) {
                break Err(self.client.connection_lost(&reason));
            }
            let (reply, caps) = match self.read_reply(timeout) {
                Ok(r) => r,
                Err(reason) => break Err(self.client.connection_lost(&reason)),
            };
            match self.client.on_reply(reply, caps) {
                Event::Continue => {}
                Event::SendBody => {
                    if let Err(reason) = self.send_body(msg, header, plan) {
                        break Err(self.client.connection_lost(&reason));
                    }
                    self.client.body_sent();
                    timeout = DATA_END;
                }
                Event::Done(results) => break Ok(results),
                Event::Ready | Event::Closed(_) | Event::StartTls => {
                    break Err(self
                        .client
                        .connection_lost(&local("4.5.0 smarthost session ended unexpectedly")));
                }
            }
        };
        let results = outcome?;
        // A failed transaction is followed by RSET; read its reply before the next.
        while self.client.busy() {
            let ok = self.flush(COMMAND).and_then(|()| self.read_reply(COMMAND));
            match ok {
                Ok((reply, caps)) => {
                    if let Event::Closed(_) = self.client.on_reply(reply, caps) {
                        return Err(results);
                    }
                }
                Err(_) => return Err(results),
            }
        }
        if self.client.is_ready() {
            Ok(results)
        } else {
            Err(results)
        }
    }

    /// Streams the content, dot-stuffed, with large reads and writes; re-encoded on
    /// the way when it has lines over 998 octets (`plan`).
    fn send_body(
        &mut self,
        msg: &Message,
        header: Option<&Header>,
        plan: Option<&Plan>,
    ) -> Result<(), Reply> {
        let cannot_read = |e: io::Error| local(&format!("4.3.0 cannot read spool file: {e}"));
        let mut content = outgoing(msg, header).map_err(cannot_read)?;
        self.write_timeout(DATA_BLOCK);
        let mut stuffer = DotStuffer::new();
        if self.chunk.len() < CHUNK {
            self.chunk = vec![0u8; CHUNK];
            self.wire = Vec::with_capacity(2 * CHUNK + 8);
        }
        let mut encoder = plan.map(|p| Encoder::new(p.clone()));
        let mut encoded = Vec::new();
        let read_len = if encoder.is_some() {
            ENCODED_CHUNK
        } else {
            CHUNK
        };
        let (chunk, wire) = (&mut self.chunk, &mut self.wire);
        let lost = |e: io::Error| local(&format!("4.4.2 lost connection while sending data: {e}"));
        loop {
            let n = content.read(&mut chunk[..read_len]).map_err(cannot_read)?;
            wire.clear();
            match encoder.as_mut() {
                Some(e) if n == 0 => {
                    encoded.clear();
                    e.finish(&mut encoded);
                    stuffer.encode(&encoded, wire);
                }
                Some(e) => {
                    encoded.clear();
                    e.feed(&chunk[..n], &mut encoded);
                    stuffer.encode(&encoded, wire);
                }
                None => stuffer.encode(&chunk[..n], wire),
            }
            if n == 0 {
                break;
            }
            self.stream.write_all(wire).map_err(lost)?;
        }
        stuffer.finish(wire);
        self.stream
            .write_all(wire)
            .and_then(|()| self.stream.flush())
            .map_err(lost)
    }

    /// What the smarthost said it can do in its EHLO reply.
    pub fn capabilities(&self) -> &crate::protocol::client::Capabilities {
        self.client.capabilities()
    }

    /// Passthrough: sends one command of a transaction and returns the smarthost's
    /// reply. `Err`: the connection is unusable (lost, timed out, 421); the reply is a
    /// 4xx that says why, for the client.
    pub fn single(&mut self, command: Single<'_>) -> Result<Reply, Reply> {
        self.client.single(command);
        self.flush(COMMAND)?;
        let reply = self.answer(COMMAND)?;
        if matches!(command, Single::Data) && reply.code == 354 {
            self.write_timeout(DATA_BLOCK);
        }
        Ok(reply)
    }

    /// Passthrough: the next reply; a 421 (the smarthost is closing) is a failure of
    /// the connection, not an answer to give the client as it is.
    fn answer(&mut self, timeout: Duration) -> Result<Reply, Reply> {
        let (reply, _) = self.read_reply(timeout)?;
        if reply.code == 421 {
            return Err(local(&format!("4.4.2 {} is closing: {reply}", self.name)));
        }
        Ok(reply)
    }

    /// Passthrough: writes dot-stuffed message bytes (after `354`).
    pub fn write_data(&mut self, wire: &[u8]) -> Result<(), Reply> {
        self.stream
            .write_all(wire)
            .map_err(|e| self.lost_in_data(&e))
    }

    fn lost_in_data(&self, e: &io::Error) -> Reply {
        local(&format!(
            "4.4.2 lost connection with {} while sending data: {e}",
            self.name
        ))
    }

    /// Passthrough: writes the last stuffed bytes (ending in `.CRLF`) and returns the
    /// smarthost's final reply.
    pub fn end_data(&mut self, wire: &[u8]) -> Result<Reply, Reply> {
        self.write_data(wire)?;
        self.stream.flush().map_err(|e| self.lost_in_data(&e))?;
        self.answer(DATA_END)
    }

    /// Says QUIT and waits briefly for the answer (RFC 5321 §4.1.1.10).
    pub fn quit(mut self) {
        self.client.quit();
        if self.flush(COMMAND).is_ok() {
            let _ = self.read_reply(Duration::from_secs(5).min(self.wait(COMMAND)));
        }
    }
}
