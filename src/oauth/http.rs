//! Just enough HTTP/1.1 (RFC 9112) for a token endpoint: an `https://` URL, one POST
//! with a form body and `Connection: close`, and a bounded response reader that
//! knows `Content-Length`, `chunked`, and a body that ends with the connection.

use core::fmt::Write as _;

/// The largest response taken, headers included.
pub const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// The path and query, at least `/`.
    pub path: String,
}

impl Url {
    /// `https://HOST[:PORT][/PATH]`; HOST may be `[IPv6]`. Nothing else is accepted:
    /// a token travels only over TLS.
    pub fn parse(v: &str) -> Result<Url, String> {
        let rest = v
            .strip_prefix("https://")
            .ok_or_else(|| format!("'{v}' must be an https:// URL"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!("'{v}': user names in the URL are not supported"));
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("'{v}': unclosed '['"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("'{v}': bad port '{p}'"))?,
            None => 443,
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':');
        if host.is_empty() || !host.chars().all(ok) {
            return Err(format!("'{v}': bad host name '{host}'"));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("'{v}': blanks or control characters in the path"));
        }
        Ok(Url {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The `Host` header's value: the port only when it is not 443.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The request: a form POST that asks for JSON and closes the connection after.
pub fn post(url: &Url, form: &str) -> Vec<u8> {
    let mut head = String::new();
    let _ = write!(
        head,
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: smtp-relayd/{}\r\n\
         Accept: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
        form.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(form.as_bytes());
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Reads the response in `buf` (all bytes received so far). `Ok(None)`: more bytes
/// are needed; `eof` says the peer has closed, so what is there is all there is.
pub fn parse(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE {
            return Err("response headers over 64 KiB".into());
        }
        return if eof { Err(truncated(buf)) } else { Ok(None) };
    };
    let head = core::str::from_utf8(&buf[..end]).map_err(|_| "response headers are not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut words = status_line.splitn(3, ' ');
    let (version, code) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!(
            "not an HTTP response: '{}'",
            printable(status_line)
        ));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status '{}'", printable(code)))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line '{}'", printable(line)));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| "bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length headers".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(format!(
                    "unsupported Transfer-Encoding '{}'",
                    printable(value)
                ));
            }
        }
    }
    let body = &buf[end + 4..];
    let body = if chunked {
        match dechunk(body)? {
            Some(b) => b,
            None if eof => return Err(truncated(buf)),
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if n > MAX_RESPONSE {
            return Err("response body over 64 KiB".into());
        }
        if body.len() < n {
            return if eof { Err(truncated(buf)) } else { Ok(None) };
        }
        body[..n].to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { status, body }))
}

/// A chunked body (RFC 9112 §7.1): `Some` once the last chunk and the trailers came.
fn dechunk(mut s: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(s, b"\r\n") else {
            return Ok(None);
        };
        let line = core::str::from_utf8(&s[..eol]).map_err(|_| "bad chunk size")?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .ok()
            .filter(|&n| n <= MAX_RESPONSE)
            .ok_or_else(|| format!("bad chunk size '{}'", printable(size)))?;
        s = &s[eol + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            return Ok(find(s, b"\r\n")
                .filter(|&i| i == 0 || find(s, b"\r\n\r\n").is_some())
                .map(|_| out));
        }
        if s.len() < size + 2 {
            return Ok(None);
        }
        if &s[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        out.extend_from_slice(&s[..size]);
        if out.len() > MAX_RESPONSE {
            return Err("response body over 64 KiB".into());
        }
        s = &s[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn truncated(buf: &[u8]) -> String {
    format!(
        "connection closed after {} octets, in the middle of the response",
        buf.len()
    )
}

/// At most 80 characters of `s`, control characters replaced, for an error message.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse(
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
        )
        .unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            (
                "login.microsoftonline.com",
                443,
                "/contoso.onmicrosoft.com/oauth2/v2.0/token"
            )
        );
        let u = Url::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8443, "/")
        );
        let u = Url::parse("https://[::1]:9000/t?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/t?x=1")
        );
        assert_eq!(u.host_header(), "[::1]:9000");
        assert_eq!(Url::parse("https://h?q").unwrap().path, "/?q");
        for bad in [
            "http://oauth2.googleapis.com/token",
            "https://",
            "https://h:0/",
            "https://h:99999/",
            "https://u:p@h/",
            "https://h/a b",
            "https://h_x/",
            "https://[::1/",
            "oauth2.googleapis.com/token",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_request_as_sent() {
        let u = Url::parse("https://oauth2.googleapis.com/token").unwrap();
        let r = String::from_utf8(post(&u, "a=b")).unwrap();
        assert!(
            r.starts_with("POST /token HTTP/1.1\r\nHost: oauth2.googleapis.com\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\nContent-Type: application/x-www-form-urlencoded\r\n"));
        assert!(
            r.ends_with("\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=b"),
            "{r}"
        );
        let u = Url::parse("https://127.0.0.1:8443/t").unwrap();
        assert!(
            String::from_utf8(post(&u, ""))
                .unwrap()
                .contains("\r\nHost: 127.0.0.1:8443\r\n")
        );
    }

    #[test]
    fn responses_by_length_chunks_and_close() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        // Every prefix needs more; the whole is the response, whatever comes after.
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n], false), Ok(None), "{n}");
            assert!(parse(&full[..n], true).is_err(), "{n}");
        }
        let want = Response {
            status: 200,
            body: b"{\"a\":1}".to_vec(),
        };
        assert_eq!(parse(full, false), Ok(Some(want.clone())));
        let chunked = b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        for n in 0..chunked.len() {
            assert_eq!(parse(&chunked[..n], false), Ok(None), "{n}");
        }
        assert_eq!(
            parse(chunked, false),
            Ok(Some(Response {
                status: 400,
                ..want.clone()
            }))
        );
        let close = b"HTTP/1.0 200 OK\r\n\r\n{\"a\":1}";
        assert_eq!(parse(close, false), Ok(None));
        assert_eq!(parse(close, true), Ok(Some(want)));
    }

    #[test]
    fn bad_responses_are_errors() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n",
        ] {
            assert!(
                parse(bad, true).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = vec![b'x'; MAX_RESPONSE + 1];
        assert!(parse(&endless, false).is_err());
    }
}
