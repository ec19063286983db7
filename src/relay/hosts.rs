//! The smarthosts as the running relay knows them: each one's settings, its TLS
//! client (with its own trust and token source), and its health, shared by the
//! relay's scheduler, its delivery lanes and, in passthrough, the workers.
//!
//! A smarthost that could not be used (no connection, TLS, credentials, a 4xx or
//! 5xx before MAIL, no token) is skipped for a while, with its own backoff:
//! `retry_min` doubled at each failure in a row, up to `retry_max`. Once that has
//! passed, the next message tries it again; its first success ends the failure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, Smarthost};
use crate::protocol::client::Reply;
use crate::time::now_unix;

use super::TlsClient;

pub struct Host {
    pub conf: Smarthost,
    pub tls: Option<TlsClient>,
    health: Mutex<Health>,
}

/// What is known of a smarthost's recent past.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Failures in a row; 0: it works (or was not tried yet).
    pub failures: u32,
    /// Until then it is skipped when another smarthost of the route can be used.
    pub retry_at: Option<Instant>,
    /// Unix time of the first failure in a row.
    pub failing_since: Option<u64>,
    pub last_error: Option<String>,
    /// Unix time of the last connection that was ready for mail.
    pub last_ok: Option<u64>,
}

/// Every smarthost, in the config's order (a route's indexes point here).
pub type Hosts = Arc<[Host]>;

impl Host {
    pub fn new(conf: Smarthost, tls: Option<TlsClient>) -> Host {
        Host {
            conf,
            tls,
            health: Mutex::new(Health::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.conf.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn health(&self) -> Health {
        self.lock().clone()
    }

    /// Not in its backoff after a failure.
    pub fn usable(&self, now: Instant) -> bool {
        self.lock().retry_at.is_none_or(|at| now >= at)
    }

    /// It could not be used: skipped for its backoff. Returns how long (the caller
    /// logs why).
    pub fn failed(&self, config: &Config, reply: &Reply) -> Duration {
        let mut h = self.lock();
        let now = Instant::now();
        if let Some(at) = h.retry_at.filter(|at| now < *at) {
            // Another lane (or worker) found it failing a moment ago: one failure.
            h.last_error = Some(reply.to_string());
            return at - now;
        }
        h.failures = h.failures.saturating_add(1);
        let skip = super::backoff(config, h.failures);
        h.retry_at = Some(now + skip);
        h.failing_since.get_or_insert_with(now_unix);
        h.last_error = Some(reply.to_string());
        skip
    }

    /// A connection was ready for mail. After failures, the log says it is back.
    pub fn worked(&self) {
        let mut h = self.lock();
        h.last_ok = Some(now_unix());
        if h.failures > 0 {
            log::info!(
                "relay: smarthost {} works again (after {} failure(s) since {})",
                self.conf.name,
                h.failures,
                crate::time::iso8601(h.failing_since.unwrap_or_default())
            );
            h.failures = 0;
            h.retry_at = None;
            h.failing_since = None;
        }
    }

    /// After a reload: the health of the smarthost of the same name before it.
    pub fn carry_health(&self, old: &Host) {
        let h = old.lock().clone();
        *self.lock() = h;
    }

    /// Its health as `status` and the metrics show it.
    pub fn status(&self) -> crate::stats::HostStatus {
        let h = self.lock();
        crate::stats::HostStatus {
            name: self.conf.name.clone(),
            address: self.conf.address.to_string(),
            failures: h.failures,
            failing_since: h.failing_since,
            last_error: h.last_error.clone(),
            last_ok: h.last_ok,
            backoff: h.retry_at.map_or(0, |at| {
                at.saturating_duration_since(Instant::now()).as_secs()
            }),
        }
    }

    /// `queue flush`: try it now, whatever its backoff.
    pub fn retry_now(&self) {
        self.lock().retry_at = None;
    }
}

/// Builds every smarthost's TLS client (and so checks its CA file, names and token
/// settings) before anything starts. Errors are `FILE:LINE: what`.
pub fn build(config: &Config) -> Result<Hosts, String> {
    let mut hosts = Vec::with_capacity(config.smarthosts.len());
    for h in &config.smarthosts {
        hosts.push(Host::new(h.clone(), tls_client(config, h)?));
    }
    Ok(hosts.into())
}

fn tls_client(config: &Config, h: &Smarthost) -> Result<Option<TlsClient>, String> {
    #[cfg(feature = "tls")]
    if h.tls != crate::config::SmarthostTls::None {
        return TlsClient::new(h).map(Some).map_err(|e| {
            let key = if h.ca_file.is_some() {
                "smarthost_ca_file"
            } else {
                "smarthost_tls"
            };
            h.error_at(config, key, &format!("smarthost {}: {e}", h.name))
        });
    }
    let _ = (config, h);
    Ok(None)
}

/// The hosts of a route to try in order: those not in their backoff first (in
/// route order), then, when none is, the first of the route (a probe: the message's
/// own retry). `tried` holds the indexes already tried for this message.
pub fn pick(hosts: &[Host], route: &[usize], tried: u64, now: Instant) -> Option<usize> {
    let untried = || route.iter().copied().filter(|&i| tried & (1 << i) == 0);
    untried().find(|&i| hosts[i].usable(now)).or_else(|| {
        if tried == 0 {
            route.first().copied()
        } else {
            None
        }
    })
}
