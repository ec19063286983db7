//! The configuration file: one `key value` per line, `#` comments, list keys repeat.
//!
//! Every problem is reported as `FILE:LINE: what is wrong` (or `FILE: ...` for a key
//! that is missing altogether) and makes the program exit with 78 (EX_CONFIG).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to do with a bare CR or LF in message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewline {
    /// Write it as CRLF and accept the message (the default).
    Normalize,
    /// Refuse the message with 550 5.6.0.
    Reject,
}

/// What a `250` after DATA promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The message is in the spool, fsynced, before the client hears `250` (the default).
    Durable,
    /// No spool: the message streams to the smarthost as the client sends it, and the
    /// client gets the smarthost's reply; the client's own retry is the durability.
    Passthrough,
}

/// How the relay secures its connection to the smarthost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarthostTls {
    /// STARTTLS is required (RFC 3207); without it nothing is sent.
    Starttls,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
    /// Plain TCP.
    None,
}

impl SmarthostTls {
    fn name(self) -> &'static str {
        match self {
            SmarthostTls::Starttls => "starttls",
            SmarthostTls::Implicit => "implicit",
            SmarthostTls::None => "none",
        }
    }
}

/// An IP network, `ADDR/BITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or network (e.g. 192.168.1.0/24)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, bits })
    }

    /// IPv4-mapped IPv6 clients (from a dual-stack listener) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// A `listen` line: where, and whether TLS starts with the first byte (port 465 style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.addr, if self.tls { " tls" } else { "" })
    }
}

/// The upstream smarthost, `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smarthost {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Smarthost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: Vec<Listen>,
    pub hostname: String,
    pub allow: Vec<Cidr>,
    pub spool: PathBuf,
    pub smarthost: Smarthost,
    pub workers: usize,
    pub max_connections: usize,
    pub max_message_size: u64,
    pub bare_newline: BareNewline,
    pub mode: Mode,
    pub max_hops: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub max_queue_lifetime: Duration,
    pub smarthost_connect_timeout: Duration,
    /// Overrides every reply wait of RFC 5321 §4.5.3.2 when set.
    pub smarthost_timeout: Option<Duration>,
    pub smarthost_idle: Duration,
    pub shutdown_grace: Duration,
    pub smarthost_tls: SmarthostTls,
    pub smarthost_ca_file: Option<PathBuf>,
    /// SHA-256 of the smarthost's certificate; when set, it alone decides trust.
    pub smarthost_fingerprint: Option<[u8; 32]>,
    pub smarthost_tls_verify: bool,
    pub smarthost_user: Option<String>,
    /// Only the path: the relay thread reads the secret itself, so no other thread
    /// ever holds it. Its permissions are checked when the file is loaded.
    pub smarthost_password_file: Option<PathBuf>,
    pub smarthost_auth_plaintext: bool,
    /// The server certificate chain and key for STARTTLS and `tls` listeners.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `user:$6$...` lines; AUTH is offered to devices when set.
    pub auth_users: Option<PathBuf>,
    /// Offer AUTH without TLS to clients connected to a loopback address.
    pub auth_plaintext: bool,
    /// Everybody must authenticate, also inside `allow` networks.
    pub require_auth: bool,
    pub log: crate::logger::Target,
    pub syslog_socket: PathBuf,
    /// Started as root: become this user after binding the listeners.
    pub user: Option<String>,
    /// The envelope sender sendmail uses without -f (default: the caller at hostname).
    pub sendmail_from: Option<String>,
    /// Envelope senders clients may use (empty: any).
    pub allow_sender: Vec<crate::protocol::policy::Pattern>,
    /// Recipients clients may send to, after aliases (empty: any).
    pub allow_recipient: Vec<crate::protocol::policy::Pattern>,
    /// Replaces every non-null envelope sender when a message is sent upstream.
    pub rewrite_sender: Option<String>,
    /// Replaces the address in the From: header when a message is sent upstream.
    pub rewrite_from: Option<String>,
    /// Appended to bare names; `None`: the hostname.
    pub qualify_domain: Option<String>,
    /// `alias NAME ADDR[,ADDR]` lines.
    pub alias: Vec<(String, Vec<crate::protocol::address::Mailbox>)>,
    /// An aliases file (`name: addr, addr` lines).
    pub aliases: Option<PathBuf>,
    /// `None`: half the workers (at least 1), so one address cannot hold them all.
    pub max_connections_per_ip: Option<u32>,
    pub max_recipients: usize,
    /// 0: no limit.
    pub max_messages_per_connection: u32,
    pub rate_limit: Option<crate::server::limits::Rate>,
    /// Client networks `max_connections_per_ip` does not apply to (default loopback:
    /// the box itself, as Postfix exempts `mynetworks`).
    pub connection_limit_exempt: Vec<Cidr>,
    /// Add `Date:` and `Message-ID:` to a message that has none.
    pub add_missing_headers: bool,
    /// Octets per second a client must keep up in DATA: each read extends the DATA
    /// deadline by its size at this rate, never past `data_timeout` from now. 0: off.
    pub min_data_rate: u64,
    /// Each key given, with the line it was first given on, for errors found after
    /// parsing (files that cannot be read, a user that does not exist).
    pub lines: Vec<(&'static str, usize)>,
}

/// Every key, for `--check`, the README and "did you mean".
pub const KEYS: &[&str] = &[
    "listen",
    "hostname",
    "allow",
    "spool",
    "smarthost",
    "workers",
    "max_connections",
    "max_message_size",
    "bare_newline",
    "mode",
    "max_hops",
    "command_timeout",
    "data_timeout",
    "retry_min",
    "retry_max",
    "max_queue_lifetime",
    "smarthost_connect_timeout",
    "smarthost_timeout",
    "smarthost_idle",
    "shutdown_grace",
    "smarthost_tls",
    "smarthost_ca_file",
    "smarthost_fingerprint",
    "smarthost_tls_verify",
    "smarthost_user",
    "smarthost_password_file",
    "smarthost_auth_plaintext",
    "tls_cert",
    "tls_key",
    "auth_users",
    "auth_plaintext",
    "require_auth",
    "log",
    "syslog_socket",
    "user",
    "sendmail_from",
    "allow_sender",
    "allow_recipient",
    "rewrite_sender",
    "rewrite_from",
    "qualify_domain",
    "alias",
    "aliases",
    "max_connections_per_ip",
    "max_recipients",
    "max_messages_per_connection",
    "rate_limit",
    "connection_limit_exempt",
    "add_missing_headers",
    "min_data_rate",
];

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let text =
            String::from_utf8(text).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, String> {
        let file = path.display();
        let mut c = Config {
            path: path.to_path_buf(),
            listen: Vec::new(),
            hostname: system_hostname(),
            allow: Vec::new(),
            spool: PathBuf::from("/var/spool/smtp-relayd"),
            smarthost: Smarthost {
                host: String::new(),
                port: 0,
            },
            workers: 4,
            max_connections: 64,
            max_message_size: 10 * 1024 * 1024,
            bare_newline: BareNewline::Normalize,
            mode: Mode::Durable,
            // RFC 5321 §6.3: the threshold SHOULD normally be at least 100.
            max_hops: 100,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_queue_lifetime: Duration::from_secs(5 * 86400),
            smarthost_connect_timeout: Duration::from_secs(30),
            smarthost_timeout: None,
            smarthost_idle: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            smarthost_tls: SmarthostTls::Starttls,
            smarthost_ca_file: None,
            smarthost_fingerprint: None,
            smarthost_tls_verify: true,
            smarthost_user: None,
            smarthost_password_file: None,
            smarthost_auth_plaintext: false,
            tls_cert: None,
            tls_key: None,
            auth_users: None,
            auth_plaintext: false,
            require_auth: false,
            log: crate::logger::Target::Stderr,
            syslog_socket: PathBuf::from("/dev/log"),
            user: None,
            sendmail_from: None,
            allow_sender: Vec::new(),
            allow_recipient: Vec::new(),
            rewrite_sender: None,
            rewrite_from: None,
            qualify_domain: None,
            alias: Vec::new(),
            aliases: None,
            max_connections_per_ip: None,
            max_recipients: crate::protocol::limits::RECIPIENTS,
            max_messages_per_connection: 1000,
            rate_limit: Some(crate::server::limits::Rate {
                messages: 1000,
                per: Duration::from_secs(600),
            }),
            connection_limit_exempt: Vec::new(),
            add_missing_headers: true,
            min_data_rate: 500,
            lines: Vec::new(),
        };
        let mut exempt_given = false;
        let mut seen: Vec<(&str, usize)> = Vec::new();
        let mut allow_given = false;
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = raw.split_once('#').map_or(raw, |(a, _)| a).trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            let err = |what: String| format!("{file}:{line_no}: {what}");
            let Some(&key) = KEYS.iter().find(|k| **k == key) else {
                let hint = KEYS
                    .iter()
                    .min_by_key(|k| edit_distance(k, key))
                    .filter(|k| edit_distance(k, key) <= 2);
                return Err(err(match hint {
                    Some(h) => format!("unknown key '{key}' (did you mean '{h}'?)"),
                    None => format!("unknown key '{key}'"),
                }));
            };
            if value.is_empty() {
                return Err(err(format!("'{key}' needs a value")));
            }
            let repeatable = matches!(
                key,
                "listen"
                    | "allow"
                    | "allow_sender"
                    | "allow_recipient"
                    | "alias"
                    | "connection_limit_exempt"
            );
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key).filter(|_| !repeatable) {
                return Err(err(format!(
                    "'{key}' given again (first on line {first}); it takes one value"
                )));
            }
            seen.push((key, line_no));
            match key {
                "listen" => {
                    let l = parse_listen(value).map_err(err)?;
                    if let Some(same) = c.listen.iter().position(|o| o.addr == l.addr) {
                        let first = seen.iter().filter(|(k, _)| *k == "listen").nth(same);
                        return Err(err(format!(
                            "listen {} given twice (first on line {})",
                            l.addr,
                            first.map_or(0, |(_, n)| *n)
                        )));
                    }
                    c.listen.push(l);
                }
                "hostname" => {
                    crate::protocol::address::check_domain(value.as_bytes(), false)
                        .map_err(|_| err(format!("hostname '{value}' is not a domain name")))?;
                    c.hostname = value.to_string();
                }
                "allow" => {
                    allow_given = true;
                    if value != "none" {
                        c.allow.push(Cidr::parse(value).map_err(err)?);
                    }
                }
                "spool" => {
                    if !value.starts_with('/') {
                        return Err(err(format!("spool '{value}' must be an absolute path")));
                    }
                    c.spool = PathBuf::from(value);
                }
                "smarthost" => c.smarthost = parse_smarthost(value).map_err(err)?,
                "workers" => c.workers = parse_count(value, 1, 1024).map_err(err)?,
                "max_connections" => {
                    c.max_connections = parse_count(value, 1, 100_000).map_err(err)?
                }
                "max_message_size" => c.max_message_size = parse_size(value).map_err(err)?,
                "bare_newline" => {
                    c.bare_newline = match value {
                        "normalize" => BareNewline::Normalize,
                        "reject" => BareNewline::Reject,
                        _ => {
                            return Err(err(format!(
                                "bare_newline must be 'normalize' or 'reject', not '{value}'"
                            )));
                        }
                    }
                }
                "mode" => {
                    c.mode = match value {
                        "durable" => Mode::Durable,
                        "passthrough" => Mode::Passthrough,
                        _ => {
                            return Err(err(format!(
                                "mode must be 'durable' or 'passthrough', not '{value}'"
                            )));
                        }
                    }
                }
                "max_hops" => c.max_hops = parse_count(value, 1, 1000).map_err(err)? as u32,
                "command_timeout" => c.command_timeout = parse_duration(value).map_err(err)?,
                "data_timeout" => c.data_timeout = parse_duration(value).map_err(err)?,
                "retry_min" => c.retry_min = parse_duration(value).map_err(err)?,
                "retry_max" => c.retry_max = parse_duration(value).map_err(err)?,
                "max_queue_lifetime" => {
                    c.max_queue_lifetime = parse_duration(value).map_err(err)?
                }
                "smarthost_connect_timeout" => {
                    c.smarthost_connect_timeout = parse_duration(value).map_err(err)?
                }
                "smarthost_timeout" => {
                    c.smarthost_timeout = Some(parse_duration(value).map_err(err)?)
                }
                "smarthost_idle" => {
                    c.smarthost_idle = parse_duration_or_zero(value).map_err(err)?
                }
                "shutdown_grace" => {
                    c.shutdown_grace = parse_duration_or_zero(value).map_err(err)?
                }
                "smarthost_tls" => {
                    c.smarthost_tls = match value {
                        "starttls" => SmarthostTls::Starttls,
                        "implicit" => SmarthostTls::Implicit,
                        "none" => SmarthostTls::None,
                        _ => {
                            return Err(err(format!(
                                "smarthost_tls must be 'starttls', 'implicit' or 'none', not '{value}'"
                            )));
                        }
                    }
                }
                "smarthost_ca_file" => c.smarthost_ca_file = Some(absolute(value).map_err(err)?),
                "smarthost_fingerprint" => {
                    c.smarthost_fingerprint = Some(parse_fingerprint(value).map_err(err)?)
                }
                "smarthost_tls_verify" => {
                    c.smarthost_tls_verify = parse_yes_no(key, value).map_err(err)?
                }
                "smarthost_user" => c.smarthost_user = Some(value.to_string()),
                "smarthost_password_file" => {
                    let path = absolute(value).map_err(err)?;
                    check_secret_file(&path).map_err(|e| {
                        format!("{e} (smarthost_password_file on {file}:{line_no})")
                    })?;
                    c.smarthost_password_file = Some(path);
                }
                "auth_users" => {
                    let path = absolute(value).map_err(err)?;
                    check_secret_file(&path)
                        .map_err(|e| format!("{e} (auth_users on {file}:{line_no})"))?;
                    c.auth_users = Some(path);
                }
                "auth_plaintext" => c.auth_plaintext = parse_yes_no(key, value).map_err(err)?,
                "require_auth" => c.require_auth = parse_yes_no(key, value).map_err(err)?,
                "log" => {
                    c.log = match value {
                        "stderr" => crate::logger::Target::Stderr,
                        "syslog" => crate::logger::Target::Syslog,
                        "both" => crate::logger::Target::Both,
                        _ => {
                            return Err(err(format!(
                                "log must be 'stderr', 'syslog' or 'both', not '{value}'"
                            )));
                        }
                    }
                }
                "syslog_socket" => c.syslog_socket = absolute(value).map_err(err)?,
                "user" => c.user = Some(value.to_string()),
                "sendmail_from" => {
                    crate::protocol::address::check_mailbox(value.as_bytes(), false)
                        .map_err(|_| err(format!("sendmail_from '{value}' is not an address")))?;
                    c.sendmail_from = Some(value.to_string());
                }
                "allow_sender" => c
                    .allow_sender
                    .extend(crate::protocol::policy::parse_patterns(value).map_err(err)?),
                "allow_recipient" => c
                    .allow_recipient
                    .extend(crate::protocol::policy::parse_patterns(value).map_err(err)?),
                "rewrite_sender" | "rewrite_from" => {
                    crate::protocol::address::check_mailbox(value.as_bytes(), false)
                        .map_err(|_| err(format!("{key} '{value}' is not an address")))?;
                    if key == "rewrite_sender" {
                        c.rewrite_sender = Some(value.to_string());
                    } else {
                        c.rewrite_from = Some(value.to_string());
                    }
                }
                "qualify_domain" => {
                    crate::protocol::address::check_domain(value.as_bytes(), false).map_err(
                        |_| err(format!("qualify_domain '{value}' is not a domain name")),
                    )?;
                    c.qualify_domain = Some(value.to_ascii_lowercase());
                }
                "alias" => {
                    let (name, targets) =
                        crate::protocol::policy::parse_alias(value).map_err(err)?;
                    if c.alias.iter().any(|(n, _)| *n == name) {
                        return Err(err(format!("alias '{name}' given twice")));
                    }
                    c.alias.push((name, targets));
                }
                "aliases" => c.aliases = Some(absolute(value).map_err(err)?),
                "max_connections_per_ip" => {
                    c.max_connections_per_ip =
                        Some(parse_count(value, 1, 100_000).map_err(err)? as u32)
                }
                "max_recipients" => {
                    c.max_recipients =
                        parse_count(value, 1, crate::protocol::limits::RECIPIENTS).map_err(err)?
                }
                "max_messages_per_connection" => {
                    c.max_messages_per_connection = if value == "none" {
                        0
                    } else {
                        parse_count(value, 1, 1_000_000).map_err(err)? as u32
                    }
                }
                "rate_limit" => {
                    c.rate_limit = crate::server::limits::Rate::parse(value).map_err(err)?
                }
                "connection_limit_exempt" => {
                    exempt_given = true;
                    if value != "none" {
                        c.connection_limit_exempt
                            .push(Cidr::parse(value).map_err(err)?);
                    }
                }
                "add_missing_headers" => {
                    c.add_missing_headers = parse_yes_no(key, value).map_err(err)?
                }
                "min_data_rate" => {
                    c.min_data_rate = if value == "none" {
                        0
                    } else {
                        parse_size(value).map_err(err)?
                    }
                }
                "tls_cert" => c.tls_cert = Some(absolute(value).map_err(err)?),
                "tls_key" => c.tls_key = Some(absolute(value).map_err(err)?),
                "smarthost_auth_plaintext" => {
                    c.smarthost_auth_plaintext = parse_yes_no(key, value).map_err(err)?
                }
                _ => unreachable!("every key in KEYS is handled"),
            }
        }
        let line_of = |key: &str| seen.iter().find(|(k, _)| *k == key).map_or(0, |(_, l)| *l);
        if c.listen.is_empty() {
            c.listen.push(Listen {
                addr: SocketAddr::from(([127, 0, 0, 1], 25)),
                tls: false,
            });
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            let (have, need) = if c.tls_cert.is_some() {
                ("tls_cert", "tls_key")
            } else {
                ("tls_key", "tls_cert")
            };
            return Err(format!("{file}:{}: {have} needs {need}", line_of(have)));
        }
        if c.tls_cert.is_none() && c.listen.iter().any(|l| l.tls) {
            return Err(format!(
                "{file}:{}: a 'tls' listener needs tls_cert and tls_key",
                line_of("listen")
            ));
        }
        if c.require_auth && c.auth_users.is_none() {
            return Err(format!(
                "{file}:{}: require_auth needs auth_users",
                line_of("require_auth")
            ));
        }
        if c.auth_users.is_some() && c.tls_cert.is_none() && !c.auth_plaintext {
            return Err(format!(
                "{file}:{}: AUTH is only offered over TLS: set tls_cert and tls_key \
                 (or auth_plaintext yes, for clients on loopback)",
                line_of("auth_users")
            ));
        }
        if cfg!(not(feature = "tls")) && c.auth_users.is_some() {
            return Err(format!(
                "{file}:{}: this smtp-relayd was built without TLS and AUTH",
                line_of("auth_users")
            ));
        }
        if cfg!(not(feature = "tls")) && c.tls_cert.is_some() {
            return Err(format!(
                "{file}:{}: this smtp-relayd was built without TLS",
                line_of("tls_cert")
            ));
        }
        if !exempt_given {
            c.connection_limit_exempt = vec![
                Cidr::parse("127.0.0.0/8").unwrap(),
                Cidr::parse("::1").unwrap(),
            ];
        }
        if !allow_given {
            c.allow = vec![
                Cidr::parse("127.0.0.0/8").unwrap(),
                Cidr::parse("::1").unwrap(),
            ];
        }
        if c.smarthost.host.is_empty() {
            return Err(format!(
                "{file}: 'smarthost HOST:PORT' is required (the upstream server mail is relayed to)"
            ));
        }
        match (&c.smarthost_user, &c.smarthost_password_file) {
            (Some(_), None) => {
                return Err(format!(
                    "{file}:{}: smarthost_user needs smarthost_password_file",
                    line_of("smarthost_user")
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{file}:{}: smarthost_password_file needs smarthost_user",
                    line_of("smarthost_password_file")
                ));
            }
            _ => {}
        }
        if c.smarthost_user.is_some()
            && c.smarthost_tls == SmarthostTls::None
            && !c.smarthost_auth_plaintext
        {
            return Err(format!(
                "{file}:{}: with smarthost_tls none the password would cross the network in clear; \
                 use smarthost_tls starttls or implicit (or, on a trusted link, smarthost_auth_plaintext yes)",
                line_of("smarthost_user")
            ));
        }
        if cfg!(not(feature = "tls")) && c.smarthost_tls != SmarthostTls::None {
            return Err(format!(
                "{file}:{}: this smtp-relayd was built without TLS; set 'smarthost_tls none'",
                line_of("smarthost_tls")
            ));
        }
        if c.retry_max < c.retry_min {
            let line = seen
                .iter()
                .find(|(k, _)| *k == "retry_max" || *k == "retry_min")
                .map_or(0, |(_, l)| *l);
            return Err(format!(
                "{file}:{line}: retry_max must not be less than retry_min"
            ));
        }
        if c.max_connections < c.workers {
            let line = seen
                .iter()
                .find(|(k, _)| *k == "max_connections")
                .map_or(0, |(_, l)| *l);
            return Err(format!(
                "{file}:{line}: max_connections ({}) must be at least workers ({})",
                c.max_connections, c.workers
            ));
        }
        c.lines = seen;
        Ok(c)
    }

    /// The effective settings, in the file's own syntax, for `--check`.
    pub fn effective(&self) -> String {
        let mut s = String::new();
        let d = |d: &Duration| format!("{}s", d.as_secs());
        for l in &self.listen {
            let _ = writeln!(s, "listen {l}");
        }
        let _ = writeln!(s, "hostname {}", self.hostname);
        if self.allow.is_empty() {
            let _ = writeln!(s, "allow none");
        }
        for a in &self.allow {
            let _ = writeln!(s, "allow {a}");
        }
        let _ = writeln!(s, "spool {}", self.spool.display());
        let _ = writeln!(s, "smarthost {}", self.smarthost);
        let _ = writeln!(s, "workers {}", self.workers);
        let _ = writeln!(s, "max_connections {}", self.max_connections);
        let _ = writeln!(s, "max_message_size {}", self.max_message_size);
        let _ = writeln!(
            s,
            "bare_newline {}",
            if self.bare_newline == BareNewline::Reject {
                "reject"
            } else {
                "normalize"
            }
        );
        let _ = writeln!(
            s,
            "mode {}",
            if self.mode == Mode::Passthrough {
                "passthrough"
            } else {
                "durable"
            }
        );
        let _ = writeln!(s, "max_hops {}", self.max_hops);
        let _ = writeln!(
            s,
            "add_missing_headers {}",
            if self.add_missing_headers {
                "yes"
            } else {
                "no"
            }
        );
        match self.min_data_rate {
            0 => s.push_str("min_data_rate none\n"),
            r => {
                let _ = writeln!(s, "min_data_rate {r}");
            }
        }
        let _ = writeln!(s, "command_timeout {}", d(&self.command_timeout));
        let _ = writeln!(s, "data_timeout {}", d(&self.data_timeout));
        let _ = writeln!(s, "retry_min {}", d(&self.retry_min));
        let _ = writeln!(s, "retry_max {}", d(&self.retry_max));
        let _ = writeln!(s, "max_queue_lifetime {}", d(&self.max_queue_lifetime));
        let _ = writeln!(
            s,
            "smarthost_connect_timeout {}",
            d(&self.smarthost_connect_timeout)
        );
        match &self.smarthost_timeout {
            Some(t) => {
                let _ = writeln!(s, "smarthost_timeout {}", d(t));
            }
            None => s.push_str("# smarthost_timeout unset: RFC 5321 4.5.3.2 (5m per command, 10m after the data)\n"),
        }
        let _ = writeln!(s, "smarthost_tls {}", self.smarthost_tls.name());
        if let Some(p) = &self.smarthost_ca_file {
            let _ = writeln!(s, "smarthost_ca_file {}", p.display());
        }
        if let Some(fp) = &self.smarthost_fingerprint {
            let hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(s, "smarthost_fingerprint sha256:{hex}");
        }
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(
            s,
            "smarthost_tls_verify {}",
            yes_no(self.smarthost_tls_verify)
        );
        if let Some(u) = &self.smarthost_user {
            let _ = writeln!(s, "smarthost_user {u}");
        }
        if let Some(p) = &self.smarthost_password_file {
            let _ = writeln!(
                s,
                "smarthost_password_file {}  # contents not shown",
                p.display()
            );
        }
        let _ = writeln!(
            s,
            "smarthost_auth_plaintext {}",
            yes_no(self.smarthost_auth_plaintext)
        );
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let _ = writeln!(s, "tls_cert {}", cert.display());
            let _ = writeln!(s, "tls_key {}", key.display());
        }
        if let Some(p) = &self.auth_users {
            let _ = writeln!(s, "auth_users {}", p.display());
        }
        let _ = writeln!(s, "auth_plaintext {}", yes_no(self.auth_plaintext));
        let _ = writeln!(s, "require_auth {}", yes_no(self.require_auth));
        let log = match self.log {
            crate::logger::Target::Stderr => "stderr",
            crate::logger::Target::Syslog => "syslog",
            crate::logger::Target::Both => "both",
        };
        if let Some(u) = &self.user {
            let _ = writeln!(s, "user {u}");
        }
        if let Some(f) = &self.sendmail_from {
            let _ = writeln!(s, "sendmail_from {f}");
        }
        for p in &self.allow_sender {
            let _ = writeln!(s, "allow_sender {p}");
        }
        for p in &self.allow_recipient {
            let _ = writeln!(s, "allow_recipient {p}");
        }
        if let Some(a) = &self.rewrite_sender {
            let _ = writeln!(s, "rewrite_sender {a}");
        }
        if let Some(a) = &self.rewrite_from {
            let _ = writeln!(s, "rewrite_from {a}");
        }
        let _ = writeln!(s, "qualify_domain {}", self.qualify_domain());
        for (name, targets) in &self.alias {
            let t: Vec<String> = targets
                .iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect();
            let _ = writeln!(s, "alias {name} {}", t.join(","));
        }
        if let Some(p) = &self.aliases {
            let _ = writeln!(s, "aliases {}", p.display());
        }
        let _ = writeln!(
            s,
            "max_connections_per_ip {}",
            self.max_connections_per_ip()
        );
        if self.connection_limit_exempt.is_empty() {
            s.push_str("connection_limit_exempt none\n");
        }
        for a in &self.connection_limit_exempt {
            let _ = writeln!(s, "connection_limit_exempt {a}");
        }
        let _ = writeln!(s, "max_recipients {}", self.max_recipients);
        match self.max_messages_per_connection {
            0 => s.push_str("max_messages_per_connection none\n"),
            n => {
                let _ = writeln!(s, "max_messages_per_connection {n}");
            }
        }
        match &self.rate_limit {
            Some(r) => {
                let _ = writeln!(s, "rate_limit {r}");
            }
            None => s.push_str("rate_limit none\n"),
        }
        let _ = writeln!(s, "log {log}");
        let _ = writeln!(s, "syslog_socket {}", self.syslog_socket.display());
        let _ = writeln!(s, "smarthost_idle {}", d(&self.smarthost_idle));
        let _ = writeln!(s, "shutdown_grace {}", d(&self.shutdown_grace));
        s
    }

    /// The domain bare names get: `qualify_domain`, else the hostname.
    pub fn qualify_domain(&self) -> &str {
        self.qualify_domain.as_deref().unwrap_or(&self.hostname)
    }

    /// `max_connections_per_ip`, or half the workers (at least one) when unset.
    pub fn max_connections_per_ip(&self) -> u32 {
        self.max_connections_per_ip
            .unwrap_or_else(|| (self.workers as u32 / 2).max(1))
    }

    /// The policy the sessions apply, with the aliases file read.
    pub fn policy(&self) -> Result<crate::protocol::policy::Policy, String> {
        let mut aliases = std::collections::HashMap::new();
        let from_file = match &self.aliases {
            Some(p) => load_aliases(p)?,
            None => Vec::new(),
        };
        // `alias` lines win over the file.
        for (name, targets) in from_file.into_iter().chain(self.alias.iter().cloned()) {
            aliases.insert(name, targets);
        }
        Ok(crate::protocol::policy::Policy {
            senders: self.allow_sender.clone(),
            recipients: self.allow_recipient.clone(),
            qualify_domain: self.qualify_domain().to_string(),
            hostname: self.hostname.to_ascii_lowercase(),
            aliases,
            max_recipients: self.max_recipients,
            max_messages_per_connection: self.max_messages_per_connection,
            rate_limited: self.rate_limit.is_some(),
        })
    }

    /// The line `key` was first given on (0: not given).
    pub fn line_of(&self, key: &str) -> usize {
        self.lines
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, l)| *l)
    }

    /// `FILE:LINE: what` for a problem with `key`, found after parsing.
    pub fn error_at(&self, key: &str, what: &str) -> String {
        format!("{}:{}: {what}", self.path.display(), self.line_of(key))
    }

    pub fn relay_allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
    }
}

/// `ADDR:PORT`, optionally followed by `tls` (implicit TLS).
fn parse_listen(v: &str) -> Result<Listen, String> {
    let (addr, tls) = match v.split_once(char::is_whitespace) {
        Some((a, o)) if o.trim() == "tls" => (a, true),
        Some((_, other)) => {
            return Err(format!(
                "listen: unknown option '{}' (only 'tls')",
                other.trim()
            ));
        }
        None => (v, false),
    };
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| format!("listen '{addr}' is not ADDR:PORT (e.g. 0.0.0.0:25 or [::1]:25)"))?;
    Ok(Listen { addr, tls })
}

fn parse_smarthost(v: &str) -> Result<Smarthost, String> {
    let bad = || {
        format!("smarthost '{v}' is not HOST:PORT (e.g. smtp.example.com:587 or [2001:db8::1]:25)")
    };
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (h, p)
    } else {
        v.rsplit_once(':').ok_or_else(bad)?
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(bad)?;
    let host_ok = host.parse::<IpAddr>().is_ok()
        || crate::protocol::address::check_domain(host.as_bytes(), false).is_ok();
    if !host_ok {
        return Err(bad());
    }
    Ok(Smarthost {
        host: host.to_string(),
        port,
    })
}

fn absolute(v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err(format!("'{v}' must be an absolute path"))
    }
}

fn parse_yes_no(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("{key} must be 'yes' or 'no', not '{v}'")),
    }
}

/// `sha256:HEX`, the hex with or without colons between bytes (as openssl prints it).
fn parse_fingerprint(v: &str) -> Result<[u8; 32], String> {
    let bad = || {
        format!(
            "'{v}' is not sha256:HEX (64 hex digits, e.g. from 'openssl x509 -noout -fingerprint -sha256')"
        )
    };
    let hex: Vec<u8> = v
        .strip_prefix("sha256:")
        .or_else(|| v.strip_prefix("SHA256:"))
        .ok_or_else(bad)?
        .bytes()
        .filter(|&b| b != b':')
        .collect();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A file holding a secret must be readable and not readable by group or others.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: permissions {mode:04o} must be 0600 or stricter",
            path.display()
        ));
    }
    std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

fn parse_count(v: &str, min: usize, max: usize) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("'{v}' must be a whole number from {min} to {max}"))
}

/// A positive whole number with an optional unit suffix from `units`.
fn parse_with_unit(v: &str, units: &[(u8, u64)], example: &str) -> Result<u64, String> {
    let (num, mult) = match v
        .as_bytes()
        .last()
        .and_then(|c| units.iter().find(|(u, _)| u == c))
    {
        Some(&(_, mult)) => (&v[..v.len() - 1], mult),
        None => (v, 1),
    };
    let n = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{v}' is not {example}"))?;
    if n == 0 {
        return Err(format!("'{v}' must be more than 0"));
    }
    Ok(n)
}

/// `BYTES`, or with a `K`, `M` or `G` suffix (powers of 1024).
pub fn parse_size(v: &str) -> Result<u64, String> {
    const UNITS: &[(u8, u64)] = &[
        (b'k', 1 << 10),
        (b'K', 1 << 10),
        (b'm', 1 << 20),
        (b'M', 1 << 20),
        (b'g', 1 << 30),
        (b'G', 1 << 30),
    ];
    parse_with_unit(v, UNITS, "a size (e.g. 10M, 512K or 1048576)")
}

fn parse_duration_or_zero(v: &str) -> Result<Duration, String> {
    if v == "0" {
        Ok(Duration::ZERO)
    } else {
        parse_duration(v)
    }
}

/// `N` seconds, or `N` with `s`, `m`, `h` or `d`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    const UNITS: &[(u8, u64)] = &[(b's', 1), (b'm', 60), (b'h', 3600), (b'd', 86400)];
    parse_with_unit(v, UNITS, "a duration (e.g. 30s, 5m, 2h, 5d)").map(Duration::from_secs)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reads an aliases file: `name: address[, address...]` lines, `#` comments.
fn load_aliases(
    path: &Path,
) -> Result<Vec<(String, Vec<crate::protocol::address::Mailbox>)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split_once('#').map_or(line, |(a, _)| a).trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            crate::protocol::policy::parse_alias(line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}

/// The kernel's host name, the default `hostname`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| crate::protocol::address::check_domain(s.as_bytes(), false).is_ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("t.conf"), text)
    }

    #[test]
    fn defaults_and_values() {
        let c = parse("smarthost mx.example.com:587\n").unwrap();
        assert_eq!(
            c.listen,
            vec![Listen {
                addr: "127.0.0.1:25".parse().unwrap(),
                tls: false
            }]
        );
        assert!(c.relay_allowed("127.0.0.9".parse().unwrap()));
        assert!(c.relay_allowed("::1".parse().unwrap()));
        assert!(!c.relay_allowed("192.168.1.2".parse().unwrap()));
        assert_eq!(c.max_message_size, 10 << 20);
        assert_eq!(c.max_queue_lifetime, Duration::from_secs(5 * 86400));
        assert_eq!(c.mode, Mode::Durable);

        let c = parse(
            "# comment\nlisten 0.0.0.0:2525\nlisten [::1]:2525  # trailing comment\n\
             allow 192.168.1.0/24\nallow fd00::/8\nhostname relay.lan\nsmarthost [2001:db8::1]:25\n\
             max_message_size 512K\nworkers 2\nretry_min 30s\nretry_max 2h\nbare_newline reject\nmode passthrough\n",
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.relay_allowed("192.168.1.77".parse().unwrap()));
        assert!(
            c.relay_allowed("::ffff:192.168.1.77".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(!c.relay_allowed("192.168.2.1".parse().unwrap()));
        assert!(
            !c.relay_allowed("127.0.0.1".parse().unwrap()),
            "allow replaces the default"
        );
        assert!(c.relay_allowed("fd12::1".parse().unwrap()));
        assert_eq!(
            c.smarthost,
            Smarthost {
                host: "2001:db8::1".into(),
                port: 25
            }
        );
        assert_eq!(c.max_message_size, 512 * 1024);
        assert_eq!(c.retry_max, Duration::from_secs(7200));
        assert_eq!(c.bare_newline, BareNewline::Reject);
        assert_eq!(c.mode, Mode::Passthrough);
        assert!(parse("smarthost a.b:25\nmode fast\n").is_err());

        let c = parse("allow none\nsmarthost a.b:25\n").unwrap();
        assert!(c.allow.is_empty());
        assert!(
            !c.relay_allowed("127.0.0.1".parse().unwrap()),
            "an empty list allows nobody"
        );
    }

    /// `connection_limit_exempt`: loopback by default, with or without `allow` lines;
    /// a list replaces the default; `none` empties it; each prints back the same.
    #[test]
    fn connection_limit_exempt_default_and_round_trip() {
        let loopback = vec![
            Cidr::parse("127.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        let cases: &[(&str, &[Cidr])] = &[
            ("smarthost a.b:25\n", &loopback),
            ("allow 10.0.0.0/8\nsmarthost a.b:25\n", &loopback),
            ("connection_limit_exempt none\nsmarthost a.b:25\n", &[]),
            (
                "connection_limit_exempt 10.0.0.0/8\nallow 10.0.0.0/8\nsmarthost a.b:25\n",
                &[Cidr::parse("10.0.0.0/8").unwrap()],
            ),
        ];
        for (text, want) in cases {
            let c = parse(text).unwrap();
            assert_eq!(&c.connection_limit_exempt, want, "{text}");
            let printed = c.effective();
            let again = parse(&printed).unwrap();
            assert_eq!(&again.connection_limit_exempt, want, "reparsed {text}");
            assert_eq!(again.effective(), printed);
        }
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "smarthost a.b:25\nlisen 1.2.3.4:25\n",
                "t.conf:2: unknown key 'lisen' (did you mean 'listen'?)",
            ),
            (
                "smarthost a.b:25\nlisten 1.2.3.4\n",
                "t.conf:2: listen '1.2.3.4' is not ADDR:PORT",
            ),
            (
                "smarthost a.b:25\nlisten 1.2.3.4:465 tsl\n",
                "t.conf:2: listen: unknown option 'tsl'",
            ),
            (
                "smarthost a.b:25\nlisten 1.2.3.4:465 tls\n",
                "t.conf:2: a 'tls' listener needs tls_cert and tls_key",
            ),
            (
                "smarthost a.b:25\ntls_cert /x.pem\n",
                "t.conf:2: tls_cert needs tls_key",
            ),
            (
                "smarthost a.b\n",
                "t.conf:1: smarthost 'a.b' is not HOST:PORT",
            ),
            (
                "smarthost a.b:0\n",
                "t.conf:1: smarthost 'a.b:0' is not HOST:PORT",
            ),
            (
                "smarthost a.b:25\nallow 10.0.0.0/33\n",
                "t.conf:2: '10.0.0.0/33': prefix length must be 0 to 32",
            ),
            (
                "smarthost a.b:25\nmax_message_size 10X\n",
                "t.conf:2: '10X' is not a size",
            ),
            (
                "smarthost a.b:25\nworkers 0\n",
                "t.conf:2: '0' must be a whole number from 1 to 1024",
            ),
            (
                "smarthost a.b:25\nhostname bad_name!\n",
                "t.conf:2: hostname 'bad_name!' is not a domain name",
            ),
            (
                "smarthost a.b:25\nhostname a\nhostname b\n",
                "t.conf:3: 'hostname' given again (first on line 2)",
            ),
            (
                "smarthost a.b:25\nspool relative/dir\n",
                "t.conf:2: spool 'relative/dir' must be an absolute path",
            ),
            (
                "smarthost a.b:25\nretry_min 5x\n",
                "t.conf:2: '5x' is not a duration",
            ),
            (
                "smarthost a.b:25\nworkers\n",
                "t.conf:2: 'workers' needs a value",
            ),
            (
                "listen 127.0.0.1:25\n",
                "t.conf: 'smarthost HOST:PORT' is required",
            ),
            (
                "smarthost a.b:25\nretry_min 2h\nretry_max 1h\n",
                "t.conf:2: retry_max must not be less than retry_min",
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err();
            assert!(got.starts_with(want), "{text:?}: got {got:?}");
        }
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.2.3/12").unwrap();
        assert!(c.contains("10.0.0.1".parse().unwrap()));
        assert!(c.contains("10.15.255.255".parse().unwrap()));
        assert!(!c.contains("10.16.0.0".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            !Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("::2".parse().unwrap())
        );
        assert!(
            Cidr::parse("192.0.2.1")
                .unwrap()
                .contains("192.0.2.1".parse().unwrap())
        );
        assert!(
            !Cidr::parse("192.0.2.1")
                .unwrap()
                .contains("192.0.2.2".parse().unwrap())
        );
    }
}
