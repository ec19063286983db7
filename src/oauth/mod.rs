//! OAuth2 access tokens for the smarthost (RFC 6749; RFC 8628 for the first login).
//!
//! The pieces here are sans-IO: the form a request carries, the HTTP response reader,
//! the JSON reader, and what a token endpoint's answer means. `source` is the shell
//! that speaks to the endpoint (or runs the token command) and keeps the tokens.

pub mod form;
pub mod http;
pub mod json;
#[cfg(feature = "tls")]
pub mod source;

use json::Value;

/// A token or a refresh token: `Debug` and `Display` never show it, and its bytes
/// are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "<secret, {} octets>", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = core::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        core::hint::black_box(&bytes);
    }
}

/// A token to present, and whether it came from memory (a `535` to it is then worth
/// one retry with a fresh one).
#[derive(Debug, Clone)]
pub struct Token {
    pub secret: Secret,
    pub from_memory: bool,
    /// What the endpoint said (`None`: the token command, or no `expires_in`).
    pub expires_in: Option<u64>,
}

/// A build without TLS has no token source: this type has no values.
#[cfg(not(feature = "tls"))]
pub enum NoTokens {}

#[cfg(not(feature = "tls"))]
impl NoTokens {
    pub fn token(&self) -> Result<Token, crate::protocol::client::Reply> {
        match *self {}
    }

    pub fn forget(&self, _: &Token) {
        match *self {}
    }
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub access_token: Secret,
    /// Seconds; `None` when the endpoint did not say.
    pub expires_in: Option<u64>,
    /// A new refresh token (rotation), when the endpoint sent one.
    pub refresh_token: Option<Secret>,
}

/// Why an endpoint gave no token, sorted by what the relay does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `invalid_grant`: the refresh token (or device code) was revoked or expired;
    /// only a new login helps.
    InvalidGrant(String),
    /// `invalid_client`, `unauthorized_client`, `invalid_scope`, `invalid_request`,
    /// `unsupported_grant_type`: the configuration is wrong.
    Configuration(String),
    /// RFC 8628 §3.5, while the user has not finished: poll again (`slow_down`: less often).
    Pending,
    SlowDown,
    /// RFC 8628: `access_denied`, `expired_token`: the login is over.
    Denied(String),
    /// Anything else: a 5xx, garbage, an unknown error. Tried again later.
    Temporary(String),
}

impl Refusal {
    pub fn describe(&self) -> String {
        match self {
            Refusal::InvalidGrant(s)
            | Refusal::Configuration(s)
            | Refusal::Denied(s)
            | Refusal::Temporary(s) => s.clone(),
            Refusal::Pending => "authorization_pending".into(),
            Refusal::SlowDown => "slow_down".into(),
        }
    }
}

/// `error` and `error_description` (RFC 6749 §5.2), cut and made printable.
fn error_text(o: &json::Object) -> (String, String) {
    let error = o.str("error").unwrap_or("").to_string();
    let mut text = http::printable(&error);
    if let Some(d) = o.str("error_description") {
        // Microsoft's descriptions carry trace and correlation ids on further lines.
        let first = d.lines().next().unwrap_or("");
        text.push_str(": ");
        text.push_str(&http::printable(first).chars().take(200).collect::<String>());
    }
    (error, text)
}

fn refusal(status: u16, body: &[u8]) -> Refusal {
    let Ok(o) = json::object(body) else {
        let start = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        return Refusal::Temporary(format!(
            "HTTP {status} without a JSON error ('{}')",
            http::printable(&start)
        ));
    };
    let (error, text) = error_text(&o);
    let text = format!("HTTP {status}, {text}");
    match error.as_str() {
        "invalid_grant" => Refusal::InvalidGrant(text),
        "invalid_client"
        | "unauthorized_client"
        | "invalid_scope"
        | "invalid_request"
        | "unsupported_grant_type" => Refusal::Configuration(text),
        "authorization_pending" => Refusal::Pending,
        "slow_down" => Refusal::SlowDown,
        "access_denied" | "expired_token" => Refusal::Denied(text),
        _ => Refusal::Temporary(text),
    }
}

/// What a token endpoint's response means.
pub fn token_reply(status: u16, body: &[u8]) -> Result<Granted, Refusal> {
    if status != 200 {
        return Err(refusal(status, body));
    }
    let o = json::object(body).map_err(|e| Refusal::Temporary(format!("bad JSON: {e}")))?;
    if o.get("error").is_some() {
        return Err(refusal(status, body));
    }
    let token = o
        .str("access_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::Temporary("no access_token in the reply".into()))?;
    // RFC 6750 §2.1 b64token: what can follow "Bearer " on one line.
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if !token.chars().all(b64token) || token.len() > 16 * 1024 {
        return Err(Refusal::Temporary(
            "the access_token is not a bearer token".into(),
        ));
    }
    if let Some(kind) = o.str("token_type")
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(Refusal::Temporary(format!(
            "token_type '{}', not Bearer",
            http::printable(kind)
        )));
    }
    let refresh = o
        .str("refresh_token")
        .filter(|t| !t.is_empty() && !t.contains(['\r', '\n']));
    Ok(Granted {
        access_token: Secret::new(token.to_string()),
        expires_in: o.get("expires_in").and_then(Value::as_secs),
        refresh_token: refresh.map(|t| Secret::new(t.to_string())),
    })
}

/// A device authorization response (RFC 8628 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_code: Secret,
    pub user_code: String,
    /// `verification_uri` (Google's older name: `verification_url`).
    pub verification_uri: String,
    pub expires_in: u64,
    /// Seconds between polls (default 5).
    pub interval: u64,
    /// The provider's own instruction, when it sends one (Microsoft does).
    pub message: Option<String>,
}

pub fn device_reply(status: u16, body: &[u8]) -> Result<Device, Refusal> {
    if status != 200 {
        return Err(refusal(status, body));
    }
    let o = json::object(body).map_err(|e| Refusal::Temporary(format!("bad JSON: {e}")))?;
    let need = |name: &str| {
        o.str(name)
            .map(str::to_string)
            .ok_or_else(|| Refusal::Temporary(format!("no {name} in the reply")))
    };
    Ok(Device {
        device_code: Secret::new(need("device_code")?),
        user_code: http::printable(&need("user_code")?),
        verification_uri: http::printable(
            &need("verification_uri").or_else(|_| need("verification_url"))?,
        ),
        expires_in: o.get("expires_in").and_then(Value::as_secs).unwrap_or(900),
        interval: o
            .get("interval")
            .and_then(Value::as_secs)
            .unwrap_or(5)
            .clamp(1, 60),
        message: o
            .str("message")
            .map(|m| http::printable(m).chars().take(300).collect()),
    })
}

/// When a token from memory is too old to use: less than 10 minutes left (what
/// Microsoft's high-volume endpoint demands), or for a short-lived token a quarter of
/// its lifetime.
pub fn refresh_margin(lifetime: u64) -> u64 {
    (lifetime / 4).min(600)
}

/// The token endpoint's lifetime when it gives none (RFC 6749 leaves it to the
/// server; an hour is what Microsoft and Google issue). A `535` ends it sooner.
pub const DEFAULT_LIFETIME: u64 = 3600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_reply_table() {
        let ok = token_reply(
            200,
            br#"{"token_type":"Bearer","scope":"https://outlook.office.com/SMTP.Send","expires_in":4407,"ext_expires_in":4407,"access_token":"eyJ0eXAi.eyJhdWQ.sig-_","refresh_token":"0.AXoA-new"}"#,
        )
        .unwrap();
        assert_eq!(ok.access_token.expose(), "eyJ0eXAi.eyJhdWQ.sig-_");
        assert_eq!(ok.expires_in, Some(4407));
        assert_eq!(
            ok.refresh_token.as_ref().map(Secret::expose),
            Some("0.AXoA-new")
        );
        // Google without rotation, and with expires_in missing.
        let g = token_reply(200, br#"{"access_token":"ya29.a0","scope":"https://mail.google.com/","token_type":"Bearer"}"#).unwrap();
        assert_eq!((g.expires_in, g.refresh_token), (None, None));
        type Case = (u16, &'static [u8], fn(&Refusal) -> bool);
        let cases: &[Case] = &[
            (400, br#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
             |r| matches!(r, Refusal::InvalidGrant(t) if t == "HTTP 400, invalid_grant: Token has been expired or revoked.")),
            (401, br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1"}"#,
             |r| matches!(r, Refusal::Configuration(t) if t.ends_with("Invalid client secret provided."))),
            (400, br#"{"error":"authorization_pending"}"#, |r| *r == Refusal::Pending),
            (400, br#"{"error":"slow_down"}"#, |r| *r == Refusal::SlowDown),
            (400, br#"{"error":"expired_token"}"#, |r| matches!(r, Refusal::Denied(_))),
            (503, b"<html>Service Unavailable</html>", |r| matches!(r, Refusal::Temporary(t) if t.contains("HTTP 503 without a JSON error"))),
            (500, br#"{"error":"server_error"}"#, |r| matches!(r, Refusal::Temporary(_))),
            (200, b"garbage", |r| matches!(r, Refusal::Temporary(t) if t.starts_with("bad JSON"))),
            (200, br#"{"error":"invalid_grant"}"#, |r| matches!(r, Refusal::InvalidGrant(_))),
            (200, br#"{"token_type":"Bearer"}"#, |r| matches!(r, Refusal::Temporary(t) if t.contains("no access_token"))),
            (200, br#"{"access_token":""}"#, |r| matches!(r, Refusal::Temporary(_))),
            (200, br#"{"access_token":"a b\r\nRCPT TO:<x>"}"#, |r| matches!(r, Refusal::Temporary(t) if t.contains("not a bearer token"))),
            (200, br#"{"access_token":"abc","token_type":"mac"}"#, |r| matches!(r, Refusal::Temporary(t) if t.contains("not Bearer"))),
        ];
        for (status, body, check) in cases {
            let got = token_reply(*status, body).unwrap_err();
            assert!(
                check(&got),
                "{status} {:?} -> {got:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn device_reply_table() {
        // Microsoft's /devicecode answer.
        let d = device_reply(200, br#"{"user_code":"FQK5HW3UF","device_code":"FAQABAAEAAAD","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":5,"message":"To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code FQK5HW3UF to authenticate."}"#).unwrap();
        assert_eq!(d.user_code, "FQK5HW3UF");
        assert_eq!(d.verification_uri, "https://microsoft.com/devicelogin");
        assert_eq!((d.expires_in, d.interval), (900, 5));
        assert!(d.message.unwrap().starts_with("To sign in"));
        // Google's older field name, no interval.
        let d = device_reply(200, br#"{"device_code":"AH-1","user_code":"GQVQ-JKEC","verification_url":"https://www.google.com/device","expires_in":1800}"#).unwrap();
        assert_eq!(
            (d.verification_uri.as_str(), d.interval),
            ("https://www.google.com/device", 5)
        );
        assert!(device_reply(200, br#"{"device_code":"x"}"#).is_err());
        assert!(matches!(
            device_reply(400, br#"{"error":"invalid_scope"}"#),
            Err(Refusal::Configuration(_))
        ));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-token".into());
        assert_eq!(format!("{s:?}"), "<secret, 13 octets>");
        let g = token_reply(
            200,
            br#"{"access_token":"hunter2","refresh_token":"rt-hunter3"}"#,
        )
        .unwrap();
        let shown = format!("{g:?}");
        assert!(!shown.contains("hunter"), "{shown}");
    }

    #[test]
    fn margins() {
        assert_eq!(
            refresh_margin(3599),
            600,
            "an hour's token: 10 minutes before"
        );
        assert_eq!(refresh_margin(4), 1);
        assert_eq!(refresh_margin(0), 0);
    }
}
