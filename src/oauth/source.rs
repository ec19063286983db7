//! The token source: where the relay's access tokens come from, and the memory of
//! the current one. One per daemon, shared by the relay thread and the passthrough
//! workers; its lock is held across a refresh, so two threads never refresh at once.
//!
//! The IO lives here: the HTTPS exchange with the token endpoint (TCP, the TLS stack
//! already in the binary, one bounded response), the token command (no shell, a
//! timeout), and the refresh token file (replaced atomically when it rotates).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::http::{self, Response, Url};
use super::{Granted, Refusal, Secret, Token, form};
use crate::config::{Grant, OAuth, Smarthost};
use crate::protocol::client::Reply;
use crate::stream::Unreachable;
use crate::tls::client::Https;

pub struct TokenSource {
    oauth: OAuth,
    https: Https,
    /// The endpoint's host, for the log.
    endpoint: String,
    state: Mutex<State>,
}

impl core::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "TokenSource {{ {:?}, {} }}",
            self.oauth.grant(),
            self.endpoint
        )
    }
}

#[derive(Default)]
struct State {
    token: Option<Cached>,
    /// A rotated refresh token that could not be saved: used instead of the file's.
    unsaved_refresh: Option<Secret>,
    /// The last failure, answered again without a new try for `HOLD`, so a dead
    /// endpoint does not cost every connection its timeout.
    failed: Option<(Instant, Reply)>,
    /// The operator-facing error last logged (logged once until a success).
    reported: Option<String>,
}

struct Cached {
    secret: Secret,
    /// From then on it is refreshed before use.
    stale_at: Instant,
    expires_in: Option<u64>,
}

/// How long a failure to get a token is answered from memory.
const HOLD: Duration = Duration::from_secs(5);
/// The token command's output that is read; the first line is the token.
const COMMAND_OUTPUT: usize = 16 * 1024;

/// A failure that has no server reply: a 4xx, so the mail is deferred, never failed.
fn local(text: &str) -> Reply {
    Reply::new(451, text)
}

impl TokenSource {
    /// `None` for `smarthost_auth password`. The trust anchors are loaded now, so a
    /// bad CA file stops the start, not the first delivery.
    pub fn new(config: &Smarthost) -> Result<Option<TokenSource>, String> {
        if config.auth == crate::config::SmarthostAuth::Password {
            return Ok(None);
        }
        let o = &config.oauth;
        let endpoint = match &o.token_url {
            Some(u) => Url::parse(u)?.host,
            None => "the token command".to_string(),
        };
        Ok(Some(TokenSource {
            oauth: o.clone(),
            https: Https::new(config)?,
            endpoint,
            state: Mutex::new(State::default()),
        }))
    }

    /// A token to use now: from memory while it is fresh enough, else a new one.
    /// An `Err` is a 4xx reason to defer with (the operator's part already logged).
    pub fn token(&self) -> Result<Token, Reply> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(c) = &state.token
            && now < c.stale_at
        {
            return Ok(Token {
                secret: c.secret.clone(),
                from_memory: true,
                expires_in: c.expires_in,
            });
        }
        if let Some((at, reply)) = &state.failed
            && now.duration_since(*at) < HOLD
        {
            return Err(reply.clone());
        }
        match self.fetch(&mut state) {
            Ok(t) => {
                let failed = state.failed.take().is_some();
                if state.reported.take().is_some() || failed {
                    log::info!("oauth: tokens from {} work again", self.endpoint);
                }
                Ok(t)
            }
            Err(reply) => {
                state.failed = Some((Instant::now(), reply.clone()));
                Err(reply)
            }
        }
    }

    /// The smarthost refused `token`: it is not used again.
    pub fn forget(&self, token: &Token) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state
            .token
            .as_ref()
            .is_some_and(|c| c.secret == token.secret)
        {
            state.token = None;
        }
    }

    /// A new token whatever memory holds (`smtp-relayd oauth token`).
    pub fn fresh(&self) -> Result<Token, Reply> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.token = None;
        self.fetch(&mut state)
    }

    fn fetch(&self, state: &mut State) -> Result<Token, Reply> {
        let o = &self.oauth;
        if o.grant() == Grant::Command {
            let secret = run_command(&o.token_command, o.timeout).map_err(|e| {
                local(&format!(
                    "4.7.0 smarthost_oauth_token_command {}: {e}",
                    o.token_command[0]
                ))
            })?;
            return Ok(Token {
                secret,
                from_memory: false,
                expires_in: None,
            });
        }
        let url = Url::parse(o.token_url.as_deref().unwrap_or_default())
            .map_err(|e| local(&format!("4.7.0 {e}")))?;
        let client_secret = match &o.client_secret_file {
            Some(p) => Some(read_secret(p).map_err(|e| {
                self.report(
                    state,
                    format!("cannot use smarthost_oauth_client_secret_file: {e}"),
                )
            })?),
            None => None,
        };
        let refresh = match (o.grant(), &o.refresh_token_file) {
            (Grant::RefreshToken, Some(path)) => Some(match state.unsaved_refresh.clone() {
                Some(t) => t,
                None => read_secret(path).map_err(|e| {
                    let e = if path.exists() {
                        e
                    } else {
                        format!("no refresh token in {} yet", path.display())
                    };
                    self.report(
                        state,
                        format!("{e}: run 'smtp-relayd oauth login' to get one"),
                    )
                })?,
            }),
            _ => None,
        };
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(5);
        match &refresh {
            Some(r) => {
                pairs.push(("grant_type", "refresh_token"));
                pairs.push(("refresh_token", r.expose()));
            }
            None => pairs.push(("grant_type", "client_credentials")),
        }
        pairs.push(("client_id", o.client_id.as_deref().unwrap_or_default()));
        if let Some(s) = &client_secret {
            pairs.push(("client_secret", s.expose()));
        }
        if let Some(scope) = &o.scope {
            pairs.push(("scope", scope));
        }
        let body = Secret::new(form::encode(&pairs));
        let response = self.exchange(&url, &body).map_err(|e| {
            local(&format!(
                "4.7.0 cannot get an OAuth2 token from {}: {e}",
                self.endpoint
            ))
        })?;
        let granted = super::token_reply(response.status, &response.body)
            .map_err(|r| self.refused(state, r, refresh.is_some()))?;
        let Granted {
            access_token,
            expires_in,
            refresh_token,
        } = granted;
        if let (Some(new), Some(old), Some(path)) = (refresh_token, &refresh, &o.refresh_token_file)
            && new != *old
        {
            match replace_secret_file(path, new.expose()) {
                Ok(()) => {
                    state.unsaved_refresh = None;
                    log::info!(
                        "oauth: new refresh token from {} saved to {}",
                        self.endpoint,
                        path.display()
                    );
                }
                Err(e) => {
                    log::error!(
                        "oauth: cannot save the new refresh token to {}: {e}; it is kept in \
                         memory until a restart, and the old one in the file may stop working \
                         (the relay's user must be able to write the file's directory)",
                        path.display()
                    );
                    state.unsaved_refresh = Some(new);
                }
            }
        }
        let lifetime = expires_in.unwrap_or(super::DEFAULT_LIFETIME);
        let stale_in = lifetime - super::refresh_margin(lifetime);
        log::info!(
            "oauth: new access token from {}, expires in {lifetime}s",
            self.endpoint
        );
        state.token = Some(Cached {
            secret: access_token.clone(),
            stale_at: Instant::now() + Duration::from_secs(stale_in),
            expires_in,
        });
        Ok(Token {
            secret: access_token,
            from_memory: false,
            expires_in,
        })
    }

    /// Logs `what` as an error once (until a success), and makes the 4xx to defer with.
    fn report(&self, state: &mut State, what: String) -> Reply {
        if state.reported.as_deref() != Some(what.as_str()) {
            log::error!("oauth: {what}; mail stays queued");
            state.reported = Some(what.clone());
        }
        local(&format!("4.7.0 no OAuth2 token: {what}"))
    }

    fn refused(&self, state: &mut State, r: Refusal, refreshing: bool) -> Reply {
        let host = &self.endpoint;
        match r {
            Refusal::InvalidGrant(text) if refreshing => self.report(
                state,
                format!(
                    "{host} refused the refresh token ({text}): it was revoked or has expired \
                     (a password change, an admin's revocation, 90 days unused, or a Google app \
                     in testing mode after 7 days); run 'smtp-relayd oauth login' to get a new one"
                ),
            ),
            Refusal::InvalidGrant(text) | Refusal::Configuration(text) | Refusal::Denied(text) => {
                self.report(
                    state,
                    format!(
                        "{host} refused the relay's request ({text}): check \
                         smarthost_oauth_client_id, the client secret, smarthost_oauth_scope and \
                         the app's permissions (admin consent)"
                    ),
                )
            }
            other => local(&format!(
                "4.7.0 cannot get an OAuth2 token from {host}: {}",
                other.describe()
            )),
        }
    }

    /// One POST and its response, within `smarthost_oauth_timeout` in all.
    fn exchange(&self, url: &Url, form: &Secret) -> Result<Response, String> {
        let deadline = Instant::now() + self.oauth.timeout;
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("no answer within {}s", self.oauth.timeout.as_secs()))
        };
        let tcp = crate::stream::connect(&url.host, url.port, left()?).map_err(|e| match e {
            Unreachable::Resolve(e) => format!("cannot resolve {}: {e}", url.host),
            Unreachable::Connect(why) => {
                format!("cannot connect to {}:{}: {why}", url.host, url.port)
            }
        })?;
        tcp.set_read_timeout(Some(left()?)).ok();
        tcp.set_write_timeout(Some(left()?)).ok();
        let mut tls = self.https.handshake(&url.host, tcp)?;
        let request =
            Secret::new(String::from_utf8(http::post(url, form.expose())).unwrap_or_default());
        tls.write_all(request.expose().as_bytes())
            .and_then(|()| tls.flush())
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = http::parse(&buf, false)? {
                return Ok(r);
            }
            if buf.len() > http::MAX_RESPONSE {
                return Err("response over 64 KiB".into());
            }
            tls.sock.set_read_timeout(Some(left()?)).ok();
            match tls.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A peer that closes without close_notify: the length decides.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) if crate::is_timeout(&e) => {
                    return Err(format!(
                        "no answer within {}s",
                        self.oauth.timeout.as_secs()
                    ));
                }
                Err(e) => return Err(format!("reading the response: {e}")),
            }
        }
        http::parse(&buf, true)?.ok_or_else(|| "no response".to_string())
    }

    /// RFC 8628: the device authorization grant, for a first login on a box with no
    /// browser. Prints where to go and the code, polls, and writes the refresh token
    /// file. `say` gets what the operator should read.
    pub fn login(&self, say: &mut dyn Write) -> Result<(), String> {
        let o = &self.oauth;
        let path = o
            .refresh_token_file
            .as_ref()
            .ok_or("oauth login needs smarthost_oauth_refresh_token_file (where the token goes)")?;
        let device_url = o.device_url().ok_or(
            "oauth login needs smarthost_oauth_device_url (the token URL does not end in /token)",
        )?;
        let device_url = Url::parse(&device_url)?;
        let token_url = Url::parse(o.token_url.as_deref().unwrap_or_default())?;
        let client_id = o.client_id.as_deref().unwrap_or_default();
        let scope = o.scope.as_deref().unwrap_or_default();
        let body = Secret::new(form::encode(&[("client_id", client_id), ("scope", scope)]));
        let r = self.exchange(&device_url, &body)?;
        let device = super::device_reply(r.status, &r.body)
            .map_err(|e| format!("{}: {}", device_url.host, e.describe()))?;
        match &device.message {
            Some(m) => writeln!(say, "{m}"),
            None => writeln!(
                say,
                "To sign in, open {} in a browser and enter the code {}",
                device.verification_uri, device.user_code
            ),
        }
        .and_then(|()| {
            writeln!(
                say,
                "Waiting for the sign-in (up to {} minutes)...",
                device.expires_in.div_ceil(60)
            )
        })
        .map_err(|e| e.to_string())?;
        let client_secret = match &o.client_secret_file {
            Some(p) => Some(read_secret(p)?),
            None => None,
        };
        let mut interval = device.interval;
        let end = Instant::now() + Duration::from_secs(device.expires_in);
        loop {
            std::thread::sleep(Duration::from_secs(interval));
            if Instant::now() >= end {
                return Err("the code expired before the sign-in; run oauth login again".into());
            }
            let mut pairs = vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device.device_code.expose()),
                ("client_id", client_id),
            ];
            if let Some(s) = &client_secret {
                pairs.push(("client_secret", s.expose()));
            }
            let body = Secret::new(form::encode(&pairs));
            let r = match self.exchange(&token_url, &body) {
                Ok(r) => r,
                Err(e) => {
                    let _ = writeln!(say, "{}: {e}; trying again", token_url.host);
                    continue;
                }
            };
            match super::token_reply(r.status, &r.body) {
                Ok(g) => {
                    let Some(refresh) = g.refresh_token else {
                        return Err(format!(
                            "{} gave no refresh token: add offline_access to \
                             smarthost_oauth_scope (Microsoft), or use a client that may \
                             have one",
                            token_url.host
                        ));
                    };
                    replace_secret_file(path, refresh.expose())
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    writeln!(
                        say,
                        "Signed in. The refresh token is saved in {}.",
                        path.display()
                    )
                    .map_err(|e| e.to_string())?;
                    return Ok(());
                }
                Err(Refusal::Pending) => {}
                Err(Refusal::SlowDown) => interval += 5,
                Err(Refusal::Temporary(e)) => {
                    let _ = writeln!(say, "{}: {e}; trying again", token_url.host);
                }
                Err(other) => {
                    return Err(format!("{}: {}", token_url.host, other.describe()));
                }
            }
        }
    }
}

/// The first line of a secret file, checked to be 0600 or stricter first.
fn read_secret(path: &Path) -> Result<Secret, String> {
    crate::config::check_secret_file(path)?;
    let text =
        Secret::new(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?);
    let first = text.expose().lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(Secret::new(first.to_string()))
}

/// Replaces `path` with `text` so that a power cut leaves the old file or the new one:
/// a temporary file beside it (mode 0600 from its creation), fsynced, renamed over
/// it, and the directory fsynced.
pub fn replace_secret_file(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Runs the token command (no shell, stdin from /dev/null) and takes the first line
/// of its output, within `timeout`; after it the program is killed.
fn run_command(argv: &[String], timeout: Duration) -> Result<Secret, String> {
    let run = crate::process::run(argv, COMMAND_OUTPUT, timeout)?;
    let out = Secret::new(String::from_utf8_lossy(&run.stdout).into_owned());
    if let Some(failure) = run.failure {
        let err = String::from_utf8_lossy(&run.stderr);
        let first = err.lines().next().unwrap_or("").trim();
        return Err(format!("{failure}: {}", http::printable(first)));
    }
    let token = out.expose().lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err("it printed no token".into());
    }
    if token.contains(|c: char| c.is_control() || c == ' ') {
        return Err("its first line is not a token (blanks or control characters)".into());
    }
    Ok(Secret::new(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_command_no_shell_first_line_timeout() {
        let sh = |script: &str| vec!["/bin/sh".to_string(), "-c".into(), script.into()];
        let t = run_command(&sh("echo ' tok-1 '; echo second"), Duration::from_secs(5)).unwrap();
        assert_eq!(t.expose(), "tok-1");
        // No shell: the arguments arrive as they are.
        let t = run_command(
            &["/bin/echo".to_string(), "$HOME;x".into()],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(t.expose(), "$HOME;x");
        let e = run_command(&sh("echo oops >&2; exit 3"), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("exit status: 3") && e.contains("oops"), "{e}");
        let e = run_command(&sh("true"), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("no token"), "{e}");
        let e = run_command(&sh("echo 'a b'"), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("not a token"), "{e}");
        let started = Instant::now();
        let e = run_command(&sh("exec sleep 30"), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let e = run_command(&["/nonexistent/helper".to_string()], Duration::from_secs(1));
        assert!(e.unwrap_err().contains("No such file"));
        // Closing its output and living on is still bounded by the timeout.
        let e = run_command(&sh("exec >&- 2>&-; sleep 30"), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        // Output past the limit is read and dropped, so the program is not blocked.
        let t = run_command(
            &sh("echo tok; head -c 200000 /dev/zero"),
            Duration::from_secs(5),
        );
        assert_eq!(t.unwrap().expose(), "tok");
        let e = run_command(&sh("kill -9 $$"), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("killed by signal 9"), "{e}");
    }

    #[test]
    fn a_replaced_secret_file_is_whole_and_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("oauth-replace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("refresh");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_secret_file(&path, "new-token").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-token\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret(&path).unwrap().expose(), "new-token");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("refresh")]);
        // A directory it cannot write: the old file stays as it was.
        assert!(replace_secret_file(Path::new("/proc/refresh"), "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
