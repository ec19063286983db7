//! The log: one line per event, Postfix-shaped, to stderr and/or syslog.
//!
//! stderr lines are `TIME smtp-relayd[PID]: [LEVEL: ]TEXT`. Syslog lines go to the
//! local socket (`/dev/log`, where procd's logd and BusyBox syslogd listen) as RFC
//! 3164 datagrams with facility `mail`. What is logged is `info` and above, or what
//! `RUST_LOG` says in env_logger's filter syntax (`debug`, `smtp_relayd::relay=trace`,
//! `warn,smtp_relayd::server=debug`); env_logger writes the stderr lines, and its
//! filter decides for syslog too.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;

use log::{Level, Log, Metadata, Record};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stderr,
    Syslog,
    Both,
}

struct Logger {
    /// Filters every line and writes those for stderr.
    env: env_logger::Logger,
    stderr: bool,
    syslog: Option<(PathBuf, Mutex<Option<UnixDatagram>>)>,
    pid: u32,
}

/// The target of the line that ends the program (`fatal:`); inside the crate's
/// module path, so that a `RUST_LOG` filter for `smtp_relayd` keeps it.
pub const FATAL: &str = "smtp_relayd::fatal";

/// RFC 5424 §6.2.1 facility `mail` (2), times 8.
const FACILITY_MAIL: u8 = 2 << 3;

fn prefix(record: &Record<'_>) -> &'static str {
    match record.level() {
        _ if record.target() == FATAL => "fatal: ",
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info => "",
        Level::Debug => "debug: ",
        Level::Trace => "trace: ",
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.env.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.env.matches(record) {
            return;
        }
        if self.stderr {
            // env_logger writes each line with one write: threads never interleave.
            self.env.log(record);
        }
        let (prefix, pid) = (prefix(record), self.pid);
        if let Some((path, socket)) = &self.syslog {
            let severity = match record.level() {
                _ if record.target() == FATAL => 2,
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            let msg = format!(
                "<{}>{} smtp-relayd[{pid}]: {prefix}{}",
                FACILITY_MAIL | severity,
                crate::time::rfc3164(crate::time::now_unix()),
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

/// Installs the logger with `default` as the filter when `RUST_LOG` is not set.
pub fn init_level(target: Target, syslog_socket: PathBuf, default: &str) {
    let pid = std::process::id();
    let env = env_logger::Builder::new()
        .parse_filters(default)
        .parse_env(env_logger::Env::new().filter("RUST_LOG"))
        .target(env_logger::Target::Stderr)
        .format(move |out, record| {
            writeln!(
                out,
                "{} smtp-relayd[{pid}]: {}{}",
                crate::time::iso8601(crate::time::now_unix()),
                prefix(record),
                record.args()
            )
        })
        .build();
    let level = env.filter();
    let logger = Logger {
        env,
        stderr: target != Target::Syslog,
        syslog: (target != Target::Stderr).then(|| (syslog_socket, Mutex::new(None))),
        pid,
    };
    // One logger for the life of the process.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(level);
    }
}
