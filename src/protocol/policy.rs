//! Who may send what: sender and recipient patterns, the qualification of bare names
//! and the alias table, applied when a message is received.
//!
//! Everything here is built once from the configuration and only read afterwards;
//! the per-client limits that need state shared by every worker (connections per
//! address, message rate) live with the server (`crate::server::limits`).

use std::collections::HashMap;

use super::address::{self, Mailbox};

/// An address pattern of `allow_sender`, `allow_recipient` and the users file:
/// `user@domain`, `*@domain`, `*@*.domain` (subdomains only), `user@*`, `*`, or `<>`
/// (the null sender). Matching ignores case in both parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `<>`: the null reverse-path.
    Null,
    Address {
        /// `None` for `*`.
        local: Option<String>,
        domain: Domain,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    Any,
    Exact(String),
    /// `*.example.net`: any name below it, not the name itself.
    Below(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let bad = |why: &str| format!("bad address pattern '{s}': {why}");
        if s == "<>" {
            return Ok(Pattern::Null);
        }
        if s == "*" {
            return Ok(Pattern::Address {
                local: None,
                domain: Domain::Any,
            });
        }
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| bad("expected user@domain, *@domain, *@*.domain or <>"))?;
        let local = match local {
            "*" => None,
            "" => return Err(bad("empty user part")),
            l if l.contains('@') => return Err(bad("more than one @")),
            l => Some(l.to_ascii_lowercase()),
        };
        let domain = match domain {
            "*" => Domain::Any,
            d => {
                let (below, name) = match d.strip_prefix("*.") {
                    Some(name) => (true, name),
                    None => (false, d),
                };
                if name.contains('*') || address::check_domain(name.as_bytes(), true).is_err() {
                    return Err(bad("not a domain name"));
                }
                let name = name.to_ascii_lowercase();
                if below {
                    Domain::Below(name)
                } else {
                    Domain::Exact(name)
                }
            }
        };
        Ok(Pattern::Address { local, domain })
    }

    /// `addr` is a mailbox as received (`local@domain`), or empty for `<>`.
    pub fn matches(&self, addr: &[u8]) -> bool {
        let Pattern::Address { local, domain } = self else {
            return addr.is_empty();
        };
        let Some(at) = addr.iter().rposition(|&b| b == b'@') else {
            return false;
        };
        let (l, d) = (&addr[..at], &addr[at + 1..]);
        if local
            .as_ref()
            .is_some_and(|p| !p.as_bytes().eq_ignore_ascii_case(l))
        {
            return false;
        }
        match domain {
            Domain::Any => true,
            Domain::Exact(p) => p.as_bytes().eq_ignore_ascii_case(d),
            Domain::Below(p) => {
                d.len() > p.len() + 1
                    && d[d.len() - p.len() - 1] == b'.'
                    && p.as_bytes().eq_ignore_ascii_case(&d[d.len() - p.len()..])
            }
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Pattern::Address { local, domain } = self else {
            return f.write_str("<>");
        };
        if let (None, Domain::Any) = (local, domain) {
            return f.write_str("*");
        }
        f.write_str(local.as_deref().unwrap_or("*"))?;
        match domain {
            Domain::Any => f.write_str("@*"),
            Domain::Exact(d) => write!(f, "@{d}"),
            Domain::Below(d) => write!(f, "@*.{d}"),
        }
    }
}

/// The senders the users file lets one user send as.
pub type Senders = std::sync::Arc<[Pattern]>;

/// A comma- or space-separated list of patterns.
pub fn parse_patterns(s: &str) -> Result<Vec<Pattern>, String> {
    s.split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|p| !p.is_empty())
        .map(Pattern::parse)
        .collect()
}

/// True when `list` is empty (no restriction) or one of its patterns matches.
pub fn allowed(list: &[Pattern], addr: &[u8]) -> bool {
    list.is_empty() || list.iter().any(|p| p.matches(addr))
}

/// What the session checks at MAIL and RCPT, and how it qualifies and maps names.
#[derive(Debug, Default)]
pub struct Policy {
    pub senders: Vec<Pattern>,
    pub recipients: Vec<Pattern>,
    /// Appended to bare names (`root` becomes `root@qualify_domain`).
    pub qualify_domain: String,
    /// The box's own name: `name@hostname` is looked up in the aliases too.
    pub hostname: String,
    /// Lower-case local part to qualified addresses.
    pub aliases: HashMap<String, Vec<Mailbox>>,
    pub max_recipients: usize,
    /// 0: no limit.
    pub max_messages_per_connection: u32,
    /// `rate_limit` is set: the session asks the shell at each MAIL (`Step::CheckRate`).
    pub rate_limited: bool,
}

/// Why an address could not be qualified or mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    TooLong,
}

/// Qualifies a bare name: `root` becomes `root@domain`; an address with a domain,
/// and the null path, stay as they are. Used by the SMTP session and by sendmail.
pub fn qualify(addr: &[u8], domain: &str) -> Result<Mailbox, AddressError> {
    let mut out = Mailbox::new();
    let ok = if addr.is_empty() || addr.contains(&b'@') {
        out.extend_from_slice(addr).is_ok()
    } else {
        out.extend_from_slice(addr).is_ok()
            && out.push(b'@').is_ok()
            && out.extend_from_slice(domain.as_bytes()).is_ok()
    };
    if ok {
        Ok(out)
    } else {
        Err(AddressError::TooLong)
    }
}

impl Policy {
    /// No rules and no limits beyond RFC 5321's: bare names get `domain`.
    pub fn open(domain: &str) -> Policy {
        Policy {
            qualify_domain: domain.to_string(),
            hostname: domain.to_string(),
            max_recipients: super::limits::RECIPIENTS,
            ..Policy::default()
        }
    }

    /// `root` becomes `root@qualify_domain`; anything with a domain stays as it is.
    pub fn qualify(&self, addr: &[u8]) -> Result<Mailbox, AddressError> {
        qualify(addr, &self.qualify_domain)
    }

    /// The addresses a qualified recipient stands for: its alias targets when its
    /// local part is an alias and its domain is this box's (`hostname` or
    /// `qualify_domain`), else itself (`None`).
    pub fn alias(&self, addr: &[u8]) -> Option<&[Mailbox]> {
        if self.aliases.is_empty() {
            return None;
        }
        let at = addr.iter().rposition(|&b| b == b'@')?;
        let (local, domain) = (&addr[..at], &addr[at + 1..]);
        let ours = domain.eq_ignore_ascii_case(self.qualify_domain.as_bytes())
            || domain.eq_ignore_ascii_case(self.hostname.as_bytes());
        if !ours {
            return None;
        }
        let local = core::str::from_utf8(local).ok()?.to_ascii_lowercase();
        self.aliases.get(&local).map(|v| &v[..])
    }
}

impl Policy {
    /// The addresses a qualified recipient stands for (its alias targets, or itself),
    /// or the first of them that `allow_recipient` refuses. The SMTP session and
    /// sendmail both ask this.
    pub fn recipient<'a>(&'a self, addr: &'a Mailbox) -> Result<&'a [Mailbox], &'a Mailbox> {
        let targets = self.alias(addr).unwrap_or(core::slice::from_ref(addr));
        match targets.iter().find(|t| !allowed(&self.recipients, t)) {
            Some(refused) => Err(refused),
            None => Ok(targets),
        }
    }
}

/// One `alias` line or aliases-file entry: `LOCAL ADDR[,ADDR...]` (a colon after
/// LOCAL, as in /etc/aliases, is accepted).
pub fn parse_alias(s: &str) -> Result<(String, Vec<Mailbox>), String> {
    let s = s.trim();
    let split = s
        .find(|c: char| c == ':' || c.is_ascii_whitespace())
        .ok_or_else(|| format!("'{s}': expected NAME ADDRESS[,ADDRESS...]"))?;
    let (name, rest) = (&s[..split], s[split + 1..].trim());
    let name = name.trim();
    if name.is_empty() || name.contains('@') {
        return Err(format!(
            "'{name}': an alias name is a bare local name, like root"
        ));
    }
    let mut targets = Vec::new();
    for t in rest
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        let t = t.trim_start_matches('<').trim_end_matches('>');
        address::check_mailbox(t.as_bytes(), true).map_err(|_| {
            format!("'{t}': an alias target must be a full address, like admin@example.net")
        })?;
        targets.push(Mailbox::from_slice(t.as_bytes()).map_err(|_| format!("'{t}': too long"))?);
    }
    if targets.is_empty() {
        return Err(format!("alias '{name}' has no address"));
    }
    Ok((name.to_ascii_lowercase(), targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_table() {
        // A '*' inside a user part is a character of it (RFC 5322 atext), not a wildcard.
        assert!(Pattern::parse("a*b@x.org").unwrap().matches(b"a*b@x.org"));
        assert!(!Pattern::parse("a*b@x.org").unwrap().matches(b"axb@x.org"));
        // One @ only: `*@@example.com` is a typo, not the user `*@`.
        for bad in ["*@@example.com", "a@b@example.com", "@@x.org"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        let cases: &[(&str, &str, bool)] = &[
            ("cam1@example.net", "cam1@example.net", true),
            ("cam1@example.net", "CAM1@Example.NET", true),
            ("cam1@example.net", "cam2@example.net", false),
            ("cam1@example.net", "cam1@example.net.evil", false),
            ("*@example.net", "anyone@example.net", true),
            ("*@example.net", "anyone@sub.example.net", false),
            ("*@example.net", "anyone@badexample.net", false),
            ("*@*.example.net", "a@cams.example.net", true),
            ("*@*.example.net", "a@x.cams.example.net", true),
            ("*@*.example.net", "a@example.net", false),
            ("*@*.example.net", "a@badexample.net", false),
            ("*@*.example.net", "a@.example.net", false),
            ("root@*", "root@anything.org", true),
            ("root@*", "admin@anything.org", false),
            ("*", "a@b.c", true),
            ("*", "", false),
            ("<>", "", true),
            ("<>", "a@b.c", false),
            ("*@example.net", "", false),
            ("*@example.net", "example.net", false),
            // The last @ separates the domain (a quoted local part may hold one).
            ("*@example.net", "\"a@evil.org\"@example.net", true),
            ("*@evil.org", "\"a@evil.org\"@example.net", false),
        ];
        for (pattern, addr, want) in cases {
            let p = Pattern::parse(pattern).unwrap();
            assert_eq!(p.matches(addr.as_bytes()), *want, "{pattern} ~ {addr}");
            assert_eq!(&p.to_string(), pattern, "display round-trips");
        }
        for bad in ["", "@x.org", "a@", "a@-x.org", "a@*x.org", "noat"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} must not parse");
        }
        assert_eq!(
            parse_patterns("a@b.c, *@d.e  <>").unwrap(),
            vec![
                Pattern::parse("a@b.c").unwrap(),
                Pattern::parse("*@d.e").unwrap(),
                Pattern::Null
            ]
        );
        assert!(allowed(&[], b"x@y.z"));
        assert!(!allowed(&[Pattern::Null], b"x@y.z"));
    }

    #[test]
    fn qualify_and_aliases() {
        let mut p = Policy {
            qualify_domain: "example.net".into(),
            hostname: "router.lan".into(),
            ..Policy::default()
        };
        for (name, targets) in [
            parse_alias("root admin@example.org").unwrap(),
            parse_alias("Ops: <a@example.org>, b@example.org").unwrap(),
        ] {
            p.aliases.insert(name, targets);
        }
        assert_eq!(&p.qualify(b"root").unwrap()[..], b"root@example.net");
        assert_eq!(&p.qualify(b"a@b.c").unwrap()[..], b"a@b.c");
        assert_eq!(&p.qualify(b"").unwrap()[..], b"");
        assert_eq!(p.qualify(&[b'a'; 250]), Err(AddressError::TooLong));
        let one = |a: &[u8]| {
            p.alias(a)
                .map(|v| v.iter().map(|m| m.to_vec()).collect::<Vec<_>>())
        };
        assert_eq!(
            one(b"root@example.net"),
            Some(vec![b"admin@example.org".to_vec()])
        );
        assert_eq!(
            one(b"ROOT@router.lan"),
            Some(vec![b"admin@example.org".to_vec()])
        );
        assert_eq!(
            one(b"ops@example.net"),
            Some(vec![b"a@example.org".to_vec(), b"b@example.org".to_vec()])
        );
        assert_eq!(
            one(b"root@elsewhere.org"),
            None,
            "other domains are not ours"
        );
        assert_eq!(one(b"nobody@example.net"), None);
        for bad in ["root", "root@x.org a@b.c", "root notanaddress", "x: a@"] {
            assert!(parse_alias(bad).is_err(), "{bad}");
        }
    }
}
