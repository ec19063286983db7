//! The server shell: the acceptor thread (mio poll loop owning the listeners) and
//! the worker pool (one blocking session per worker), and what they share.

pub mod acceptor;
pub mod daemon;
pub mod limits;
pub mod metrics;
pub mod passthrough;
pub mod worker;

use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The users file for AUTH, when the build has TLS.
#[cfg(feature = "tls")]
pub type Users = Option<std::sync::Arc<crate::auth::Users>>;
#[cfg(not(feature = "tls"))]
pub type Users = Option<()>;

/// The settings new sessions and deliveries use: replaced whole by a reload (SIGHUP);
/// a session in progress keeps the set it started with.
pub struct Live {
    pub config: std::sync::Arc<crate::config::Config>,
    pub policy: std::sync::Arc<crate::protocol::policy::Policy>,
    pub hosts: crate::relay::Hosts,
    pub tls: Option<worker::TlsServer>,
    pub users: Users,
    /// 0 at start, one more at each reload.
    pub generation: u64,
}

/// State shared by the acceptor, the workers and the main thread.
pub struct Shared {
    /// The current settings.
    pub live: std::sync::RwLock<std::sync::Arc<Live>>,
    pub shutting_down: AtomicBool,
    /// Connections handed to the pool and not yet finished.
    pub active: AtomicUsize,
    /// One slot per worker: its current connection, for shutdown.
    pub slots: Vec<Slot>,
    /// Open connections per client address (`max_connections_per_ip`).
    pub per_ip: limits::ConnectionCounts,
    /// The message rate per client address (`rate_limit`), asked at each MAIL.
    pub rate: Option<limits::RateTable>,
    /// Failed AUTH attempts per client address.
    #[cfg(feature = "tls")]
    pub auth_throttle: crate::auth::Throttle,
}

#[derive(Default)]
pub struct Slot {
    pub stream: Mutex<Option<TcpStream>>,
    /// A transaction is under way: shutdown lets it finish within the grace period.
    pub in_transaction: AtomicBool,
}

impl Shared {
    pub fn new(workers: usize, rate: Option<limits::Rate>, live: Live) -> Shared {
        Shared {
            live: std::sync::RwLock::new(std::sync::Arc::new(live)),
            shutting_down: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            slots: (0..workers).map(|_| Slot::default()).collect(),
            per_ip: limits::ConnectionCounts::default(),
            rate: rate.map(limits::RateTable::new),
            #[cfg(feature = "tls")]
            auth_throttle: crate::auth::Throttle::new(),
        }
    }

    /// The settings as they are now.
    pub fn live(&self) -> std::sync::Arc<Live> {
        std::sync::Arc::clone(&self.live.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Ends the sessions that are idle (the client gets 421 4.3.2), or all of them.
    pub fn close_sessions(&self, idle_only: bool) -> usize {
        let mut open = 0;
        for slot in &self.slots {
            let guard = slot.stream.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = guard.as_ref() {
                open += 1;
                if !idle_only || !slot.in_transaction.load(Ordering::Relaxed) {
                    // The worker's blocking read returns 0 and it says goodbye.
                    let _ = s.shutdown(if idle_only {
                        std::net::Shutdown::Read
                    } else {
                        std::net::Shutdown::Both
                    });
                }
            }
        }
        open
    }
}
