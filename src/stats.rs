//! What the daemon counts as it works, for `smtp-relayd status`, the metrics page
//! and systemd's `STATUS=`: counters (atomics, bumped where the log line is
//! written), a histogram of delivery delays, the last delivery, and the spool's
//! queue as read from the disk. Rendering is sans-IO: Prometheus text and JSON are
//! written into a `String`.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a message (or, for `Connection` and `Auth`, a connection) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Relay,
    Sender,
    Recipient,
    Rate,
    NoSpace,
    Data,
    TooManyMessages,
    StartTls,
    Upstream,
    Auth,
    Connection,
}

impl Reject {
    pub const ALL: [Reject; 11] = [
        Reject::Relay,
        Reject::Sender,
        Reject::Recipient,
        Reject::Rate,
        Reject::NoSpace,
        Reject::Data,
        Reject::TooManyMessages,
        Reject::StartTls,
        Reject::Upstream,
        Reject::Auth,
        Reject::Connection,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::Relay => "relay_denied",
            Reject::Sender => "sender_not_allowed",
            Reject::Recipient => "recipient_not_allowed",
            Reject::Rate => "rate_limit",
            Reject::NoSpace => "no_space",
            Reject::Data => "content",
            Reject::TooManyMessages => "too_many_messages",
            Reject::StartTls => "starttls_injection",
            Reject::Upstream => "smarthost",
            Reject::Auth => "auth_failed",
            Reject::Connection => "too_many_connections",
        }
    }
}

/// Upper bounds (seconds) of the delivery delay histogram's buckets.
pub const DELAY_BUCKETS: [u64; 10] = [1, 5, 15, 60, 300, 900, 3600, 14400, 86400, 432000];

/// The last message a smarthost took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub time: u64,
    pub id: String,
    pub rcpt: String,
    pub relay: String,
    pub delay: u64,
}

#[derive(Default)]
pub struct Stats {
    /// Unix time the daemon started.
    pub started: u64,
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
    pub accepted_bytes: AtomicU64,
    rejected: [AtomicU64; 11],
    pub delivered: AtomicU64,
    pub delivered_bytes: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
    pub notices: AtomicU64,
    delays: [AtomicU64; 11],
    delay_sum: AtomicU64,
    last: Mutex<Option<Delivery>>,
    /// Bumped when the queue or a smarthost's health changes: systemd's STATUS=.
    pub changes: AtomicU64,
}

impl Stats {
    pub fn new(started: u64) -> Stats {
        Stats {
            started,
            ..Stats::default()
        }
    }

    pub fn reject(&self, why: Reject) {
        let i = Reject::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Reject) -> u64 {
        let i = Reject::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[i].load(Ordering::Relaxed)
    }

    pub fn accepted(&self, size: u64) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.accepted_bytes.fetch_add(size, Ordering::Relaxed);
        self.changed();
    }

    /// One recipient delivered, `delay` seconds after its message arrived.
    pub fn delivered(&self, d: Delivery, size: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.delivered_bytes.fetch_add(size, Ordering::Relaxed);
        let b = DELAY_BUCKETS
            .iter()
            .position(|&le| d.delay <= le)
            .unwrap_or(DELAY_BUCKETS.len());
        self.delays[b].fetch_add(1, Ordering::Relaxed);
        self.delay_sum.fetch_add(d.delay, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
        self.changed();
    }

    pub fn last_delivery(&self) -> Option<Delivery> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of the counters, the queue and
    /// each smarthost's health.
    pub fn prometheus(&self, queue: &Queue, hosts: &[HostStatus], now: u64) -> String {
        let mut t = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                t,
                "# HELP smtp_relayd_{name} {help}\n# TYPE smtp_relayd_{name} {kind}\nsmtp_relayd_{name} {value}\n"
            );
        };
        metric(
            "start_time_seconds",
            "gauge",
            "Unix time the daemon started.",
            self.started,
        );
        metric(
            "connections_total",
            "counter",
            "SMTP connections accepted.",
            get(&self.connections),
        );
        metric(
            "messages_accepted_total",
            "counter",
            "Messages accepted (250 after DATA).",
            get(&self.accepted),
        );
        metric(
            "accepted_bytes_total",
            "counter",
            "Octets of the messages accepted.",
            get(&self.accepted_bytes),
        );
        metric(
            "deliveries_total",
            "counter",
            "Recipients delivered to a smarthost.",
            get(&self.delivered),
        );
        metric(
            "delivered_bytes_total",
            "counter",
            "Octets delivered (once per message and smarthost transaction).",
            get(&self.delivered_bytes),
        );
        metric(
            "deferrals_total",
            "counter",
            "Delivery attempts deferred (per recipient).",
            get(&self.deferred),
        );
        metric(
            "failures_total",
            "counter",
            "Messages moved to failed/.",
            get(&self.failed),
        );
        metric(
            "notices_total",
            "counter",
            "Failure notices and delay warnings queued.",
            get(&self.notices),
        );
        metric(
            "queue_messages",
            "gauge",
            "Messages in queue/.",
            queue.count,
        );
        metric(
            "queue_bytes",
            "gauge",
            "Octets of the files in queue/.",
            queue.bytes,
        );
        metric(
            "queue_oldest_age_seconds",
            "gauge",
            "Age of the oldest message in queue/ (0 when empty).",
            queue.oldest.map_or(0, |c| now.saturating_sub(c)),
        );
        metric(
            "failed_messages",
            "gauge",
            "Messages in failed/.",
            queue.failed,
        );
        t.push_str(
            "# HELP smtp_relayd_messages_rejected_total Messages or connections refused, by reason.\n\
             # TYPE smtp_relayd_messages_rejected_total counter\n",
        );
        for r in Reject::ALL {
            let _ = writeln!(
                t,
                "smtp_relayd_messages_rejected_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejected(r)
            );
        }
        t.push_str(
            "# HELP smtp_relayd_delivery_delay_seconds From arrival to the smarthost's 250, per recipient.\n\
             # TYPE smtp_relayd_delivery_delay_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (i, le) in DELAY_BUCKETS.iter().enumerate() {
            cumulative += get(&self.delays[i]);
            let _ = writeln!(
                t,
                "smtp_relayd_delivery_delay_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += get(&self.delays[DELAY_BUCKETS.len()]);
        let _ = write!(
            t,
            "smtp_relayd_delivery_delay_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             smtp_relayd_delivery_delay_seconds_sum {}\n\
             smtp_relayd_delivery_delay_seconds_count {cumulative}\n",
            get(&self.delay_sum)
        );
        t.push_str(
            "# HELP smtp_relayd_smarthost_failing 1 while the smarthost is failing (in its backoff).\n\
             # TYPE smtp_relayd_smarthost_failing gauge\n",
        );
        for h in hosts {
            let _ = writeln!(
                t,
                "smtp_relayd_smarthost_failing{{smarthost=\"{}\"}} {}",
                label(&h.name),
                u8::from(h.failures > 0)
            );
        }
        t.push_str(
            "# HELP smtp_relayd_smarthost_last_success_seconds Unix time of the last connection ready for mail (0: none yet).\n\
             # TYPE smtp_relayd_smarthost_last_success_seconds gauge\n",
        );
        for h in hosts {
            let _ = writeln!(
                t,
                "smtp_relayd_smarthost_last_success_seconds{{smarthost=\"{}\"}} {}",
                label(&h.name),
                h.last_ok.unwrap_or(0)
            );
        }
        t
    }
}

/// systemd's `STATUS=` line: the queue, and each failing smarthost (e.g. `3 queued,
/// oldest 2m, smtp.example.net failing since 10:02`).
pub fn status_line(queue: &Queue, hosts: &[HostStatus], stats: &Stats, now: u64) -> String {
    let mut t = format!("{} queued", queue.count);
    if let Some(o) = queue.oldest {
        let _ = write!(t, ", oldest {}", crate::status::age(now.saturating_sub(o)));
    }
    if queue.failed > 0 {
        let _ = write!(t, ", {} failed", queue.failed);
    }
    let mut failing = false;
    for h in hosts.iter().filter(|h| h.failures > 0) {
        failing = true;
        let since = h
            .failing_since
            .map(crate::time::iso8601)
            .unwrap_or_default();
        // The time of day of the ISO 8601 stamp: `2026-12-04T10:02:07Z` -> `10:02`.
        let hhmm = since.get(11..16).unwrap_or("?");
        let _ = write!(t, ", {} failing since {hhmm}", h.name);
    }
    if !failing {
        let _ = write!(
            t,
            "; {} delivered since start",
            stats.delivered.load(Ordering::Relaxed)
        );
    }
    t
}

/// A label value as Prometheus' text format escapes it.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The spool's queue as `status` and the metrics report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queue {
    pub count: u64,
    pub bytes: u64,
    /// The arrival time of the oldest message in `queue/`.
    pub oldest: Option<u64>,
    pub failed: u64,
}

impl Queue {
    /// Reads `queue/` (each file's size and the `created` line of its envelope) and
    /// counts `failed/`.
    pub fn read(spool: &std::path::Path) -> std::io::Result<Queue> {
        use std::os::unix::fs::FileExt;
        let mut q = Queue::default();
        for e in std::fs::read_dir(spool.join("queue"))? {
            let Ok(e) = e else { continue };
            let name = e.file_name();
            if crate::spool::QueueId::parse(&name.to_string_lossy()).is_none() {
                continue;
            }
            let Ok(f) = std::fs::File::open(e.path()) else {
                continue;
            };
            q.count += 1;
            q.bytes += f.metadata().map_or(0, |m| m.len());
            let mut head = [0u8; 64];
            let n = f.read_at(&mut head, 0).unwrap_or(0);
            let created = std::str::from_utf8(&head[..n])
                .ok()
                .and_then(|t| t.split('\n').nth(1))
                .and_then(|l| l.strip_prefix("created "))
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(c) = created {
                q.oldest = Some(q.oldest.map_or(c, |o: u64| o.min(c)));
            }
        }
        q.failed = std::fs::read_dir(spool.join("failed"))?
            .filter_map(|e| e.ok())
            .filter(|e| crate::spool::QueueId::parse(&e.file_name().to_string_lossy()).is_some())
            .count() as u64;
        Ok(q)
    }
}

/// One smarthost's health as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    pub name: String,
    pub address: String,
    pub failures: u32,
    pub failing_since: Option<u64>,
    pub last_error: Option<String>,
    pub last_ok: Option<u64>,
    /// Seconds left of its backoff.
    pub backoff: u64,
}

/// A JSON string.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The daemon's state as `status` reads it: over the control socket from a running
/// daemon, or from `SPOOL/state`, which the relay writes when a smarthost's health
/// changes and when it stops. One `key value` line each, fields TAB-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub pid: u32,
    pub started: u64,
    /// Set in `SPOOL/state` by a daemon that stopped.
    pub stopped: Option<u64>,
    pub accepted: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    pub notices: u64,
    pub hosts: Vec<HostStatus>,
    pub last: Option<Delivery>,
}

/// A field as the snapshot's lines hold it: no TAB, no line break.
fn field(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

fn parse_opt(v: &str) -> Option<u64> {
    v.parse().ok()
}

impl Snapshot {
    pub fn of(stats: &Stats, hosts: Vec<HostStatus>) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            pid: std::process::id(),
            started: stats.started,
            stopped: None,
            accepted: get(&stats.accepted),
            delivered: get(&stats.delivered),
            deferred: get(&stats.deferred),
            failed: get(&stats.failed),
            notices: get(&stats.notices),
            hosts,
            last: stats.last_delivery(),
        }
    }

    pub fn encode(&self) -> String {
        let mut t = String::with_capacity(512);
        let _ = writeln!(t, "pid {}\nstarted {}", self.pid, self.started);
        if let Some(s) = self.stopped {
            let _ = writeln!(t, "stopped {s}");
        }
        let _ = writeln!(
            t,
            "counts {} {} {} {} {}",
            self.accepted, self.delivered, self.deferred, self.failed, self.notices
        );
        for h in &self.hosts {
            let _ = writeln!(
                t,
                "host {}\t{}\t{}\t{}\t{}\t{}\t{}",
                field(&h.name),
                field(&h.address),
                h.failures,
                opt(h.failing_since),
                opt(h.last_ok),
                h.backoff,
                field(h.last_error.as_deref().unwrap_or("-"))
            );
        }
        if let Some(d) = &self.last {
            let _ = writeln!(
                t,
                "last {}\t{}\t{}\t{}\t{}",
                d.time,
                field(&d.id),
                field(&d.rcpt),
                field(&d.relay),
                d.delay
            );
        }
        t
    }

    /// Reads what `encode` wrote; lines it does not know are skipped.
    pub fn decode(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        for line in text.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "pid" => s.pid = v.parse().unwrap_or(0),
                "started" => s.started = v.parse().unwrap_or(0),
                "stopped" => s.stopped = v.parse().ok(),
                "counts" => {
                    let n: Vec<u64> = v.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
                    if let [a, d, t, f, n] = n[..] {
                        (s.accepted, s.delivered, s.deferred, s.failed, s.notices) =
                            (a, d, t, f, n);
                    }
                }
                "host" => {
                    let f: Vec<&str> = v.split('\t').collect();
                    if let [name, address, failures, since, ok, backoff, error] = f[..] {
                        s.hosts.push(HostStatus {
                            name: name.into(),
                            address: address.into(),
                            failures: failures.parse().unwrap_or(0),
                            failing_since: parse_opt(since),
                            last_ok: parse_opt(ok),
                            backoff: backoff.parse().unwrap_or(0),
                            last_error: (error != "-").then(|| error.to_string()),
                        });
                    }
                }
                "last" => {
                    let f: Vec<&str> = v.split('\t').collect();
                    if let [time, id, rcpt, relay, delay] = f[..] {
                        s.last = Some(Delivery {
                            time: time.parse().unwrap_or(0),
                            id: id.into(),
                            rcpt: rcpt.into(),
                            relay: relay.into(),
                            delay: delay.parse().unwrap_or(0),
                        });
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// Writes it to `path` (a temporary file renamed over it; not fsynced: it is
    /// what `status` shows when no daemon runs, not mail).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.encode())?;
        std::fs::rename(&tmp, path)
    }
}

fn json_opt_num(v: Option<u64>) -> String {
    v.map_or("null".into(), |n| n.to_string())
}

pub fn host_json(t: &mut String, h: &HostStatus) {
    let _ = write!(
        t,
        "{{\"name\":{},\"address\":{},\"failing\":{},\"failures\":{},\"failing_since\":{},\"last_error\":{},\"last_success\":{},\"backoff_seconds\":{}}}",
        json_str(&h.name),
        json_str(&h.address),
        h.failures > 0,
        h.failures,
        json_opt_num(h.failing_since),
        h.last_error.as_deref().map_or("null".into(), json_str),
        json_opt_num(h.last_ok),
        h.backoff
    );
}

pub fn delivery_json(t: &mut String, d: &Delivery) {
    let _ = write!(
        t,
        "{{\"time\":{},\"id\":{},\"to\":{},\"relay\":{},\"delay_seconds\":{}}}",
        d.time,
        json_str(&d.id),
        json_str(&d.rcpt),
        json_str(&d.relay),
        d.delay
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prometheus' text format: every sample line is `name{labels} value`, counts
    /// add up in the histogram, and label values are escaped.
    #[test]
    fn prometheus_text() {
        let s = Stats::new(100);
        s.accepted(10);
        s.accepted(5);
        s.reject(Reject::Relay);
        for delay in [0, 3, 7200, 10_000_000] {
            s.delivered(
                Delivery {
                    delay,
                    ..Delivery::default()
                },
                1,
            );
        }
        let q = Queue {
            count: 2,
            bytes: 300,
            oldest: Some(150),
            failed: 1,
        };
        let hosts = [HostStatus {
            name: "a\"b".into(),
            failures: 2,
            last_ok: Some(120),
            ..HostStatus::default()
        }];
        let t = s.prometheus(&q, &hosts, 200);
        for want in [
            "smtp_relayd_messages_accepted_total 2\n",
            "smtp_relayd_accepted_bytes_total 15\n",
            "smtp_relayd_messages_rejected_total{reason=\"relay_denied\"} 1\n",
            "smtp_relayd_messages_rejected_total{reason=\"rate_limit\"} 0\n",
            "smtp_relayd_queue_messages 2\n",
            "smtp_relayd_queue_oldest_age_seconds 50\n",
            "smtp_relayd_failed_messages 1\n",
            "smtp_relayd_delivery_delay_seconds_bucket{le=\"1\"} 1\n",
            "smtp_relayd_delivery_delay_seconds_bucket{le=\"5\"} 2\n",
            "smtp_relayd_delivery_delay_seconds_bucket{le=\"14400\"} 3\n",
            "smtp_relayd_delivery_delay_seconds_bucket{le=\"432000\"} 3\n",
            "smtp_relayd_delivery_delay_seconds_bucket{le=\"+Inf\"} 4\n",
            "smtp_relayd_delivery_delay_seconds_count 4\n",
            "smtp_relayd_delivery_delay_seconds_sum 10007203\n",
            "smtp_relayd_smarthost_failing{smarthost=\"a\\\"b\"} 1\n",
            "smtp_relayd_smarthost_last_success_seconds{smarthost=\"a\\\"b\"} 120\n",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }

    /// The snapshot's lines read back to what was written, with hostile text in
    /// the error kept to one field.
    #[test]
    fn snapshot_round_trip() {
        let s = Snapshot {
            pid: 7,
            started: 100,
            stopped: Some(200),
            accepted: 1,
            delivered: 2,
            deferred: 3,
            failed: 4,
            notices: 5,
            hosts: vec![
                HostStatus {
                    name: "m365".into(),
                    address: "smtp.office365.com:587".into(),
                    failures: 2,
                    failing_since: Some(150),
                    last_error: Some("451 4.4.1 timed out".into()),
                    last_ok: None,
                    backoff: 60,
                },
                HostStatus {
                    name: "b".into(),
                    address: "[::1]:25".into(),
                    last_ok: Some(190),
                    ..HostStatus::default()
                },
            ],
            last: Some(Delivery {
                time: 190,
                id: "19A2B3C4D5E6F0801012ABC".into(),
                rcpt: "ops@example.com".into(),
                relay: "b".into(),
                delay: 3,
            }),
        };
        assert_eq!(Snapshot::decode(&s.encode()), s);
        let mut bad = s.clone();
        bad.hosts[0].last_error = Some("a\tb\nhost x".into());
        let back = Snapshot::decode(&bad.encode());
        assert_eq!(back.hosts.len(), 2);
        assert_eq!(back.hosts[0].last_error.as_deref(), Some("a b host x"));
        assert_eq!(
            Snapshot::decode("garbage\ncounts x\nhost a"),
            Snapshot::default()
        );
    }

    #[test]
    fn systemd_status_line() {
        let s = Stats::new(0);
        let q = Queue {
            count: 3,
            bytes: 10,
            oldest: Some(1_796_378_400 - 120),
            failed: 0,
        };
        let failing = HostStatus {
            name: "smtp.example.net".into(),
            failures: 2,
            failing_since: Some(1_796_378_400 - 600),
            ..HostStatus::default()
        };
        assert_eq!(
            status_line(&q, &[failing, HostStatus::default()], &s, 1_796_378_400),
            "3 queued, oldest 2m 0s, smtp.example.net failing since 09:50"
        );
        assert_eq!(
            status_line(&Queue::default(), &[HostStatus::default()], &s, 0),
            "0 queued; 0 delivered since start"
        );
    }

    #[test]
    fn json_strings() {
        assert_eq!(
            json_str("a\"b\\c\n\u{1}é"),
            "\"a\\\"b\\\\c\\u000a\\u0001é\""
        );
    }
}
