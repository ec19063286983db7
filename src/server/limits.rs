//! The per-client limits that need state shared by every worker: open connections
//! per address (`max_connections_per_ip`) and the message rate (`rate_limit`). The
//! session asks (`Step::CheckRate`); the worker answers from here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `rate_limit N/MINUTES`: a token bucket per client address. A client may send a
/// burst of N messages, and then N every MINUTES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub messages: u32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Option<Rate>, String> {
        if s == "none" {
            return Ok(None);
        }
        let bad = || format!("'{s}': expected N/MINUTES (such as 100/10) or none");
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let messages: u32 = n.trim().parse().map_err(|_| bad())?;
        let minutes: u64 = m.trim().parse().map_err(|_| bad())?;
        if messages == 0 || minutes == 0 || minutes > 10_080 {
            return Err(bad());
        }
        Ok(Some(Rate {
            messages,
            per: Duration::from_secs(minutes * 60),
        }))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.messages, self.per.as_secs() / 60)
    }
}

/// At most this many client addresses are remembered by a table (memory stays
/// bounded however many addresses a client can use).
const MAX_ENTRIES: usize = 4096;

/// The token buckets of `rate_limit`, shared by the workers.
#[derive(Debug)]
pub struct RateTable {
    rate: Rate,
    /// Tokens in millionths of a message, and when they were counted.
    buckets: Mutex<HashMap<IpAddr, (u64, Instant)>>,
}

const UNIT: u64 = 1_000_000;

impl RateTable {
    pub fn new(rate: Rate) -> RateTable {
        RateTable {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one message from `ip`'s bucket; false when it is empty.
    pub fn take(&self, ip: IpAddr, now: Instant) -> bool {
        let capacity = u64::from(self.rate.messages) * UNIT;
        let per_us = self.rate.per.as_micros().max(1) as u64;
        let refill = |tokens: u64, since: Instant| {
            let us = now.saturating_duration_since(since).as_micros() as u64;
            // messages * UNIT per `per`: tokens gained in `us` microseconds.
            let gained = (u128::from(us) * u128::from(self.rate.messages) * u128::from(UNIT)
                / u128::from(per_us)) as u64;
            tokens.saturating_add(gained).min(capacity)
        };
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&ip) {
            // Forget the clients whose buckets have filled up again: they are as new.
            map.retain(|_, (t, since)| refill(*t, *since) < capacity);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        let (tokens, since) = map.entry(ip).or_insert((capacity, now));
        let available = refill(*tokens, *since);
        *since = now;
        if available >= UNIT {
            *tokens = available - UNIT;
            true
        } else {
            *tokens = available;
            false
        }
    }
}

/// Open connections per client address, for `max_connections_per_ip`.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnectionCounts {
    /// Counts a new connection unless `ip` already has `limit` open.
    pub fn enter(&self, ip: IpAddr, limit: u32) -> bool {
        let mut map = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    pub fn leave(&self, ip: IpAddr) {
        let mut map = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_token_bucket() {
        let t = RateTable::new(Rate::parse("3/1").unwrap().unwrap());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(t.take(ip, t0));
        assert!(t.take(ip, t0));
        assert!(t.take(ip, t0));
        assert!(!t.take(ip, t0), "the burst is 3");
        assert!(t.take(other, t0), "each address has its own bucket");
        // One message comes back every 20 s.
        assert!(!t.take(ip, t0 + Duration::from_secs(19)));
        assert!(t.take(ip, t0 + Duration::from_secs(21)));
        assert!(!t.take(ip, t0 + Duration::from_secs(22)));
        // A long pause refills to the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| t.take(ip, later)));
        assert!(!t.take(ip, later));
        assert_eq!(Rate::parse("none").unwrap(), None);
        for bad in ["0/1", "5/0", "5", "x/1", "5/x", "-1/1"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_table_stays_bounded() {
        let t = RateTable::new(Rate::parse("1/60").unwrap().unwrap());
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 * 3) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.take(ip, now);
        }
        assert!(t.buckets.lock().unwrap().len() <= MAX_ENTRIES);
    }

    #[test]
    fn connection_counts() {
        let c = ConnectionCounts::default();
        let ip: IpAddr = "::1".parse().unwrap();
        assert!(c.enter(ip, 2));
        assert!(c.enter(ip, 2));
        assert!(!c.enter(ip, 2));
        c.leave(ip);
        assert_eq!(c.open.lock().unwrap()[&ip], 1);
        assert!(c.enter(ip, 2));
        c.leave(ip);
        c.leave(ip);
        assert!(
            c.open.lock().unwrap().is_empty(),
            "an address with none open is forgotten"
        );
    }
}
