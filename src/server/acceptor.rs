//! The acceptor: one thread, one mio poll over every listener. It never blocks on a
//! client: a connection goes to an idle worker or the bounded hand-off queue, or it
//! is answered `421 4.3.2` at once and closed.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::Shared;
use crate::protocol::reply;

pub const WAKE: Token = Token(usize::MAX);

pub struct Acceptor {
    pub poll: Poll,
    /// Each listener, whether it speaks TLS from the first byte, and its address as
    /// the config gives it (a reload compares those).
    pub listeners: Vec<(TcpListener, bool, std::net::SocketAddr)>,
    pub pool: Sender<super::worker::Incoming>,
    pub shared: Arc<Shared>,
    pub max_connections: usize,
    pub max_connections_per_ip: u32,
    /// Addresses `max_connections_per_ip` does not apply to (`connection_limit_exempt`).
    pub exempt: Vec<crate::config::Cidr>,
    pub stats: Arc<crate::stats::Stats>,
    /// `metrics_listen`, and what makes its page.
    pub metrics: Option<(super::metrics::Metrics, Page)>,
    /// Reloads: the listeners and limits to use from now on (with a wake-up).
    pub updates: crossbeam_channel::Receiver<Update>,
}

/// What a reload changes in the acceptor.
pub struct Update {
    /// Every listener from now on: those kept (taken from the current set by their
    /// configured address) and the new ones, bound by the main thread.
    pub keep: Vec<std::net::SocketAddr>,
    pub new: Vec<(std::net::SocketAddr, TcpListener, bool)>,
    pub max_connections_per_ip: u32,
    pub exempt: Vec<crate::config::Cidr>,
    pub metrics_allow: Vec<crate::config::Cidr>,
}

/// Makes the metrics page when a client asks for it.
pub type Page = Box<dyn Fn() -> String + Send>;

/// The first token of the metrics connections (the listener's is one less).
pub const METRICS_BASE: usize = 1 << 20;

impl Acceptor {
    pub fn run(mut self) -> io::Result<()> {
        self.register_listeners()?;
        if let Some((m, _)) = &self.metrics {
            m.register(self.poll.registry())?;
        }
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self
                .metrics
                .as_ref()
                .and_then(|(m, _)| m.timeout(std::time::Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if self.shared.shutting_down.load(Ordering::Relaxed) {
                // Dropping the listeners and the pool sender lets the workers run out.
                return Ok(());
            }
            for ev in events.iter() {
                let t = ev.token();
                match &mut self.metrics {
                    Some((m, _)) if t == m.listener_token() => m.accept(self.poll.registry()),
                    Some((m, page)) if m.owns(t) => m.ready(t, self.poll.registry(), page),
                    _ if t != WAKE => self.accept_all(t.0),
                    _ => {
                        while let Ok(u) = self.updates.try_recv() {
                            self.update(u);
                        }
                    }
                }
            }
            if let Some((m, _)) = &mut self.metrics {
                m.expire(self.poll.registry(), std::time::Instant::now());
            }
        }
    }

    fn register_listeners(&self) -> io::Result<()> {
        for (i, (l, ..)) in self.listeners.iter().enumerate() {
            l.set_nonblocking(true)?;
            self.poll.registry().register(
                &mut SourceFd(&l.as_raw_fd()),
                Token(i),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }

    /// A reload: listeners no longer configured are closed, new ones opened; the
    /// limits are replaced. Connections already accepted are not touched.
    fn update(&mut self, u: Update) {
        for (l, ..) in &self.listeners {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&l.as_raw_fd()));
        }
        let old = std::mem::take(&mut self.listeners);
        for (l, tls, addr) in old {
            if u.keep.contains(&addr) {
                self.listeners.push((l, tls, addr));
            } else {
                log::info!("reload: no longer listening on {addr}");
            }
        }
        for (addr, l, tls) in u.new {
            log::info!(
                "reload: now listening on {addr}{}",
                if tls { " tls" } else { "" }
            );
            self.listeners.push((l, tls, addr));
        }
        if let Err(e) = self.register_listeners() {
            log::error!("reload: cannot watch the listeners: {e}");
        }
        self.max_connections_per_ip = u.max_connections_per_ip;
        self.exempt = u.exempt;
        if let Some((m, _)) = &mut self.metrics {
            m.allow = u.metrics_allow;
        }
    }

    fn accept_all(&mut self, i: usize) {
        loop {
            let Some((listener, tls, _)) = self.listeners.get(i) else {
                return;
            };
            let tls = *tls;
            match listener.accept() {
                Ok((stream, addr)) => self.hand_off(stream, addr, tls),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of file descriptors or similar: the listener stays readable,
                    // so pause instead of spinning.
                    log::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    fn hand_off(&mut self, mut stream: TcpStream, addr: std::net::SocketAddr, tls: bool) {
        let ip = addr.ip().to_canonical();
        // Exempt addresses are counted all the same, so that every leave has its enter.
        let limit = if self.exempt.iter().any(|c| c.contains(ip)) {
            u32::MAX
        } else {
            self.max_connections_per_ip
        };
        if !self.shared.per_ip.enter(ip, limit) {
            log::warn!(
                "too many connections from [{ip}] (max_connections_per_ip {}): refused [{ip}]:{} with 421 4.7.0",
                self.max_connections_per_ip,
                addr.port()
            );
            let _ = stream.set_nonblocking(true);
            let _ = stream.write_all(reply::TOO_MANY_FROM_ADDRESS.as_bytes());
            self.stats.reject(crate::stats::Reject::Connection);
            return;
        }
        let active = self.shared.active.fetch_add(1, Ordering::AcqRel);
        let refuse = |mut stream: TcpStream, why: &str| {
            self.stats.reject(crate::stats::Reject::Connection);
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
            self.shared.per_ip.leave(ip);
            log::warn!(
                "{why}: refused [{}]:{} with 421 4.3.2",
                addr.ip(),
                addr.port()
            );
            // A fresh socket's send buffer is empty: this cannot block.
            let _ = stream.set_nonblocking(true);
            let _ = stream.write_all(reply::TOO_MANY_CONNECTIONS.as_bytes());
        };
        if active >= self.max_connections {
            refuse(stream, "too many connections");
            return;
        }
        match self.pool.try_send((stream, tls, ip)) {
            Ok(()) => {}
            Err(TrySendError::Full((s, ..))) | Err(TrySendError::Disconnected((s, ..))) => {
                refuse(s, "all workers busy")
            }
        }
    }
}
