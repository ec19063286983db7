//! A connection that is plain TCP or TLS over TCP, for both IO shells (the worker
//! towards clients, the relay towards the smarthost). The TCP socket stays reachable
//! for timeouts and shutdown whatever is layered on it.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Why `connect` failed: the name did not resolve, or no address answered.
pub enum Unreachable {
    Resolve(io::Error),
    Connect(String),
}

/// Resolves `host` and connects to its first address that answers within `timeout`
/// each.
pub fn connect(
    host: &str,
    port: u16,
    timeout: std::time::Duration,
) -> Result<TcpStream, Unreachable> {
    use std::net::ToSocketAddrs;
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(Unreachable::Resolve)?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(Unreachable::Connect(
        last.map_or("no address".to_string(), |e| e.to_string()),
    ))
}

/// What is layered on the socket: a rustls stream, or `NoTls` in builds without TLS.
pub trait Layer: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

#[cfg(feature = "tls")]
impl<C> Layer for rustls::StreamOwned<C, TcpStream>
where
    Self: Read + Write,
{
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// The layer of a build without TLS: it cannot exist.
pub enum NoTls {}

impl Read for NoTls {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
}

impl Write for NoTls {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        match *self {}
    }

    fn flush(&mut self) -> io::Result<()> {
        match *self {}
    }
}

impl Layer for NoTls {
    fn tcp(&self) -> &TcpStream {
        match *self {}
    }
}

pub enum Stream<T: Layer> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// Only while the plain stream is handed to a TLS handshake.
    Gone,
}

impl<T: Layer> Stream<T> {
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.tcp()),
            Stream::Gone => None,
        }
    }

    /// Takes the plain socket out for a handshake (`Gone` is left behind).
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Gone) {
            Stream::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    fn gone() -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, "connection closed")
    }
}

impl<T: Layer> Read for Stream<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Gone => Err(Self::gone()),
        }
    }
}

impl<T: Layer> Write for Stream<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Gone => Err(Self::gone()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Gone => Err(Self::gone()),
        }
    }
}
