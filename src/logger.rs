//! The log: one line per event, Postfix-shaped, to stderr and/or syslog.
//!
//! stderr lines are `TIME smtp-relayd[PID]: [LEVEL: ]TEXT`. Syslog lines go to the
//! local socket (`/dev/log`, where procd's logd and BusyBox syslogd listen) as RFC
//! 3164 datagrams with facility `mail`. The level is `info`, or `RUST_LOG`
//! (`error`, `warn`, `info`, `debug`, `trace`).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stderr,
    Syslog,
    Both,
}

struct Logger {
    level: LevelFilter,
    stderr: bool,
    syslog: Option<(PathBuf, Mutex<Option<UnixDatagram>>)>,
    pid: u32,
}

/// RFC 5424 §6.2.1 facility `mail` (2), times 8.
const FACILITY_MAIL: u8 = 2 << 3;

fn prefix(record: &Record<'_>) -> &'static str {
    match record.level() {
        _ if record.target() == "fatal" => "fatal: ",
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info => "",
        Level::Debug => "debug: ",
        Level::Trace => "trace: ",
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = crate::time::now_unix();
        let (prefix, pid) = (prefix(record), self.pid);
        if self.stderr {
            let line = format!(
                "{} smtp-relayd[{pid}]: {prefix}{}\n",
                crate::time::iso8601(now),
                record.args()
            );
            // One write per line, so that threads never interleave within a line.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        if let Some((path, socket)) = &self.syslog {
            let severity = match record.level() {
                _ if record.target() == "fatal" => 2,
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            let msg = format!(
                "<{}>{} smtp-relayd[{pid}]: {prefix}{}",
                FACILITY_MAIL | severity,
                crate::time::rfc3164(now),
                record.args()
            );
            let mut guard = socket.lock().unwrap_or_else(|e| e.into_inner());
            // (Re)connect lazily: syslogd may start after us or restart.
            for _ in 0..2 {
                if guard.is_none() {
                    *guard = UnixDatagram::unbound()
                        .ok()
                        .filter(|s| s.connect(path).is_ok());
                }
                match guard.as_ref().map(|s| s.send(msg.as_bytes())) {
                    Some(Ok(_)) => break,
                    _ => *guard = None,
                }
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger. Call once, before the threads start.
pub fn init(target: Target, syslog_socket: PathBuf) {
    init_level(target, syslog_socket, "info")
}

/// Installs the logger with `default` as the level when `RUST_LOG` says none.
pub fn init_level(target: Target, syslog_socket: PathBuf, default: &str) {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_string());
    let level = match wanted.to_ascii_lowercase().as_str() {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        "off" => LevelFilter::Off,
        _ => LevelFilter::Info,
    };
    let logger = Logger {
        level,
        stderr: target != Target::Syslog,
        syslog: (target != Target::Stderr).then(|| (syslog_socket, Mutex::new(None))),
        pid: std::process::id(),
    };
    // One logger for the life of the process.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(level);
    }
}
