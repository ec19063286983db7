//! A bounded JSON (RFC 8259) reader for what token endpoints answer: one object whose
//! members that matter are strings and numbers. Nested values are checked and
//! skipped; depth, size and string lengths are bounded, so garbage costs nothing.

/// A member's value, as far as a token reply needs one.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    /// A number, as its text (no float parsing is needed, nor linked in).
    Num(String),
    Bool(bool),
    Null,
    /// An array or object, skipped.
    Nested,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A whole number of seconds, given as a number or (as some providers do) a string.
    pub fn as_secs(&self) -> Option<u64> {
        match self {
            Value::Num(n) => n.parse().ok(),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// A top-level object's members, in order (a repeated name: the first counts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object(pub Vec<(String, Value)>);

impl Object {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }
}

const MAX_INPUT: usize = 64 * 1024;
const MAX_DEPTH: usize = 16;
const MAX_MEMBERS: usize = 64;

/// Parses `text` as one JSON object.
pub fn object(text: &[u8]) -> Result<Object, String> {
    if text.len() > MAX_INPUT {
        return Err("JSON over 64 KiB".into());
    }
    let mut p = Parser { s: text, i: 0 };
    p.ws();
    if p.peek() != Some(b'{') {
        return Err("not a JSON object".into());
    }
    let mut obj = Object::default();
    p.members(0, Some(&mut obj))?;
    p.ws();
    if p.i != text.len() {
        return Err(format!("trailing data at offset {}", p.i));
    }
    Ok(obj)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at offset {}", self.i))
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected '{}'", b as char))
        }
    }

    /// `{ "name": value, ... }`, collecting the members into `out` at the top.
    fn members(&mut self, depth: usize, mut out: Option<&mut Object>) -> Result<(), String> {
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let name = self.string()?;
            self.ws();
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            if let Some(o) = out.as_deref_mut() {
                if o.0.len() >= MAX_MEMBERS {
                    return self.err("too many members");
                }
                if o.get(&name).is_none() {
                    o.0.push((name, value));
                }
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or '}'"),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return self.err("nested too deep");
        }
        self.ws();
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b'{') => self.members(depth, None).map(|()| Value::Nested),
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Nested);
                }
                loop {
                    self.value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Nested);
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b't') => self.word(b"true", Value::Bool(true)),
            Some(b'f') => self.word(b"false", Value::Bool(false)),
            Some(b'n') => self.word(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.err("expected a value"),
        }
    }

    fn word(&mut self, w: &[u8], v: Value) -> Result<Value, String> {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }

    /// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i > from
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        if self.peek() == Some(b'0') {
            self.i += 1;
        } else if !digits(self) {
            return self.err("bad number");
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !digits(self) {
                return self.err("bad number");
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return self.err("bad number");
            }
        }
        let text = core::str::from_utf8(&self.s[start..self.i]).expect("ASCII");
        if text.len() > 64 {
            return self.err("number too long");
        }
        Ok(Value::Num(text.to_string()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let Some(h) = self.s.get(self.i..self.i + 4) else {
            return self.err("short \\u escape");
        };
        let h = core::str::from_utf8(h).ok();
        let v = h.and_then(|h| u32::from_str_radix(h, 16).ok());
        let Some(v) = v else {
            return self.err("bad \\u escape");
        };
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return self.err("unterminated string");
                    };
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                // A surrogate pair: \uD83D\uDE00.
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return self.err("lone surrogate");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("bad surrogate pair");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(code) {
                                Some(c) => c,
                                None => return self.err("lone surrogate"),
                            }
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..0x20 => return self.err("control character in string"),
                _ => out.push(b),
            }
        }
        String::from_utf8(out).or_else(|_| self.err("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_replies_as_providers_send_them() {
        // RFC 6749 §5.1's example.
        let o = object(
            br#"{
       "access_token":"2YotnFZFEjr1zCsicMWpAA",
       "token_type":"example",
       "expires_in":3600,
       "refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA",
       "example_parameter":"example_value"
     }"#,
        )
        .unwrap();
        assert_eq!(o.str("access_token"), Some("2YotnFZFEjr1zCsicMWpAA"));
        assert_eq!(o.get("expires_in").and_then(Value::as_secs), Some(3600));
        assert_eq!(o.str("refresh_token"), Some("tGzv3JOkF0XG5Qx2TlKWIA"));
        // Microsoft: expires_in and ext_expires_in, nested arrays in errors.
        let o = object(br#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":3599,"access_token":"eyJ0eX\/Ai"}"#).unwrap();
        assert_eq!(o.get("expires_in").and_then(Value::as_secs), Some(3599));
        assert_eq!(o.str("access_token"), Some("eyJ0eX/Ai"));
        let o = object(br#"{"error":"invalid_grant","error_description":"AADSTS70000: \u00e9 \ud83d\ude00","error_codes":[70000],"timestamp":"2026-12-01 10:00:00Z","x":{"a":[1,{"b":null}]},"ok":true}"#).unwrap();
        assert_eq!(o.str("error"), Some("invalid_grant"));
        assert_eq!(o.str("error_description"), Some("AADSTS70000: é 😀"));
        assert_eq!(o.get("error_codes"), Some(&Value::Nested));
        assert_eq!(o.get("ok"), Some(&Value::Bool(true)));
        assert_eq!(object(b" {} ").unwrap(), Object::default());
        assert_eq!(
            object(br#"{"n":-1.5e3,"z":0}"#).unwrap().get("n"),
            Some(&Value::Num("-1.5e3".into()))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"<html>502 Bad Gateway</html>",
            b"[1,2]",
            b"{",
            b"{\"a\"",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":-}",
            b"{\"a\":tru}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\ud83d\"}",
            b"{\"a\":\"\\ude00\"}",
            b"{\"a\":\"line\nbreak\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1} x",
            b"{\"a\":\"\\u12\"}",
        ] {
            assert!(object(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Depth and size are bounded.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(object(deep.as_bytes()).unwrap_err().contains("deep"));
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(70 * 1024));
        assert!(object(big.as_bytes()).is_err());
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":1")).collect();
        assert!(object(format!("{{{}}}", many.join(",")).as_bytes()).is_err());
    }
}
