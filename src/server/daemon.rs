//! The daemon's wiring: the spool lock, the listeners, the threads (acceptor,
//! workers, relay, control) and the channels between them, and the shutdown
//! sequence. `main` loads the config, registers the signals, starts a `Daemon` and
//! stops it on SIGTERM; the tests start and stop one in-process.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::Shared;
use super::acceptor::{self, Acceptor};
use super::worker::{TlsServer, Worker};
use crate::config::{Config, Mode, SmarthostTls};
use crate::protocol::policy::Policy;
use crate::relay::{Control, Hosts, Relay, Request};
use crate::spool::{DaemonLock, Spool};

pub use super::Users;

/// What a daemon is made of, all loaded and checked before it starts.
pub struct Parts {
    pub config: Config,
    pub policy: Arc<Policy>,
    /// The smarthosts, each with its TLS client.
    pub hosts: Hosts,
    /// The certificate for STARTTLS and `tls` listeners.
    pub tls_server: Option<TlsServer>,
    pub users: Users,
}

/// A running daemon: its threads and what stops them.
pub struct Daemon {
    config: Arc<Config>,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    waker: mio::Waker,
    acceptor: JoinHandle<std::io::Result<()>>,
    workers: Vec<JoinHandle<()>>,
    relay: JoinHandle<()>,
    relay_tx: Sender<Control>,
    stop_relay: Arc<AtomicBool>,
    updates: Sender<acceptor::Update>,
    _lock: DaemonLock,
}

/// Keys a reload does not change (the running value stays; the log says so).
pub const RESTART_KEYS: &[&str] = &[
    "spool",
    "user",
    "workers",
    "max_connections",
    "mode",
    "log",
    "syslog_socket",
    "metrics_listen",
    "rate_limit",
];

impl Daemon {
    /// Takes the spool (a second daemon on it stops here, having changed nothing),
    /// binds every listener, calls `drop_privileges` (after binding, before any
    /// thread), starts the threads and logs the start line.
    pub fn start(
        parts: Parts,
        drop_privileges: impl FnOnce(&Config) -> Result<(), String>,
    ) -> Result<Daemon, String> {
        let Parts {
            config,
            policy,
            hosts,
            tls_server,
            users,
        } = parts;
        let config = Arc::new(config);
        let lock = DaemonLock::take(&config.spool)?;
        let spool = Arc::new(
            Spool::open(&config.spool)
                .map_err(|e| format!("cannot open spool {}: {e}", config.spool.display()))?,
        );
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for l in &config.listen {
            let listener = TcpListener::bind(l.addr)
                .map_err(|e| format!("cannot listen on {}: {e}", l.addr))?;
            addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
            listeners.push((listener, l.tls, l.addr));
        }
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .map_err(|e| format!("cannot listen on {addr} (metrics_listen): {e}"))?,
            ),
            None => None,
        };
        drop_privileges(&config)?;
        // Queue commands and sendmail's wake-ups, for the relay thread.
        let control_path = crate::relay::control_path(&spool);
        let _ = std::fs::remove_file(&control_path);
        let control = std::os::unix::net::UnixDatagram::bind(&control_path)
            .map_err(|e| format!("cannot bind {}: {e}", control_path.display()))?;

        // (Without TLS `Users` is `Option<()>`, which is Copy.)
        #[allow(clippy::clone_on_copy)]
        let live = super::Live {
            config: Arc::clone(&config),
            policy: Arc::clone(&policy),
            hosts: Arc::clone(&hosts),
            tls: tls_server.clone(),
            users: users.clone(),
            generation: 0,
        };
        let shared = Arc::new(Shared::new(config.workers, config.rate_limit, live));
        let stop_relay = Arc::new(AtomicBool::new(false));
        let rescan = Arc::new(AtomicBool::new(false));
        // Every slot is made (and its memory touched) when the channel is: 256 ids is
        // plenty, as a full channel only makes the relay re-read queue/.
        let (relay_tx, relay_rx) = crossbeam_channel::bounded::<Control>(256);
        // The hand-off queue: connections beyond the busy workers wait here, up to
        // max_connections in all; past that the acceptor answers 421.
        let (pool_tx, pool_rx) =
            crossbeam_channel::bounded(config.max_connections - config.workers);

        let stats = Arc::new(crate::stats::Stats::new(crate::time::now_unix()));
        let relay = {
            let shared = Arc::clone(&shared);
            let flags = crate::relay::Flags {
                stop: Arc::clone(&stop_relay),
                rescan: Arc::clone(&rescan),
            };
            let (spool, stats) = (Arc::clone(&spool), Arc::clone(&stats));
            spawn("relay", 256 * 1024, move || {
                // A bug in delivery must not stop delivery for good (unwinding
                // builds; with panic=abort the supervisor restarts the whole daemon).
                // The schedule is rebuilt from the spool, so nothing is lost.
                loop {
                    // After a panic: the settings of the last reload.
                    let live = shared.live();
                    let settings = crate::relay::Settings {
                        config: Arc::clone(&live.config),
                        hosts: Arc::clone(&live.hosts),
                        policy: Arc::clone(&live.policy),
                    };
                    let r = Relay::new(
                        settings,
                        Arc::clone(&spool),
                        relay_rx.clone(),
                        flags.clone(),
                        Arc::clone(&stats),
                    );
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.run())) {
                        Ok(()) => break,
                        Err(_) => {
                            log::error!("relay thread panicked; restarting it in 5s");
                            std::thread::sleep(Duration::from_secs(5));
                        }
                    }
                }
            })?
        };
        {
            let relay_tx = relay_tx.clone();
            let (stats, shared) = (Arc::clone(&stats), Arc::clone(&shared));
            spawn("control", 64 * 1024, move || {
                loop {
                    match crate::sendmail::queue::receive(&control) {
                        Ok(Some((Request::Status, reply_to))) => {
                            let hosts = shared.live().hosts.iter().map(|h| h.status()).collect();
                            let snap = crate::stats::Snapshot::of(&stats, hosts).encode();
                            let answer = crate::relay::Answer::Done(snap).encode();
                            if let Some(addr) = reply_to {
                                let _ = std::os::unix::net::UnixDatagram::unbound()
                                    .and_then(|s| s.send_to_addr(answer.as_bytes(), &addr));
                            }
                        }
                        Ok(Some((req, reply_to))) => {
                            let request = Control::Request(Box::new((req, reply_to)));
                            if relay_tx.send(request).is_err() {
                                break;
                            }
                        }
                        Ok(None) => log::warn!("control: ignored a malformed request"),
                        Err(e) => {
                            log::error!("control: {e}");
                            break;
                        }
                    }
                }
            })?;
        }
        let mut workers = Vec::new();
        for index in 0..config.workers {
            let w = Worker {
                index,
                config: Arc::clone(&config),
                spool: Arc::clone(&spool),
                relay: relay_tx.clone(),
                rescan: Arc::clone(&rescan),
                shared: Arc::clone(&shared),
                tls: tls_server.clone(),
                hosts: Arc::clone(&hosts),
                policy: Arc::clone(&policy),
                stats: Arc::clone(&stats),
                #[cfg(feature = "tls")]
                users: users.clone(),
                generation: 0,
            };
            let rx = pool_rx.clone();
            workers.push(spawn(&format!("worker{index}"), 256 * 1024, move || {
                w.run(rx)
            })?);
        }
        drop(pool_rx);
        let _ = &users;
        let poll = mio::Poll::new().map_err(|e| e.to_string())?;
        let waker = mio::Waker::new(poll.registry(), acceptor::WAKE).map_err(|e| e.to_string())?;
        let (updates_tx, updates) = crossbeam_channel::unbounded();
        let acceptor = Acceptor {
            updates,
            poll,
            listeners,
            pool: pool_tx,
            shared: Arc::clone(&shared),
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip(),
            exempt: config.connection_limit_exempt.clone(),
            stats: Arc::clone(&stats),
            metrics: metrics_listener.map(|l| {
                let m = super::metrics::Metrics::new(
                    l,
                    config.metrics_allow.clone(),
                    acceptor::METRICS_BASE,
                );
                let (stats, shared, root) = (
                    Arc::clone(&stats),
                    Arc::clone(&shared),
                    config.spool.clone(),
                );
                let page: acceptor::Page = Box::new(move || {
                    let queue = crate::stats::Queue::read(&root).unwrap_or_default();
                    let live = shared.live();
                    let hosts: Vec<_> = live.hosts.iter().map(|h| h.status()).collect();
                    stats.prometheus(&queue, &hosts, crate::time::now_unix())
                });
                (m, page)
            }),
        };
        let acceptor = std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || acceptor.run())
            .map_err(|e| e.to_string())?;
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            let (stats, shared, root, stop) = (
                Arc::clone(&stats),
                Arc::clone(&shared),
                config.spool.clone(),
                Arc::clone(&stop_relay),
            );
            spawn("status", 64 * 1024, move || {
                systemd_status(&stats, &shared, &root, &stop)
            })?;
        }
        log_start(&config, &hosts);
        if let Some(addr) = config.metrics_listen {
            let allow: Vec<String> = config.metrics_allow.iter().map(|c| c.to_string()).collect();
            log::info!(
                "metrics: serving http://{addr}/metrics to {}",
                if allow.is_empty() {
                    "nobody (metrics_allow none)".into()
                } else {
                    allow.join(" ")
                }
            );
        }
        Ok(Daemon {
            config,
            shared,
            addrs,
            waker,
            acceptor,
            workers,
            relay,
            relay_tx,
            stop_relay,
            updates: updates_tx,
            _lock: lock,
        })
    }

    /// The addresses the listeners are bound to (a port 0 in the config is here the
    /// port the kernel chose).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// SIGHUP: new sessions and deliveries use `parts` from now on; sessions in
    /// progress finish with what they started with. Listeners are opened and closed
    /// to match `listen`; the keys in `RESTART_KEYS` keep their running values.
    pub fn reload(&mut self, parts: Parts) {
        let Parts {
            mut config,
            policy,
            hosts,
            tls_server,
            users,
        } = parts;
        let old = Arc::clone(&self.config);
        let mut kept = Vec::new();
        {
            let (o, n) = (old.effective(), config.effective());
            for key in RESTART_KEYS {
                let pick = |t: &str| -> Vec<String> {
                    t.lines()
                        .filter(|l| l.split_whitespace().next() == Some(key))
                        .map(str::to_string)
                        .collect()
                };
                if pick(&o) != pick(&n) {
                    kept.push(*key);
                }
            }
        }
        config.spool = old.spool.clone();
        config.user = old.user.clone();
        config.workers = old.workers;
        config.max_connections = old.max_connections;
        config.mode = old.mode;
        config.log = old.log;
        config.syslog_socket = old.syslog_socket.clone();
        config.metrics_listen = old.metrics_listen;
        config.rate_limit = old.rate_limit;
        if !kept.is_empty() {
            log::warn!(
                "reload: {} changed: needs a restart; the running value stays",
                kept.join(", ")
            );
        }
        // Listeners: the new ones are bound here (after a drop of root, a port below
        // 1024 cannot be: that needs a restart).
        let current: Vec<std::net::SocketAddr> = old.listen.iter().map(|l| l.addr).collect();
        let mut keep = Vec::new();
        let mut new = Vec::new();
        let mut listen = Vec::new();
        for l in &config.listen {
            if current.contains(&l.addr) && old.listen.iter().any(|o| o == l) {
                keep.push(l.addr);
                listen.push(*l);
                continue;
            }
            match TcpListener::bind(l.addr) {
                Ok(b) => {
                    new.push((l.addr, b, l.tls));
                    listen.push(*l);
                }
                Err(e) => log::error!(
                    "reload: cannot listen on {}: {e}; not listening there",
                    l.addr
                ),
            }
        }
        config.listen = listen;
        let config = Arc::new(config);
        let generation = self.shared.live().generation + 1;
        let live = super::Live {
            config: Arc::clone(&config),
            policy: Arc::clone(&policy),
            hosts: Arc::clone(&hosts),
            tls: tls_server,
            users,
            generation,
        };
        *self.shared.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        let _ = self.updates.send(acceptor::Update {
            keep,
            new,
            max_connections_per_ip: config.max_connections_per_ip(),
            exempt: config.connection_limit_exempt.clone(),
            metrics_allow: config.metrics_allow.clone(),
        });
        let _ = self.waker.wake();
        let settings = crate::relay::Settings {
            config: Arc::clone(&config),
            hosts,
            policy,
        };
        if self
            .relay_tx
            .send(Control::Reload(Box::new(settings)))
            .is_err()
        {
            log::error!("reload: the relay thread is gone");
        }
        self.config = config;
        log::info!(
            "reloaded {}: new sessions and deliveries use it; sessions in progress finish as they began",
            self.config.path.display()
        );
    }

    /// Stops accepting, ends idle sessions, lets transactions finish within
    /// `shutdown_grace`, then stops the relay between deliveries. Queued mail stays.
    pub fn shutdown(self) {
        let shared = &self.shared;
        shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        match self.acceptor.join() {
            Ok(Err(e)) => log::error!("acceptor: {e}"),
            Err(_) => log::error!("acceptor panicked"),
            Ok(Ok(())) => {}
        }
        let deadline = Instant::now() + self.config.shutdown_grace;
        while self.workers.iter().any(|w| !w.is_finished()) {
            shared.close_sessions(true);
            if Instant::now() >= deadline {
                let n = shared.close_sessions(false);
                if n > 0 {
                    log::warn!(
                        "grace period over; closing {n} session(s) in progress (no 250 was given for their messages)"
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for w in self.workers {
            let _ = w.join();
        }
        self.stop_relay.store(true, Ordering::SeqCst);
        let _ = self.relay_tx.try_send(Control::Wake);
        drop(self.relay_tx);
        let _ = self.relay.join();
        log::info!("stopped");
    }
}

/// Keeps systemd's `STATUS=` up to date: looked at every 2 s, recomputed when
/// something changed (or every 30 s, for the ages), sent when it reads differently.
fn systemd_status(
    stats: &crate::stats::Stats,
    shared: &Shared,
    root: &std::path::Path,
    stop: &AtomicBool,
) {
    let mut seen = u64::MAX;
    let mut last = String::new();
    let mut at = Instant::now();
    // After READY=1, which `main` sends once the daemon has started.
    std::thread::sleep(Duration::from_secs(2));
    while !stop.load(Ordering::Relaxed) {
        let changes = stats.changes.load(Ordering::Relaxed);
        if changes != seen || at.elapsed() >= Duration::from_secs(30) {
            seen = changes;
            at = Instant::now();
            let queue = crate::stats::Queue::read(root).unwrap_or_default();
            let h: Vec<_> = shared.live().hosts.iter().map(|h| h.status()).collect();
            let line = crate::stats::status_line(&queue, &h, stats, crate::time::now_unix());
            if line != last {
                crate::notify::notify(&format!("STATUS={line}"));
                last = line;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn spawn(
    name: &str,
    stack: usize,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(f)
        .map_err(|e| e.to_string())
}

fn log_start(config: &Config, hosts: &Hosts) {
    for h in hosts.iter() {
        log_smarthost(h);
    }
    if hosts.len() > 1 {
        for r in &config.routes {
            log::info!("relay: route {r}");
        }
    }
    let listen: Vec<String> = config.listen.iter().map(|a| a.to_string()).collect();
    let to: Vec<String> = hosts
        .iter()
        .map(|h| match h.conf.named {
            true => format!("{} ({})", h.name(), h.conf.address),
            false => h.name().to_string(),
        })
        .collect();
    log::info!(
        "started: listening on {}, relaying to {}, spool {}, {} workers{}",
        listen.join(" "),
        to.join(", "),
        config.spool.display(),
        config.workers,
        if config.mode == Mode::Passthrough {
            ", mode passthrough (clients get the smarthost's replies; nothing is spooled)"
        } else {
            ""
        }
    );
}

/// A smarthost's trust and credentials, for the start lines. The one unnamed
/// smarthost is "smarthost"; a named one is "smarthost NAME".
fn log_smarthost(h: &crate::relay::Host) {
    let c = &h.conf;
    let which = match c.named {
        true => format!("smarthost {}", c.name),
        false => "smarthost".to_string(),
    };
    #[cfg(feature = "tls")]
    let trust = h.tls.as_ref().map(|t| t.trust.clone());
    #[cfg(not(feature = "tls"))]
    let trust: Option<String> = None;
    if let Some(t) = trust {
        log::info!("relay: {which} TLS {:?}, trusting {t}", c.tls);
    } else {
        log::info!("relay: {which} connection is plain TCP (smarthost_tls none)");
    }
    if c.auth != crate::config::SmarthostAuth::Password {
        let o = &c.oauth;
        let from = match o.grant() {
            crate::config::Grant::Command => format!("the token command {}", o.token_command[0]),
            crate::config::Grant::RefreshToken => format!(
                "{} (refresh token grant, {})",
                o.token_url.as_deref().unwrap_or_default(),
                o.refresh_token_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            ),
            crate::config::Grant::ClientCredentials => format!(
                "{} (client credentials grant)",
                o.token_url.as_deref().unwrap_or_default()
            ),
        };
        let at = match c.named {
            true => format!(" at {}", c.name),
            false => String::new(),
        };
        log::info!(
            "relay: AUTH {:?} as {}{at} with tokens from {from}",
            c.auth,
            c.user.as_deref().unwrap_or_default()
        );
    }
    if c.tls != SmarthostTls::None && !c.tls_verify {
        let whose = match c.named {
            true => format!("the certificate of smarthost {}", c.name),
            false => "the smarthost's certificate".to_string(),
        };
        log::warn!(
            "smarthost_tls_verify no: {whose} is NOT verified; anyone on the path can read and change mail"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::path::Path;

    fn parts(spool: &Path) -> Parts {
        // The smarthost is a closed port: messages stay queued.
        let text = format!(
            "listen 127.0.0.1:0\nspool {}\nsmarthost 127.0.0.1:9\nsmarthost_tls none\n\
             workers 2\nretry_min 1h\nretry_max 1h\nshutdown_grace 2s\n",
            spool.display()
        );
        let config = Config::parse(Path::new("t.conf"), &text).unwrap();
        let hosts = crate::relay::hosts::build(&config).unwrap();
        Parts {
            policy: Arc::new(config.policy().unwrap()),
            config,
            hosts,
            tls_server: None,
            users: None,
        }
    }

    fn reply(r: &mut impl BufRead) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// Started in-process: it takes mail on its bound port and queues it; a second
    /// daemon on the spool is refused; shutdown joins every thread and frees the
    /// spool for the next start.
    #[test]
    fn starts_takes_mail_and_stops() {
        let dir = crate::spool::tests::temp_dir("daemon");
        let daemon = Daemon::start(parts(&dir), |_| Ok(())).unwrap();
        let addr = daemon.local_addrs()[0];
        assert_ne!(addr.port(), 0);
        let second = Daemon::start(parts(&dir), |_| Ok(()));
        assert!(
            second.as_ref().err().is_some_and(|e| e.contains("in use")),
            "a second daemon on the spool is refused"
        );

        let stream = TcpStream::connect(addr).unwrap();
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let mut w = stream;
        assert!(reply(&mut r).starts_with("220 "));
        for (cmd, code) in [
            ("EHLO t\r\n", "250"),
            ("MAIL FROM:<a@b.c>\r\n", "250"),
            ("RCPT TO:<d@e.f>\r\n", "250"),
            ("DATA\r\n", "354"),
            ("Subject: in-process\r\n\r\nhi\r\n.\r\n", "250"),
        ] {
            w.write_all(cmd.as_bytes()).unwrap();
            let got = reply(&mut r);
            assert!(got.starts_with(code), "{cmd:?}: {got}");
        }
        // A session still open at shutdown is told 421 and closed.
        let started = Instant::now();
        daemon.shutdown();
        assert!(started.elapsed() < Duration::from_secs(10));
        let last = reply(&mut r);
        assert!(last.starts_with("421 "), "{last}");
        let queued: Vec<_> = std::fs::read_dir(dir.join("queue")).unwrap().collect();
        assert_eq!(queued.len(), 1, "the message stays queued");

        let again = Daemon::start(parts(&dir), |_| Ok(())).unwrap();
        again.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
