//! `smtp-relayd status`: one screen (or `--json`) on the daemon, the queue, the
//! smarthosts and the last delivery, with the exit codes of a Nagios plugin (0 ok,
//! 1 warning, 2 critical, 3 unknown). With a daemon running it asks it over the
//! control socket; without, it reads the spool and the state the relay last saved.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::Config;
use crate::relay::{self, Answer, Request};
use crate::stats::{self, HostStatus, Queue, Snapshot};
use crate::time::{iso8601, now_unix};

/// The thresholds: mail older than `warn` is a warning, older than `crit` critical.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub warn: Duration,
    pub crit: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            warn: Duration::from_secs(3600),
            crit: Duration::from_secs(86400),
        }
    }
}

/// Whether a daemon runs, as far as its control socket tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    Running(Snapshot),
    /// Something holds the socket but gave no answer in time.
    Silent(String),
    /// No daemon; the state it saved last, if any.
    Down(Option<Snapshot>),
}

/// Everything one report shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub daemon: Daemon,
    pub queue: Queue,
    pub now: u64,
    pub spool: String,
    /// (1 warning | 2 critical, what is wrong), worst first.
    pub problems: Vec<(u8, String)>,
}

/// Asks the daemon for its snapshot, waiting at most `timeout`.
pub fn ask(spool: &crate::spool::Spool, timeout: Duration) -> Daemon {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let saved = || {
        std::fs::read_to_string(relay::state_path(spool))
            .ok()
            .map(|t| Snapshot::decode(&t))
    };
    let name = format!("smtp-relayd-status-{}-{}", std::process::id(), now_unix());
    let sock = SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|a| UnixDatagram::bind_addr(&a))
        .and_then(|s| s.set_read_timeout(Some(timeout)).map(|()| s));
    let sock = match sock {
        Ok(s) => s,
        Err(e) => return Daemon::Silent(format!("cannot make a reply socket: {e}")),
    };
    match sock.send_to(
        Request::Status.encode().as_bytes(),
        relay::control_path(spool),
    ) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Daemon::Down(saved());
        }
        Err(e) => return Daemon::Silent(format!("cannot reach the control socket: {e}")),
    }
    let mut buf = vec![0u8; 64 * 1024];
    match sock.recv(&mut buf) {
        Ok(n) => match Answer::decode(&String::from_utf8_lossy(&buf[..n])) {
            Answer::Done(text) => Daemon::Running(Snapshot::decode(&text)),
            Answer::Failed(e) => Daemon::Silent(e),
        },
        Err(e) => Daemon::Silent(format!("no answer within {}s: {e}", timeout.as_secs())),
    }
}

/// `3d 4h`, `2h 5m`, `3m 20s`, `45s`.
pub fn age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match () {
        _ if d > 0 => format!("{d}d {h}h"),
        _ if h > 0 => format!("{h}h {m}m"),
        _ if m > 0 => format!("{m}m {s}s"),
        _ => format!("{s}s"),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

impl Report {
    /// Judges what was read.
    pub fn new(daemon: Daemon, queue: Queue, now: u64, spool: String, limits: Limits) -> Report {
        let mut problems = Vec::new();
        match &daemon {
            Daemon::Running(_) => {}
            Daemon::Silent(why) => problems.push((2, format!("daemon does not answer: {why}"))),
            Daemon::Down(_) => problems.push((2, "daemon not running".to_string())),
        }
        if let Some(oldest) = queue.oldest {
            let a = now.saturating_sub(oldest);
            if a >= limits.crit.as_secs() {
                problems.push((2, format!("oldest queued message is {} old", age(a))));
            } else if a >= limits.warn.as_secs() {
                problems.push((1, format!("oldest queued message is {} old", age(a))));
            }
        }
        if let Daemon::Running(s) = &daemon {
            let failing: Vec<&HostStatus> = s.hosts.iter().filter(|h| h.failures > 0).collect();
            if !failing.is_empty() {
                let level = if failing.len() == s.hosts.len() { 2 } else { 1 };
                for h in failing {
                    problems.push((
                        level,
                        format!(
                            "smarthost {} failing since {}",
                            h.name,
                            h.failing_since.map_or("?".into(), iso8601)
                        ),
                    ));
                }
            }
        }
        if queue.failed > 0 {
            problems.push((1, format!("{} message(s) in failed/", queue.failed)));
        }
        problems.sort_by_key(|p| std::cmp::Reverse(p.0));
        Report {
            daemon,
            queue,
            now,
            spool,
            problems,
        }
    }

    /// 0 ok, 1 warning, 2 critical.
    pub fn code(&self) -> u8 {
        self.problems.first().map_or(0, |p| p.0)
    }

    fn state(&self) -> &'static str {
        ["OK", "WARNING", "CRITICAL"][usize::from(self.code())]
    }

    fn snapshot(&self) -> Option<&Snapshot> {
        match &self.daemon {
            Daemon::Running(s) => Some(s),
            Daemon::Down(s) => s.as_ref(),
            Daemon::Silent(_) => None,
        }
    }

    /// The screen a person reads.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let summary = match self.problems.first() {
            Some((_, p)) => p.clone(),
            None => format!("{} queued", self.queue.count),
        };
        let _ = writeln!(t, "smtp-relayd {}: {summary}", self.state());
        match &self.daemon {
            Daemon::Running(s) => {
                let _ = writeln!(
                    t,
                    "daemon:     running, pid {}, since {} ({})",
                    s.pid,
                    iso8601(s.started),
                    age(self.now.saturating_sub(s.started))
                );
            }
            Daemon::Silent(why) => {
                let _ = writeln!(t, "daemon:     not answering ({why})");
            }
            Daemon::Down(Some(Snapshot {
                stopped: Some(at), ..
            })) => {
                let _ = writeln!(
                    t,
                    "daemon:     not running; stopped {} ({} ago)",
                    iso8601(*at),
                    age(self.now.saturating_sub(*at))
                );
            }
            Daemon::Down(_) => {
                let _ = writeln!(t, "daemon:     not running");
            }
        }
        let q = &self.queue;
        let oldest = q
            .oldest
            .map(|o| format!(", oldest {}", age(self.now.saturating_sub(o))))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "queue:      {} message(s), {}{oldest}",
            q.count,
            bytes(q.bytes)
        );
        let _ = writeln!(
            t,
            "failed:     {} message(s) in {}/failed{}",
            q.failed,
            self.spool,
            if q.failed > 0 {
                " (smtp-relayd queue list; queue retry-failed)"
            } else {
                ""
            }
        );
        if let Some(s) = self.snapshot() {
            let asof = match &self.daemon {
                Daemon::Running(_) => String::new(),
                _ => " (as the daemon last saw it)".to_string(),
            };
            for h in &s.hosts {
                let last_ok = h
                    .last_ok
                    .map(|o| format!("last success {}", iso8601(o)))
                    .unwrap_or_else(|| "no success yet".into());
                if h.failures > 0 {
                    let _ = writeln!(
                        t,
                        "smarthost:  {} ({}): FAILING since {}, {} failure(s) in a row, next try in {}s{asof}\n            last error: {}\n            {last_ok}",
                        h.name,
                        h.address,
                        h.failing_since.map_or("?".into(), iso8601),
                        h.failures,
                        h.backoff,
                        h.last_error.as_deref().unwrap_or("-")
                    );
                } else {
                    let err = h
                        .last_error
                        .as_deref()
                        .map(|e| format!("; last failure: {e}"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        t,
                        "smarthost:  {} ({}): ok, {last_ok}{err}{asof}",
                        h.name, h.address
                    );
                }
            }
            match &s.last {
                Some(d) => {
                    let _ = writeln!(
                        t,
                        "last sent:  {} ({} ago) {} to <{}> via {}, delay {}s",
                        iso8601(d.time),
                        age(self.now.saturating_sub(d.time)),
                        d.id,
                        d.rcpt,
                        d.relay,
                        d.delay
                    );
                }
                None => {
                    let _ = writeln!(t, "last sent:  nothing since the daemon started");
                }
            }
            if matches!(self.daemon, Daemon::Running(_)) {
                let _ = writeln!(
                    t,
                    "since start: {} accepted, {} delivered, {} deferred, {} failed, {} notice(s)",
                    s.accepted, s.delivered, s.deferred, s.failed, s.notices
                );
            }
        }
        for (level, p) in self.problems.iter().skip(1) {
            let _ = writeln!(
                t,
                "{}: {p}",
                if *level == 2 { "critical" } else { "warning" }
            );
        }
        t
    }

    /// The same as one JSON object, for scripts.
    pub fn json(&self) -> String {
        let mut t = String::with_capacity(1024);
        let q = &self.queue;
        let _ = write!(
            t,
            "{{\"state\":\"{}\",\"exit\":{},\"problems\":[",
            self.state().to_ascii_lowercase(),
            self.code()
        );
        for (i, (_, p)) in self.problems.iter().enumerate() {
            if i > 0 {
                t.push(',');
            }
            t.push_str(&stats::json_str(p));
        }
        let (running, pid, started, stopped) = match &self.daemon {
            Daemon::Running(s) => (true, Some(s.pid), Some(s.started), None),
            Daemon::Down(s) => (false, None, None, s.as_ref().and_then(|s| s.stopped)),
            Daemon::Silent(_) => (false, None, None, None),
        };
        let n = |v: Option<u64>| v.map_or("null".into(), |x| x.to_string());
        let _ = write!(
            t,
            "],\"daemon\":{{\"running\":{running},\"pid\":{},\"started\":{},\"stopped\":{}}},\
             \"queue\":{{\"messages\":{},\"bytes\":{},\"oldest_age_seconds\":{}}},\"failed\":{},\"smarthosts\":[",
            n(pid.map(u64::from)),
            n(started),
            n(stopped),
            q.count,
            q.bytes,
            n(q.oldest.map(|o| self.now.saturating_sub(o))),
            q.failed
        );
        if let Some(s) = self.snapshot() {
            for (i, h) in s.hosts.iter().enumerate() {
                if i > 0 {
                    t.push(',');
                }
                stats::host_json(&mut t, h);
            }
        }
        t.push_str("],\"last_delivery\":");
        match self.snapshot().and_then(|s| s.last.as_ref()) {
            Some(d) => stats::delivery_json(&mut t, d),
            None => t.push_str("null"),
        }
        t.push_str("}\n");
        t
    }
}

/// Reads everything and judges it; `Err` (exit 3) when the spool cannot be read.
pub fn report(config: &Config, limits: Limits) -> Result<Report, String> {
    let spool = crate::spool::Spool::attach(&config.spool)
        .map_err(|e| format!("cannot open spool {}: {e}", config.spool.display()))?;
    let queue = Queue::read(&config.spool)
        .map_err(|e| format!("cannot read spool {}: {e}", config.spool.display()))?;
    let daemon = ask(&spool, Duration::from_secs(5));
    Ok(Report::new(
        daemon,
        queue,
        now_unix(),
        config.spool.display().to_string(),
        limits,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, failures: u32) -> HostStatus {
        HostStatus {
            name: name.into(),
            address: format!("{name}:587"),
            failures,
            failing_since: (failures > 0).then_some(900),
            ..HostStatus::default()
        }
    }

    fn running(hosts: Vec<HostStatus>) -> Daemon {
        Daemon::Running(Snapshot {
            pid: 1,
            started: 10,
            hosts,
            ..Snapshot::default()
        })
    }

    /// Each exit code from what makes it.
    #[test]
    fn exit_codes() {
        let l = Limits::default();
        let q = |oldest: Option<u64>, failed| Queue {
            count: u64::from(oldest.is_some()),
            bytes: 0,
            oldest,
            failed,
        };
        let now = 100_000;
        let code = |d: Daemon, queue| Report::new(d, queue, now, "/s".into(), l).code();
        assert_eq!(code(running(vec![host("a", 0)]), q(None, 0)), 0);
        assert_eq!(code(running(vec![host("a", 0)]), q(Some(now - 60), 0)), 0);
        assert_eq!(code(running(vec![host("a", 0)]), q(Some(now - 3600), 0)), 1);
        assert_eq!(
            code(running(vec![host("a", 0)]), q(Some(now - 86400), 0)),
            2
        );
        assert_eq!(code(running(vec![host("a", 0)]), q(None, 1)), 1);
        assert_eq!(
            code(running(vec![host("a", 1), host("b", 0)]), q(None, 0)),
            1
        );
        assert_eq!(
            code(running(vec![host("a", 1), host("b", 2)]), q(None, 0)),
            2
        );
        assert_eq!(code(Daemon::Down(None), q(None, 0)), 2);
        assert_eq!(code(Daemon::Silent("x".into()), q(None, 0)), 2);
        let r = Report::new(
            running(vec![host("a", 1)]),
            q(Some(now - 7200), 3),
            now,
            "/s".into(),
            l,
        );
        assert!(
            r.text()
                .starts_with("smtp-relayd CRITICAL: smarthost a failing since")
        );
        assert!(r.json().contains("\"state\":\"critical\",\"exit\":2,"));
    }

    #[test]
    fn ages() {
        assert_eq!(age(45), "45s");
        assert_eq!(age(200), "3m 20s");
        assert_eq!(age(7500), "2h 5m");
        assert_eq!(age(3 * 86400 + 4 * 3600 + 5), "3d 4h");
    }
}
