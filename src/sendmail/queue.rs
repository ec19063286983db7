//! `smtp-relayd queue` (and `mailq`, `sendmail -bp`, `sendmail -q`): look at the
//! queue, and change it. A change is made by the relay, which holds `relay.lock`: the
//! running daemon's relay thread (asked over its control socket, so that nothing
//! races a delivery in flight), or, when no daemon runs, this command itself.

use std::fmt::Write as _;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::relay::{self, Answer, Hosts, Relay, Request};
use crate::spool::{Message, QueueId, RcptState, Spool};
use crate::time::now_unix;

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The routes of a message's recipients not yet delivered, as their smarthosts'
/// names (`a,b`; `a,b|c` when it is split); `None` with one unnamed smarthost.
fn routes(config: &Config, m: &Message) -> Option<String> {
    if !config.smarthosts.first().is_some_and(|h| h.named) {
        return None;
    }
    let mut seen: Vec<usize> = Vec::new();
    for (r, s) in m.envelope.recipients.iter().zip(&m.rcpt_state) {
        let route = config.route_of(m.envelope.sender.as_bytes(), r.as_bytes());
        if *s != RcptState::Delivered && !seen.contains(&route) {
            seen.push(route);
        }
    }
    let names: Vec<String> = seen
        .iter()
        .map(|&i| config.routes[i].via.join(","))
        .collect();
    Some(names.join("|"))
}

/// A deferral's text: `relay=NAME REPLY` when it names its smarthost.
pub fn split_relay(text: &str) -> (Option<&str>, &str) {
    match text.strip_prefix("relay=").and_then(|t| t.split_once(' ')) {
        Some((name, reply)) => (Some(name), reply),
        None => (None, text),
    }
}

fn line(out: &mut String, config: &Config, m: &Message, status: &str, now: u64) {
    let to: Vec<String> = m
        .envelope
        .recipients
        .iter()
        .zip(&m.rcpt_state)
        .filter(|(_, s)| **s != RcptState::Delivered)
        .map(|(r, _)| format!("<{r}>"))
        .collect();
    let next = match (status, m.next_try) {
        ("failed", _) => "-".to_string(),
        (_, Some(t)) if t > now => format!("in {}", age(t - now)),
        _ => "now".to_string(),
    };
    let (relay, last) = split_relay(m.last_reply.as_deref().unwrap_or(""));
    let mut hosts = String::new();
    if let Some(r) = routes(config, m) {
        let _ = write!(hosts, " route={r}");
    }
    if let Some(r) = relay {
        let _ = write!(hosts, " relay={r}");
    }
    let _ = writeln!(
        out,
        "{}  {status:<6}  age={:<4} size={:<8} from=<{}> to={} attempts={} next={next}{hosts} last=\"{last}\"",
        m.id,
        age(now.saturating_sub(m.envelope.created)),
        m.size,
        m.envelope.sender,
        to.join(","),
        m.attempts,
    );
}

/// One line per queued and failed message.
pub fn list(spool: &Spool, config: &Config) -> Result<String, String> {
    let now = now_unix();
    let mut out = String::new();
    let (mut queued, mut failed) = (0, 0);
    for id in spool.list_queue().map_err(|e| e.to_string())? {
        if let Ok(m) = spool.read(&id) {
            line(&mut out, config, &m, "queued", now);
            queued += 1;
        }
    }
    for id in spool.list_failed().map_err(|e| e.to_string())? {
        if let Ok(m) = spool.read_failed(&id) {
            line(&mut out, config, &m, "failed", now);
            failed += 1;
        }
    }
    if queued + failed == 0 {
        out.push_str("Mail queue is empty\n");
    } else {
        let _ = writeln!(out, "-- {queued} queued, {failed} failed");
    }
    Ok(out)
}

/// The envelope, the delivery records and the header of one message.
pub fn show(spool: &Spool, config: &Config, id: &str) -> Result<String, String> {
    let no_message = || format!("no message {id}");
    let id = QueueId::parse(id).ok_or_else(no_message)?;
    let (path, m) = match spool.read(&id) {
        Ok(m) => (spool.queue_path(&id), m),
        Err(_) => (
            spool.failed_path(&id),
            spool.read_failed(&id).map_err(|_| no_message())?,
        ),
    };
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::from_utf8_lossy(&text[..m.content_offset as usize]).into_owned();
    let content = &text[m.content_offset as usize..(m.content_offset + m.size) as usize];
    let header_end = content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(content.len(), |p| p + 2);
    out.push_str(&String::from_utf8_lossy(&content[..header_end]).replace("\r\n", "\n"));
    if let Some(r) = routes(config, &m) {
        let _ = writeln!(out, "-- route: {r}");
    }
    let records = &text[(m.content_offset + m.size) as usize..];
    if !records.is_empty() {
        out.push_str("-- delivery records\n");
        out.push_str(&String::from_utf8_lossy(records).replace('\t', ""));
    }
    Ok(out)
}

/// Carries out a queue command: by the running daemon, or here if none runs.
pub fn command(
    config: &Config,
    hosts: Hosts,
    spool: Spool,
    req: Request,
) -> Result<Answer, String> {
    let lock_path = relay::lock_path(&spool);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {
            // No daemon: do it here, holding the lock (a daemon starting now waits).
            let (_tx, rx) = crossbeam_channel::bounded(1);
            let settings = relay::Settings {
                config: Arc::new(config.clone()),
                hosts,
                policy: Arc::new(config.policy()?),
            };
            let mut r = Relay::new(
                settings,
                Arc::new(spool),
                rx,
                relay::Flags::default(),
                Arc::new(smtp_stats()),
            );
            let answer = match req {
                Request::Flush => Answer::Done(format!(
                    "no daemon running: delivery pass over {} message(s) done",
                    r.run_once()
                )),
                other => r.handle(other),
            };
            Ok(answer)
        }
        Err(std::fs::TryLockError::WouldBlock) => ask_daemon(&spool, &req),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", lock_path.display())),
    }
}

/// Sends the command to the daemon's control socket and waits for its answer (the
/// relay answers between deliveries, so this may wait for one to finish).
fn ask_daemon(spool: &Spool, req: &Request) -> Result<Answer, String> {
    ask_daemon_within(spool, req, Duration::from_secs(900))
}

/// `ask_daemon`, waiting at most `timeout` for the answer.
pub fn ask_daemon_within(
    spool: &Spool,
    req: &Request,
    timeout: Duration,
) -> Result<Answer, String> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("smtp-relayd-queue-{}-{}", std::process::id(), now_unix());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| e.to_string())?;
    let sock =
        UnixDatagram::bind_addr(&addr).map_err(|e| format!("cannot make a reply socket: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.send_to(req.encode().as_bytes(), relay::control_path(spool))
        .map_err(|e| {
            format!(
                "the daemon holds the queue but does not answer on {}: {e}",
                relay::control_path(spool).display()
            )
        })?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = sock
        .recv(&mut buf)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    Ok(Answer::decode(&String::from_utf8_lossy(&buf[..n])))
}

/// Reads a request from the daemon's control socket: `(request, reply address)`.
pub fn receive(
    sock: &UnixDatagram,
) -> std::io::Result<Option<(Request, Option<std::os::unix::net::SocketAddr>)>> {
    let mut buf = [0u8; 256];
    let (n, addr) = sock.recv_from(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let reply_to = (!addr.is_unnamed()).then_some(addr);
    Ok(Request::decode(text.trim()).map(|r| (r, reply_to)))
}

fn smtp_stats() -> crate::stats::Stats {
    crate::stats::Stats::new(now_unix())
}
