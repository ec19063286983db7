//! `metrics_listen`: Prometheus' text format on `GET /metrics`, served from the
//! acceptor's poll loop. It never blocks and is bounded: at most `MAX_CONNS`
//! connections at once, `MAX_REQUEST` octets of request each, `DEADLINE` for the
//! whole exchange, then the connection is closed. Only `metrics_allow` networks are
//! answered; others get 403 and are closed. The request reader is sans-IO.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Connections served at once; one more is answered 503 and closed.
pub const MAX_CONNS: usize = 8;
/// The request head (request line and headers) may be this long.
pub const MAX_REQUEST: usize = 2048;
/// The whole exchange must be over within this.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// More octets are needed.
    Partial,
    Metrics,
    /// `GET` of another path: 404.
    NotFound,
    /// Another method: 405.
    Method,
    /// Not HTTP, or too long: 400 / 431.
    Bad,
    TooLong,
}

/// Reads the head at the start of `buf` (RFC 9112 §3: `METHOD SP TARGET SP VERSION`).
pub fn parse(buf: &[u8]) -> Request {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
    if end.is_none() {
        return if buf.len() >= MAX_REQUEST {
            Request::TooLong
        } else {
            Request::Partial
        };
    }
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with(b"HTTP/1.") || target.first() != Some(&b'/') {
        return Request::Bad;
    }
    if method != b"GET" && method != b"HEAD" {
        return Request::Method;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    if path == b"/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

/// The response to a request: status line, headers, the body if any.
pub fn response(status: &str, body: &str) -> Vec<u8> {
    let kind = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One connection being served.
struct Conn {
    stream: TcpStream,
    buf: Box<[u8; MAX_REQUEST]>,
    len: usize,
    out: Vec<u8>,
    sent: usize,
    deadline: Instant,
}

/// The metrics listener and its connections, owned by the acceptor.
pub struct Metrics {
    pub listener: TcpListener,
    pub allow: Vec<crate::config::Cidr>,
    conns: Vec<Option<Conn>>,
    /// The first token of the connections; the listener's is `base - 1`.
    base: usize,
}

impl Metrics {
    pub fn new(listener: TcpListener, allow: Vec<crate::config::Cidr>, base: usize) -> Metrics {
        Metrics {
            listener,
            allow,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
            base,
        }
    }

    pub fn listener_token(&self) -> Token {
        Token(self.base - 1)
    }

    pub fn owns(&self, t: Token) -> bool {
        t.0 >= self.base && t.0 < self.base + MAX_CONNS
    }

    pub fn register(&self, registry: &Registry) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        registry.register(
            &mut SourceFd(&self.listener.as_raw_fd()),
            self.listener_token(),
            Interest::READABLE,
        )
    }

    /// Until the first connection's deadline, if any is open.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.conns
            .iter()
            .flatten()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
    }

    /// Accepts what is waiting: allowed clients get a slot, others a 403.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, addr) = match self.listener.accept() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    return;
                }
            };
            let _ = stream.set_nonblocking(true);
            let ip: IpAddr = addr.ip().to_canonical();
            if !self.allow.iter().any(|c| c.contains(ip)) {
                log::warn!(
                    "metrics: refused [{ip}]:{} (not in metrics_allow)",
                    addr.port()
                );
                let _ = stream.write_all(&response("403 Forbidden", "forbidden\n"));
                continue;
            }
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                let _ = stream.write_all(&response("503 Service Unavailable", "busy\n"));
                continue;
            };
            let token = Token(self.base + slot);
            if registry
                .register(
                    &mut SourceFd(&stream.as_raw_fd()),
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                buf: Box::new([0u8; MAX_REQUEST]),
                len: 0,
                out: Vec::new(),
                sent: 0,
                deadline: Instant::now() + DEADLINE,
            });
        }
    }

    /// A connection's socket is ready: read its request, answer with `page()`'s text,
    /// write what fits, close when done.
    pub fn ready(&mut self, token: Token, registry: &Registry, page: &dyn Fn() -> String) {
        let slot = token.0 - self.base;
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        let done = serve(c, page);
        if done {
            self.close(slot, registry);
        }
    }

    /// Closes every connection past its deadline.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        for slot in 0..MAX_CONNS {
            if self.conns[slot].as_ref().is_some_and(|c| now >= c.deadline) {
                self.close(slot, registry);
            }
        }
    }

    fn close(&mut self, slot: usize, registry: &Registry) {
        if let Some(mut c) = self.conns[slot].take() {
            let _ = registry.deregister(&mut SourceFd(&c.stream.as_raw_fd()));
            // What the client sent beyond the head is read and dropped (a little of
            // it), so that the close is a FIN after the answer, not a reset that
            // could discard the answer before the client reads it.
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            let mut scratch = [0u8; 4096];
            for _ in 0..16 {
                match c.stream.read(&mut scratch) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
    }
}

/// Moves one connection on; true when it is finished (answered or broken).
fn serve(c: &mut Conn, page: &dyn Fn() -> String) -> bool {
    if c.out.is_empty() {
        loop {
            if c.len == MAX_REQUEST {
                break;
            }
            match c.stream.read(&mut c.buf[c.len..]) {
                Ok(0) => return true,
                Ok(n) => c.len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        let head = &c.buf[..c.len];
        c.out = match parse(head) {
            Request::Partial => return false,
            Request::Metrics if head.starts_with(b"HEAD") => {
                let mut r = response("200 OK", &page());
                let at = r
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(r.len(), |p| p + 4);
                r.truncate(at);
                r
            }
            Request::Metrics => response("200 OK", &page()),
            Request::NotFound => response("404 Not Found", "try /metrics\n"),
            Request::Method => response("405 Method Not Allowed", "GET only\n"),
            Request::Bad => response("400 Bad Request", "bad request\n"),
            Request::TooLong => response("431 Request Header Fields Too Large", "too long\n"),
        };
    }
    while c.sent < c.out.len() {
        match c.stream.write(&c.out[c.sent..]) {
            Ok(0) => return true,
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request heads, whole and in pieces, as RFC 9112 writes them.
    #[test]
    fn request_heads() {
        for (head, want) in [
            (
                &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                Request::Metrics,
            ),
            (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", Request::Metrics),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Request::Metrics),
            (b"GET /metrics HTTP/1.1\n\n", Request::Metrics),
            (b"GET / HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Request::Method),
            (b"GET /metrics\r\n\r\n", Request::Bad),
            (b"GET /metrics SMTP/1.0\r\n\r\n", Request::Bad),
            (b"GET metrics HTTP/1.1\r\n\r\n", Request::Bad),
            (b"EHLO x\r\n\r\n", Request::Bad),
            (b"\x00\xff\r\n\r\n", Request::Bad),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", Request::Partial),
            (b"", Request::Partial),
        ] {
            assert_eq!(parse(head), want, "{:?}", String::from_utf8_lossy(head));
        }
        assert_eq!(parse(&[b'a'; MAX_REQUEST]), Request::TooLong);
        let r = String::from_utf8(response("200 OK", "x 1\n")).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\nx 1\n"
        );
    }
}
