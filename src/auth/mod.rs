//! SMTP AUTH for devices (RFC 4954): the users file, password checks, and a throttle
//! for clients that keep failing.

pub mod sha512_crypt;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::policy::Senders;

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `auth_users`: `user:$6$...[:SENDERS]` lines (`openssl passwd -6`,
/// `mkpasswd -m sha-512`); SENDERS is a comma-separated list of the address patterns
/// the user may send as.
#[derive(Default)]
pub struct Users {
    /// The hash, and the senders the user may use (`None`: any the policy allows).
    hashes: HashMap<String, (String, Option<Senders>)>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users({} entries, hashes not shown)", self.hashes.len())
    }
}

/// A hash for unknown users, so that they take as long to refuse as known ones.
const DUMMY: &str = "$6$smtprelaydummy$zJ0M8oi0wfq5B6mXqQTcOAIMmHqxhQMYkV9oj8gB3.D1Gm6SJkmGEUThmR3S/8UQHcMZ6bfxvXbrUjJpVKbFp1";

impl Users {
    /// Reads the file; it must not be readable by group or others.
    pub fn load(path: &Path) -> Result<Users, String> {
        crate::config::check_secret_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("{}:{}: {what}", path.display(), n + 1);
            let mut fields = line.splitn(3, ':');
            let (Some(user), Some(hash)) = (fields.next(), fields.next()) else {
                return Err(bad("expected user:HASH[:SENDERS]"));
            };
            let senders = match fields.next().map(str::trim) {
                None | Some("") => None,
                Some(list) => Some(Senders::from(
                    crate::protocol::policy::parse_patterns(list).map_err(|e| bad(&e))?,
                )),
            };
            if user.is_empty() || user.len() > 255 || user.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(bad("bad user name"));
            }
            if !hash.starts_with("$6$") {
                return Err(bad(
                    "the hash must be SHA-512-crypt ($6$...), as made by 'openssl passwd -6'",
                ));
            }
            if hashes
                .insert(user.to_string(), (hash.to_string(), senders))
                .is_some()
            {
                return Err(bad(&format!("user '{user}' is listed twice")));
            }
        }
        Ok(Users { hashes })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks a user's password: on success, the senders the user may use (`None`:
    /// any). Unknown users cost as much as known ones.
    pub fn check(&self, user: &str, password: &[u8]) -> Option<Option<Senders>> {
        match self.hashes.get(user) {
            Some((h, senders)) => sha512_crypt::verify(password, h).then(|| senders.clone()),
            None => {
                let _ = sha512_crypt::verify(password, DUMMY);
                None
            }
        }
    }
}

/// Failed AUTH attempts per client address over a window: each failure beyond the
/// first few makes the next answer slower (up to `MAX_DELAY`).
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const WINDOW: Duration = Duration::from_secs(600);
const FREE_FAILURES: u32 = 2;
const MAX_DELAY: Duration = Duration::from_secs(5);
/// At most this many addresses are remembered (memory stays bounded under attack).
const MAX_ENTRIES: usize = 4096;

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle {
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure; returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        let over = entry.0.saturating_sub(FREE_FAILURES);
        Duration::from_secs(u64::from(over)).min(MAX_DELAY)
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file() {
        let dir = std::env::temp_dir().join(format!("smtp-relayd-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users");
        let hash = sha512_crypt::hash(b"pw one", "$6$abcdefgh").unwrap();
        std::fs::write(
            &path,
            format!(
                "# devices\ncam1:{hash}\n\nprinter:{}:printer@example.net,*@*.example.net\n",
                sha512_crypt::hash(b"p2", "$6$xyz").unwrap()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            Users::load(&path)
                .unwrap_err()
                .contains("permissions 0640 must be 0600 or stricter")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let users = Users::load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert!(matches!(users.check("cam1", b"pw one"), Some(None)));
        assert!(users.check("cam1", b"pw two").is_none());
        let printer = users.check("printer", b"p2").unwrap().unwrap();
        assert_eq!(printer.len(), 2);
        assert!(crate::protocol::policy::allowed(
            &printer,
            b"printer@example.net"
        ));
        assert!(crate::protocol::policy::allowed(
            &printer,
            b"x@cams.example.net"
        ));
        assert!(!crate::protocol::policy::allowed(
            &printer,
            b"boss@example.net"
        ));
        assert!(users.check("nobody", b"p2").is_none());
        assert!(!format!("{users:?}").contains("$6$"));
        for bad in [
            "cam1\n",
            "cam1:plaintext\n",
            "a:$6$x$y\na:$6$x$y\n",
            ":$6$x$y\n",
            "a:$6$x$y:not-a-pattern\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                Users::load(&path).unwrap_err().contains(":1:") || bad.starts_with("a:"),
                "{bad:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn throttle_slows_down_repeat_failures() {
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let delays: Vec<u64> = (0..9).map(|_| t.failed(ip).as_secs()).collect();
        assert_eq!(delays, [0, 0, 1, 2, 3, 4, 5, 5, 5]);
        assert_eq!(
            t.failed("192.0.2.10".parse().unwrap()).as_secs(),
            0,
            "per address"
        );
        t.succeeded(ip);
        assert_eq!(t.failed(ip).as_secs(), 0);
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
