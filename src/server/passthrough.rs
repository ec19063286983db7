//! `mode passthrough`: no spool. Each worker keeps its own connection to the
//! smarthost and puts the client's transaction through it as it happens, as
//! Postfix's before-queue proxy does: MAIL and each RCPT get the smarthost's reply,
//! the body streams out dot-stuffed as it arrives, and the client's `250` (or
//! refusal) after DATA is the smarthost's. Nothing is written to disk, and the
//! client's own retry is the durability.
//!
//! One connection per worker (not one shared by all) because a transaction holds
//! its connection from MAIL to the end of data, while the client takes its time:
//! shared, every session would wait for the slowest client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::protocol::address::Mailbox;
use crate::protocol::client::{Reply, Single};
use crate::protocol::server::Envelope;
use crate::protocol::stuff::DotStuffer;
use crate::relay::{Hosts, Upstream};
use crate::rewrite::{HEADER_CAP, header_len, rewrite_from};

/// Dot-stuffed output is written in pieces of at most this much input.
const PIECE: usize = 16 * 1024;

/// The Received: line is not known when MAIL is sent; SIZE= allows for it.
const TRACE_ALLOWANCE: u64 = 512;

pub struct Passthrough {
    config: Arc<Config>,
    hosts: Hosts,
    conn: Option<Upstream>,
    /// The smarthost `conn` is to.
    host: usize,
    /// When the connection was last used; it is closed after `smarthost_idle`.
    used: Instant,
    /// The smarthost accepted MAIL and has not given its final reply: RSET comes
    /// before the next MAIL.
    open: bool,
    /// `354` came: the body is going out.
    sending: bool,
    /// The connection failed while the body went out: the answer at end of data.
    failed: Option<Reply>,
    stuffer: DotStuffer,
    /// Stuffed bytes on their way out; allocated at the first message.
    wire: Vec<u8>,
    /// `rewrite_from`: the start of the content until its header section is whole.
    header: Vec<u8>,
    header_done: bool,
}

impl Passthrough {
    pub fn new(config: Arc<Config>, hosts: Hosts) -> Passthrough {
        Passthrough {
            config,
            hosts,
            conn: None,
            host: 0,
            used: Instant::now(),
            open: false,
            sending: false,
            failed: None,
            stuffer: DotStuffer::new(),
            wire: Vec::new(),
            header: Vec::new(),
            header_done: true,
        }
    }

    /// How long the worker may wait for its next client before `idle` has work.
    pub fn idle_wait(&self) -> Option<Duration> {
        self.conn
            .as_ref()
            .map(|_| self.idle_time().saturating_sub(self.used.elapsed()))
    }

    fn idle_time(&self) -> Duration {
        self.hosts[self.host].conf.idle
    }

    /// The name of the smarthost the last transaction went to, for the log.
    pub fn relay_name(&self) -> &str {
        self.hosts[self.host].name()
    }

    /// Between clients: closes the connection once it was idle `smarthost_idle`.
    pub fn idle(&mut self) {
        if self.conn.is_some() && self.used.elapsed() >= self.idle_time() {
            if let Some(c) = self.conn.take() {
                log::debug!("passthrough: closing idle connection to {}", c.name);
                c.quit();
            }
            self.open = false;
        }
    }

    /// Connects unless a connection to a smarthost of `route` is open: the first of
    /// the route that can be used, failing over to the next before the client hears
    /// anything. `Err`: none could be used, as a 4xx for the client.
    fn connect(&mut self, route: usize) -> Result<(), Reply> {
        let hosts = Arc::clone(&self.hosts);
        let config = Arc::clone(&self.config);
        let order = &config.routes[route].hosts;
        if self.conn.is_some() && !order.contains(&self.host) {
            if let Some(c) = self.conn.take() {
                c.quit();
            }
            self.open = false;
        }
        if self.conn.is_some() {
            return Ok(());
        }
        let mut tried = 0u64;
        let mut last: Option<usize> = None;
        while let Some(i) = crate::relay::hosts::pick(&hosts, order, tried, Instant::now()) {
            tried |= 1 << i;
            if let Some(prev) = last {
                log::info!(
                    "passthrough: failing over from {} to {}",
                    hosts[prev].name(),
                    hosts[i].name()
                );
            }
            match Upstream::connect(&config.hostname, &hosts[i]) {
                Ok(c) => {
                    hosts[i].worked();
                    log::debug!("passthrough: connected to {}", c.name);
                    self.conn = Some(c);
                    self.host = i;
                    self.open = false;
                    return Ok(());
                }
                Err(e) => {
                    let skip = hosts[i].failed(&config, &e.reply);
                    log::warn!(
                        "passthrough: cannot use {} ({}): {}{}",
                        hosts[i].name(),
                        e.stage,
                        e.reply,
                        if hosts.len() > 1 {
                            format!("; skipped for {}s", skip.as_secs())
                        } else {
                            String::new()
                        }
                    );
                    last = Some(i);
                }
            }
        }
        // The client retries; the details (addresses, a refusal of our credentials)
        // are for the log, not for the client.
        Err(Reply::new(
            451,
            "4.4.0 smarthost unavailable, try again later",
        ))
    }

    /// Sends one command on the open connection; a failure drops it.
    fn single(&mut self, command: Single<'_>) -> Result<Reply, Reply> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Reply::new(451, "4.4.2 no connection to the smarthost"));
        };
        self.used = Instant::now();
        let r = conn.single(command);
        if r.is_err() {
            self.drop_connection();
        }
        r
    }

    fn drop_connection(&mut self) {
        self.conn = None;
        self.open = false;
        self.sending = false;
    }

    /// MAIL for the client's transaction. A reused connection the smarthost closed
    /// while idle costs one reconnect, not a refusal.
    pub fn mail(&mut self, env: &Envelope) -> Reply {
        if self.open {
            match self.single(Single::Rset) {
                Ok(r) if r.code / 100 == 2 => self.open = false,
                _ => self.drop_connection(),
            }
        }
        let config = Arc::clone(&self.config);
        let sender = String::from_utf8_lossy(&env.sender);
        let sender = match &config.rewrite_sender {
            Some(s) if !sender.is_empty() => s.as_str(),
            _ => &sender,
        };
        let command = Single::Mail {
            sender,
            size: env.size.map(|s| s.saturating_add(TRACE_ALLOWANCE)),
            eight_bit: env.body == crate::protocol::command::BodyType::EightBitMime,
            smtputf8: env.smtputf8,
        };
        // Passthrough routes choose by sender only (the config refuses the others).
        let route = config.route_of(&env.sender, b"");
        for fresh_try in [false, true] {
            let reused = self.conn.is_some() && !fresh_try;
            if let Err(r) = self.connect(route) {
                return r;
            }
            if env.smtputf8
                && !self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.capabilities().smtputf8)
            {
                return Reply::new(553, "5.6.7 smarthost does not support SMTPUTF8");
            }
            match self.single(command) {
                Ok(r) => {
                    self.open = r.code / 100 == 2;
                    return r;
                }
                Err(r) if !reused => return r,
                Err(_) => log::debug!("passthrough: reused connection failed; reconnecting"),
            }
        }
        Reply::new(451, "4.4.2 smarthost connection failed")
    }

    /// RCPT for each address; the replies as far as the connection lasted.
    pub fn rcpt(&mut self, addrs: &[Mailbox]) -> Vec<Reply> {
        let mut replies = Vec::with_capacity(addrs.len());
        for a in addrs {
            let a = String::from_utf8_lossy(a);
            match self.single(Single::Rcpt(&a)) {
                Ok(r) => replies.push(r),
                Err(r) => {
                    replies.push(r);
                    break;
                }
            }
        }
        replies
    }

    /// DATA; on `354` the Received: line `trace` goes out first.
    pub fn data(&mut self, trace: &[u8]) -> Reply {
        let r = match self.single(Single::Data) {
            Ok(r) => r,
            Err(r) => return r,
        };
        if r.code != 354 {
            return r;
        }
        self.sending = true;
        self.failed = None;
        self.stuffer = DotStuffer::new();
        if self.wire.capacity() == 0 {
            self.wire = Vec::with_capacity(2 * PIECE + 8);
        }
        self.header.clear();
        self.header_done = self.config.rewrite_from.is_none();
        self.body(trace);
        r
    }

    /// Message bytes as the session decoded them.
    pub fn body(&mut self, mut bytes: &[u8]) {
        if !self.header_done {
            let take = bytes.len().min(HEADER_CAP - self.header.len());
            if self.header.capacity() == 0 {
                self.header.reserve_exact(HEADER_CAP);
            }
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if let Some(len) = header_len(&self.header, false) {
                self.release_header(len);
            } else if self.header.len() >= HEADER_CAP {
                log::warn!(
                    "passthrough: header section longer than {HEADER_CAP} octets; From: not rewritten"
                );
                self.release_header(0);
            }
        }
        self.send(bytes);
    }

    /// The header section (its first `len` octets) is known: rewrite its From and
    /// send what was held back.
    fn release_header(&mut self, len: usize) {
        self.header_done = true;
        let held = std::mem::take(&mut self.header);
        let config = Arc::clone(&self.config);
        let new = config.rewrite_from.as_deref().unwrap_or_default();
        match (len > 0).then(|| rewrite_from(&held[..len], new)).flatten() {
            Some(text) => {
                self.send(&text);
                self.send(&held[len..]);
            }
            None => self.send(&held),
        }
        self.header = held;
        self.header.clear();
    }

    /// Stuffs and writes; the first failure is kept for the end of data.
    fn send(&mut self, bytes: &[u8]) {
        for piece in bytes.chunks(PIECE) {
            if self.failed.is_some() {
                return;
            }
            self.wire.clear();
            self.stuffer.encode(piece, &mut self.wire);
            let Some(conn) = self.conn.as_mut() else {
                self.failed = Some(Reply::new(451, "4.4.2 no connection to the smarthost"));
                return;
            };
            if let Err(r) = conn.write_data(&self.wire) {
                self.failed = Some(r);
                self.drop_connection();
            }
        }
    }

    /// The end of data: the smarthost's final reply, for the client.
    pub fn end(&mut self) -> Reply {
        if !self.header_done {
            let len = header_len(&self.header, true).unwrap_or(0);
            self.release_header(len);
        }
        self.used = Instant::now();
        if let Some(r) = self.failed.take() {
            return r;
        }
        self.wire.clear();
        self.stuffer.finish(&mut self.wire);
        let Some(conn) = self.conn.as_mut() else {
            return Reply::new(451, "4.4.2 no connection to the smarthost");
        };
        let r = conn.end_data(&self.wire);
        self.sending = false;
        self.open = false;
        r.unwrap_or_else(|r| {
            self.drop_connection();
            r
        })
    }

    /// Shutdown: says QUIT.
    pub fn close(mut self) {
        if let Some(c) = self.conn.take() {
            c.quit();
        }
    }

    /// The message will not be sent (the client vanished or sent something this
    /// relay refuses). A DATA under way cannot be ended without delivering what was
    /// sent so far, so its connection is closed instead.
    pub fn abandon(&mut self) {
        if self.sending {
            log::debug!("passthrough: closing the smarthost connection to abandon a message");
            self.drop_connection();
        }
        self.failed = None;
    }
}
