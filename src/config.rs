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

/// How the relay authenticates at the smarthost (`smarthost_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarthostAuth {
    /// PLAIN or LOGIN with `smarthost_password_file`.
    Password,
    /// An OAuth2 access token with SASL XOAUTH2 (Google, Microsoft).
    Xoauth2,
    /// An OAuth2 access token with SASL OAUTHBEARER (RFC 7628).
    Oauthbearer,
}

/// Where the OAuth2 access token comes from (the `smarthost_oauth_*` keys). Only
/// paths to the secrets: the thread that needs a token reads them.
#[derive(Debug, Clone)]
pub struct OAuth {
    pub token_url: Option<String>,
    /// The device authorization endpoint for `oauth login`; `None`: the token URL's
    /// last segment `token` made `devicecode` (Microsoft's pair).
    pub device_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// Space-separated scopes.
    pub scope: Option<String>,
    pub refresh_token_file: Option<PathBuf>,
    /// A program and its arguments, run without a shell.
    pub token_command: Vec<String>,
    /// For one exchange with the token endpoint, or one run of the token command.
    pub timeout: Duration,
}

/// The grant the `smarthost_oauth_*` keys describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials,
    RefreshToken,
    Command,
}

impl OAuth {
    pub fn grant(&self) -> Grant {
        if !self.token_command.is_empty() {
            Grant::Command
        } else if self.refresh_token_file.is_some() {
            Grant::RefreshToken
        } else {
            Grant::ClientCredentials
        }
    }

    pub fn device_url(&self) -> Option<String> {
        self.device_url.clone().or_else(|| {
            let url = self.token_url.as_deref()?;
            url.strip_suffix("/token")
                .map(|base| format!("{base}/devicecode"))
        })
    }
}

/// Words split at blanks, with `"..."` or `'...'` keeping blanks inside a word.
fn split_words(v: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for ch in v.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '"' | '\'') => {
                quote = Some(ch);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_ascii_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in '{v}'"));
    }
    words.extend(word);
    Ok(words)
}

/// `--check`'s form of a word list: quoted where a word has a blank or is empty.
fn join_words(words: &[String]) -> String {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| {
            if w.is_empty() || w.contains(|c: char| c.is_ascii_whitespace() || c == '\'') {
                format!("\"{w}\"")
            } else if w.contains('"') {
                format!("'{w}'")
            } else {
                w.clone()
            }
        })
        .collect();
    quoted.join(" ")
}

/// An `https://` URL, which is all a token endpoint may be.
fn parse_https_url(key: &str, v: &str) -> Result<String, String> {
    crate::oauth::http::Url::parse(v).map_err(|e| format!("{key}: {e}"))?;
    Ok(v.to_string())
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

/// Where a smarthost is, `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One smarthost: where it is, how it is trusted, who the relay is there, its
/// timeouts and how many deliveries it takes side by side. The `smarthost_*` keys.
#[derive(Debug, Clone)]
pub struct Smarthost {
    /// Its name in the log (`relay=NAME`), in `route` and in `queue list`: as given
    /// (`smarthost NAME HOST:PORT`), or `HOST:PORT` for the one unnamed smarthost.
    pub name: String,
    pub named: bool,
    pub address: HostPort,
    pub connect_timeout: Duration,
    /// Overrides every reply wait of RFC 5321 §4.5.3.2 when set.
    pub timeout: Option<Duration>,
    pub idle: Duration,
    /// Deliveries to it at once, each over its own connection.
    pub connections: usize,
    pub tls: SmarthostTls,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the smarthost's certificate; when set, it alone decides trust.
    pub fingerprint: Option<[u8; 32]>,
    pub tls_verify: bool,
    pub user: Option<String>,
    /// Only the path: the thread that connects reads the secret itself, so no other
    /// thread ever holds it. Its permissions are checked when the file is loaded.
    pub password_file: Option<PathBuf>,
    pub auth_plaintext: bool,
    pub auth: SmarthostAuth,
    pub oauth: OAuth,
    /// The line of its `smarthost` line (0 for the defaults).
    pub line: usize,
    /// The lines that gave its keys, the defaults it started from included.
    pub lines: Vec<(&'static str, usize)>,
}

impl Default for Smarthost {
    fn default() -> Smarthost {
        Smarthost {
            name: String::new(),
            named: false,
            address: HostPort {
                host: String::new(),
                port: 0,
            },
            connect_timeout: Duration::from_secs(30),
            timeout: None,
            idle: Duration::from_secs(5),
            connections: 2,
            tls: SmarthostTls::Starttls,
            ca_file: None,
            fingerprint: None,
            tls_verify: true,
            user: None,
            password_file: None,
            auth_plaintext: false,
            auth: SmarthostAuth::Password,
            oauth: OAuth {
                token_url: None,
                device_url: None,
                client_id: None,
                client_secret_file: None,
                scope: None,
                refresh_token_file: None,
                token_command: Vec::new(),
                timeout: Duration::from_secs(30),
            },
            line: 0,
            lines: Vec::new(),
        }
    }
}

/// A `smarthost_*` key: read into the smarthost whose block it is in, or into the
/// defaults; printed in each smarthost's block.
pub struct HostKey {
    pub name: &'static str,
    parse: fn(&mut Smarthost, &str) -> Result<(), String>,
    print: fn(&Smarthost, &mut String),
}

/// A smarthost name: letters, digits, `-`, `_` and `.`, so that it reads in a log
/// line and in a `route` list.
fn parse_host_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(format!(
            "smarthost name '{v}': use letters, digits, '-', '_' and '.' (up to 64)"
        ));
    }
    Ok(v.to_string())
}

/// A `route` line: the smarthosts to try, in order, for the recipients it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The smarthosts' names, as given.
    pub via: Vec<String>,
    /// The same as indexes into `Config::smarthosts`.
    pub hosts: Vec<usize>,
    /// Empty: any sender.
    pub senders: Vec<crate::protocol::policy::Pattern>,
    /// Empty: any recipient.
    pub recipients: Vec<crate::protocol::policy::Pattern>,
    /// Its line, 0 for the default added when no `route` line has no condition.
    pub line: usize,
}

impl Route {
    /// `NAME[,NAME...] [sender PATTERN[,PATTERN...]] [recipient PATTERN[,PATTERN...]]`.
    fn parse(v: &str) -> Result<Route, String> {
        let mut words = v.split_ascii_whitespace();
        let via: Vec<String> = words
            .next()
            .unwrap_or("")
            .split(',')
            .map(parse_host_name)
            .collect::<Result<_, _>>()?;
        let mut route = Route {
            via,
            hosts: Vec::new(),
            senders: Vec::new(),
            recipients: Vec::new(),
            line: 0,
        };
        while let Some(what) = words.next() {
            let Some(patterns) = words.next() else {
                return Err(format!("route: '{what}' needs a pattern"));
            };
            let patterns = crate::protocol::policy::parse_patterns(patterns)?;
            match what {
                "sender" if route.senders.is_empty() => route.senders = patterns,
                "recipient" if route.recipients.is_empty() => route.recipients = patterns,
                "sender" | "recipient" => return Err(format!("route: '{what}' given twice")),
                _ => {
                    return Err(format!(
                        "route: unknown condition '{what}' (use 'sender PATTERN' or \
                         'recipient PATTERN')"
                    ));
                }
            }
        }
        Ok(route)
    }

    /// The route applies to this sender (empty for `<>`) and recipient.
    pub fn matches(&self, sender: &[u8], recipient: &[u8]) -> bool {
        (self.senders.is_empty() || self.senders.iter().any(|p| p.matches(sender)))
            && (self.recipients.is_empty() || self.recipients.iter().any(|p| p.matches(recipient)))
    }

    /// The route applies to everything.
    pub fn is_default(&self) -> bool {
        self.senders.is_empty() && self.recipients.is_empty()
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.via.join(","))?;
        let list = |p: &[crate::protocol::policy::Pattern]| {
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.senders.is_empty() {
            write!(f, " sender {}", list(&self.senders))?;
        }
        if !self.recipients.is_empty() {
            write!(f, " recipient {}", list(&self.recipients))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: Vec<Listen>,
    pub hostname: String,
    pub allow: Vec<Cidr>,
    pub spool: PathBuf,
    /// In the order given; never empty after parsing.
    pub smarthosts: Vec<Smarthost>,
    /// The `route` lines, then (unless the last one has no condition) the default:
    /// every smarthost in order.
    pub routes: Vec<Route>,
    /// The `smarthost_*` keys given before the first named smarthost (or, with one
    /// unnamed smarthost, anywhere): every smarthost starts from these.
    host_defaults: Smarthost,
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
    /// Where failure notices and delay warnings go (else the envelope sender).
    pub notify_failed: Option<String>,
    /// `notify_failed none`: no notices at all.
    pub notify_off: bool,
    /// The envelope sender and From of notices (else `<>` and MAILER-DAEMON).
    pub notify_from: Option<String>,
    /// A warning goes out once a message has been deferred this long.
    pub delay_warning: Option<Duration>,
    pub shutdown_grace: Duration,
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
    /// Where `GET /metrics` is served (off when unset).
    pub metrics_listen: Option<SocketAddr>,
    /// Who may read it (loopback by default).
    pub metrics_allow: Vec<Cidr>,
    /// Add `Date:` and `Message-ID:` to a message that has none.
    pub add_missing_headers: bool,
    /// Octets per second a client must keep up in DATA: each read extends the DATA
    /// deadline by its size at this rate, never past `data_timeout` from now. 0: off.
    pub min_data_rate: u64,
    /// Every line that gave a key, in file order (a repeatable key once per line),
    /// for errors found after parsing (files that cannot be read, a user that does
    /// not exist) and the checks across keys.
    pub lines: Vec<(&'static str, usize)>,
}

/// One configuration key: its name, whether it may be given more than once (each
/// line adds to a list), how a value is read into the config, and how the effective
/// setting is printed for `--check`. A key is one row: adding one touches its row,
/// its field and its default. Rows are in `--check` order.
pub struct Key {
    pub name: &'static str,
    pub repeatable: bool,
    parse: fn(&mut Config, &str) -> Result<(), String>,
    print: fn(&Config, &mut String),
}

/// `N` seconds, as `--check` prints durations.
fn secs(d: &Duration) -> String {
    format!("{}s", d.as_secs())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Appends `key value` lines.
fn line(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{key} {value}");
}

/// A value that must be one of `names`.
fn one_of<T: Copy>(key: &str, v: &str, names: &[(&str, T)]) -> Result<T, String> {
    names
        .iter()
        .find(|(n, _)| *n == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let list: Vec<String> = names.iter().map(|(n, _)| format!("'{n}'")).collect();
            let list = match list.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) if rest.len() == 1 => format!("{} or {last}", rest[0]),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            format!("{key} must be {list}, not '{v}'")
        })
}

fn address(key: &str, v: &str) -> Result<String, String> {
    crate::protocol::address::check_mailbox(v.as_bytes(), false)
        .map_err(|_| format!("{key} '{v}' is not an address"))?;
    Ok(v.to_string())
}

/// An address, or a bare local name (`root`) that is qualified and looked up in
/// the aliases where it is used.
fn local_or_address(key: &str, v: &str) -> Result<String, String> {
    if v.contains('@') {
        return address(key, v);
    }
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("{key} '{v}' is not an address or a local name"))
    }
}

fn domain(key: &str, v: &str) -> Result<(), String> {
    crate::protocol::address::check_domain(v.as_bytes(), false)
        .map_err(|_| format!("{key} '{v}' is not a domain name"))
}

const BARE_NEWLINE: &[(&str, BareNewline)] = &[
    ("normalize", BareNewline::Normalize),
    ("reject", BareNewline::Reject),
];
const MODES: &[(&str, Mode)] = &[
    ("durable", Mode::Durable),
    ("passthrough", Mode::Passthrough),
];
const SMARTHOST_TLS: &[(&str, SmarthostTls)] = &[
    ("starttls", SmarthostTls::Starttls),
    ("implicit", SmarthostTls::Implicit),
    ("none", SmarthostTls::None),
];
const LOG: &[(&str, crate::logger::Target)] = &[
    ("stderr", crate::logger::Target::Stderr),
    ("syslog", crate::logger::Target::Syslog),
    ("both", crate::logger::Target::Both),
];

fn name_of<T: PartialEq>(names: &[(&'static str, T)], t: &T) -> &'static str {
    names.iter().find(|(_, v)| v == t).map_or("?", |(n, _)| n)
}

/// A list of networks, or `none` for an empty one.
fn print_cidrs(out: &mut String, key: &str, list: &[Cidr]) {
    if list.is_empty() {
        line(out, key, "none");
    }
    for a in list {
        line(out, key, a);
    }
}

/// Every smarthost with all its keys: an unnamed one as `smarthost HOST:PORT` and its
/// keys, named ones each as a block, its keys indented below it.
fn print_smarthosts(c: &Config, s: &mut String) {
    for h in &c.smarthosts {
        let indent = if h.named {
            line(s, "smarthost", format_args!("{} {}", h.name, h.address));
            "    "
        } else {
            line(s, "smarthost", &h.address);
            ""
        };
        let mut keys = String::new();
        for k in HOST_KEYS {
            (k.print)(h, &mut keys);
        }
        for l in keys.lines() {
            let _ = writeln!(s, "{indent}{l}");
        }
    }
}

/// The rows: see `Key`.
pub const TABLE: &[Key] = &[
    Key {
        name: "listen",
        repeatable: true,
        parse: |c, v| {
            c.listen.push(parse_listen(v)?);
            Ok(())
        },
        print: |c, s| c.listen.iter().for_each(|l| line(s, "listen", l)),
    },
    Key {
        name: "hostname",
        repeatable: false,
        parse: |c, v| {
            domain("hostname", v)?;
            c.hostname = v.to_string();
            Ok(())
        },
        print: |c, s| line(s, "hostname", &c.hostname),
    },
    Key {
        name: "allow",
        repeatable: true,
        parse: |c, v| {
            if v != "none" {
                c.allow.push(Cidr::parse(v)?);
            }
            Ok(())
        },
        print: |c, s| print_cidrs(s, "allow", &c.allow),
    },
    Key {
        name: "spool",
        repeatable: false,
        parse: |c, v| {
            if !v.starts_with('/') {
                return Err(format!("spool '{v}' must be an absolute path"));
            }
            c.spool = PathBuf::from(v);
            Ok(())
        },
        print: |c, s| line(s, "spool", c.spool.display()),
    },
    Key {
        name: "smarthost",
        repeatable: true,
        parse: |c, v| {
            let at = c.lines.last().map_or(0, |(_, l)| *l);
            let words: Vec<&str> = v.split_ascii_whitespace().collect();
            match words[..] {
                [addr] => {
                    if let Some(h) = c.smarthosts.first() {
                        return Err(format!(
                            "this smarthost needs a name too ('smarthost NAME {addr}'), as \
                             the one on line {} has one",
                            h.line
                        ));
                    }
                    if c.host_defaults.line != 0 {
                        return Err(format!(
                            "'smarthost' given again (first on line {}); for several, give \
                             each a name: smarthost NAME HOST:PORT",
                            c.host_defaults.line
                        ));
                    }
                    c.host_defaults.address = parse_host_port(addr)?;
                    c.host_defaults.line = at;
                }
                [name, addr] => {
                    if c.host_defaults.line != 0 {
                        return Err(format!(
                            "the smarthost on line {} has no name: with several, give each a \
                             name (smarthost NAME HOST:PORT)",
                            c.host_defaults.line
                        ));
                    }
                    let name = parse_host_name(name)?;
                    if let Some(h) = c.smarthosts.iter().find(|h| h.name == name) {
                        return Err(format!(
                            "smarthost '{name}' given twice (first on line {})",
                            h.line
                        ));
                    }
                    let mut h = c.host_defaults.clone();
                    h.address = parse_host_port(addr)?;
                    (h.name, h.named, h.line) = (name, true, at);
                    c.smarthosts.push(h);
                }
                _ => {
                    return Err(format!(
                        "smarthost '{v}' is not HOST:PORT (or NAME HOST:PORT, one of several)"
                    ));
                }
            }
            Ok(())
        },
        print: print_smarthosts,
    },
    Key {
        name: "route",
        repeatable: true,
        parse: |c, v| {
            let mut r = Route::parse(v)?;
            r.line = c.lines.last().map_or(0, |(_, l)| *l);
            c.routes.push(r);
            Ok(())
        },
        print: |c, s| {
            for r in &c.routes {
                if r.line == 0 {
                    let _ = writeln!(s, "# route (the default, no route line for it): {r}");
                } else {
                    line(s, "route", r);
                }
            }
        },
    },
    Key {
        name: "workers",
        repeatable: false,
        parse: |c, v| {
            c.workers = parse_count(v, 1, 1024)?;
            Ok(())
        },
        print: |c, s| line(s, "workers", c.workers),
    },
    Key {
        name: "max_connections",
        repeatable: false,
        parse: |c, v| {
            c.max_connections = parse_count(v, 1, 100_000)?;
            Ok(())
        },
        print: |c, s| line(s, "max_connections", c.max_connections),
    },
    Key {
        name: "max_message_size",
        repeatable: false,
        parse: |c, v| {
            c.max_message_size = parse_size(v)?;
            Ok(())
        },
        print: |c, s| line(s, "max_message_size", c.max_message_size),
    },
    Key {
        name: "bare_newline",
        repeatable: false,
        parse: |c, v| {
            c.bare_newline = one_of("bare_newline", v, BARE_NEWLINE)?;
            Ok(())
        },
        print: |c, s| line(s, "bare_newline", name_of(BARE_NEWLINE, &c.bare_newline)),
    },
    Key {
        name: "mode",
        repeatable: false,
        parse: |c, v| {
            c.mode = one_of("mode", v, MODES)?;
            Ok(())
        },
        print: |c, s| line(s, "mode", name_of(MODES, &c.mode)),
    },
    Key {
        name: "max_hops",
        repeatable: false,
        parse: |c, v| {
            c.max_hops = parse_count(v, 1, 1000)? as u32;
            Ok(())
        },
        print: |c, s| line(s, "max_hops", c.max_hops),
    },
    Key {
        name: "add_missing_headers",
        repeatable: false,
        parse: |c, v| {
            c.add_missing_headers = parse_yes_no("add_missing_headers", v)?;
            Ok(())
        },
        print: |c, s| line(s, "add_missing_headers", yes_no(c.add_missing_headers)),
    },
    Key {
        name: "min_data_rate",
        repeatable: false,
        parse: |c, v| {
            c.min_data_rate = if v == "none" { 0 } else { parse_size(v)? };
            Ok(())
        },
        print: |c, s| match c.min_data_rate {
            0 => line(s, "min_data_rate", "none"),
            r => line(s, "min_data_rate", r),
        },
    },
    Key {
        name: "command_timeout",
        repeatable: false,
        parse: |c, v| {
            c.command_timeout = parse_duration(v)?;
            Ok(())
        },
        print: |c, s| line(s, "command_timeout", secs(&c.command_timeout)),
    },
    Key {
        name: "data_timeout",
        repeatable: false,
        parse: |c, v| {
            c.data_timeout = parse_duration(v)?;
            Ok(())
        },
        print: |c, s| line(s, "data_timeout", secs(&c.data_timeout)),
    },
    Key {
        name: "retry_min",
        repeatable: false,
        parse: |c, v| {
            c.retry_min = parse_duration(v)?;
            Ok(())
        },
        print: |c, s| line(s, "retry_min", secs(&c.retry_min)),
    },
    Key {
        name: "retry_max",
        repeatable: false,
        parse: |c, v| {
            c.retry_max = parse_duration(v)?;
            Ok(())
        },
        print: |c, s| line(s, "retry_max", secs(&c.retry_max)),
    },
    Key {
        name: "max_queue_lifetime",
        repeatable: false,
        parse: |c, v| {
            c.max_queue_lifetime = parse_duration(v)?;
            Ok(())
        },
        print: |c, s| line(s, "max_queue_lifetime", secs(&c.max_queue_lifetime)),
    },
    Key {
        name: "notify_failed",
        repeatable: false,
        parse: |c, v| {
            match v {
                "none" => c.notify_off = true,
                v => c.notify_failed = Some(local_or_address("notify_failed", v)?),
            }
            Ok(())
        },
        print: |c, s| {
            if c.notify_off {
                line(s, "notify_failed", "none");
            } else if let Some(a) = &c.notify_failed {
                line(s, "notify_failed", a);
            }
        },
    },
    Key {
        name: "notify_from",
        repeatable: false,
        parse: |c, v| {
            c.notify_from = Some(address("notify_from", v)?);
            Ok(())
        },
        print: |c, s| {
            if let Some(a) = &c.notify_from {
                line(s, "notify_from", a);
            }
        },
    },
    Key {
        name: "delay_warning",
        repeatable: false,
        parse: |c, v| {
            c.delay_warning = match v {
                "none" => None,
                v => Some(parse_duration(v)?).filter(|d| !d.is_zero()),
            };
            Ok(())
        },
        print: |c, s| match &c.delay_warning {
            Some(d) => line(s, "delay_warning", secs(d)),
            None => line(s, "delay_warning", "none"),
        },
    },
    Key {
        name: "tls_cert",
        repeatable: false,
        parse: |c, v| {
            c.tls_cert = Some(absolute(v)?);
            Ok(())
        },
        print: |c, s| {
            if let Some(p) = &c.tls_cert {
                line(s, "tls_cert", p.display());
            }
        },
    },
    Key {
        name: "tls_key",
        repeatable: false,
        parse: |c, v| {
            c.tls_key = Some(absolute(v)?);
            Ok(())
        },
        print: |c, s| {
            if let Some(p) = &c.tls_key {
                line(s, "tls_key", p.display());
            }
        },
    },
    Key {
        name: "auth_users",
        repeatable: false,
        parse: |c, v| {
            c.auth_users = Some(absolute(v)?);
            Ok(())
        },
        print: |c, s| {
            if let Some(p) = &c.auth_users {
                line(s, "auth_users", p.display());
            }
        },
    },
    Key {
        name: "auth_plaintext",
        repeatable: false,
        parse: |c, v| {
            c.auth_plaintext = parse_yes_no("auth_plaintext", v)?;
            Ok(())
        },
        print: |c, s| line(s, "auth_plaintext", yes_no(c.auth_plaintext)),
    },
    Key {
        name: "require_auth",
        repeatable: false,
        parse: |c, v| {
            c.require_auth = parse_yes_no("require_auth", v)?;
            Ok(())
        },
        print: |c, s| line(s, "require_auth", yes_no(c.require_auth)),
    },
    Key {
        name: "user",
        repeatable: false,
        parse: |c, v| {
            c.user = Some(v.to_string());
            Ok(())
        },
        print: |c, s| {
            if let Some(u) = &c.user {
                line(s, "user", u);
            }
        },
    },
    Key {
        name: "sendmail_from",
        repeatable: false,
        parse: |c, v| {
            c.sendmail_from = Some(address("sendmail_from", v)?);
            Ok(())
        },
        print: |c, s| {
            if let Some(f) = &c.sendmail_from {
                line(s, "sendmail_from", f);
            }
        },
    },
    Key {
        name: "allow_sender",
        repeatable: true,
        parse: |c, v| {
            let patterns = crate::protocol::policy::parse_patterns(v)?;
            c.allow_sender.extend(patterns);
            Ok(())
        },
        print: |c, s| {
            c.allow_sender
                .iter()
                .for_each(|p| line(s, "allow_sender", p))
        },
    },
    Key {
        name: "allow_recipient",
        repeatable: true,
        parse: |c, v| {
            let patterns = crate::protocol::policy::parse_patterns(v)?;
            c.allow_recipient.extend(patterns);
            Ok(())
        },
        print: |c, s| {
            c.allow_recipient
                .iter()
                .for_each(|p| line(s, "allow_recipient", p))
        },
    },
    Key {
        name: "rewrite_sender",
        repeatable: false,
        parse: |c, v| {
            c.rewrite_sender = Some(address("rewrite_sender", v)?);
            Ok(())
        },
        print: |c, s| {
            if let Some(a) = &c.rewrite_sender {
                line(s, "rewrite_sender", a);
            }
        },
    },
    Key {
        name: "rewrite_from",
        repeatable: false,
        parse: |c, v| {
            c.rewrite_from = Some(address("rewrite_from", v)?);
            Ok(())
        },
        print: |c, s| {
            if let Some(a) = &c.rewrite_from {
                line(s, "rewrite_from", a);
            }
        },
    },
    Key {
        name: "qualify_domain",
        repeatable: false,
        parse: |c, v| {
            domain("qualify_domain", v)?;
            c.qualify_domain = Some(v.to_ascii_lowercase());
            Ok(())
        },
        print: |c, s| line(s, "qualify_domain", c.qualify_domain()),
    },
    Key {
        name: "alias",
        repeatable: true,
        parse: |c, v| {
            c.alias.push(crate::protocol::policy::parse_alias(v)?);
            Ok(())
        },
        print: |c, s| {
            for (name, targets) in &c.alias {
                let t: Vec<String> = targets
                    .iter()
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .collect();
                line(s, "alias", format!("{name} {}", t.join(",")));
            }
        },
    },
    Key {
        name: "aliases",
        repeatable: false,
        parse: |c, v| {
            c.aliases = Some(absolute(v)?);
            Ok(())
        },
        print: |c, s| {
            if let Some(p) = &c.aliases {
                line(s, "aliases", p.display());
            }
        },
    },
    Key {
        name: "max_connections_per_ip",
        repeatable: false,
        parse: |c, v| {
            c.max_connections_per_ip = Some(parse_count(v, 1, 100_000)? as u32);
            Ok(())
        },
        print: |c, s| line(s, "max_connections_per_ip", c.max_connections_per_ip()),
    },
    Key {
        name: "metrics_listen",
        repeatable: false,
        parse: |c, v| {
            c.metrics_listen = Some(v.parse::<SocketAddr>().map_err(|_| {
                format!("metrics_listen '{v}' is not ADDR:PORT (e.g. 127.0.0.1:9125)")
            })?);
            Ok(())
        },
        print: |c, s| {
            if let Some(a) = &c.metrics_listen {
                line(s, "metrics_listen", a);
            }
        },
    },
    Key {
        name: "metrics_allow",
        repeatable: true,
        parse: |c, v| {
            if v != "none" {
                c.metrics_allow.push(Cidr::parse(v)?);
            }
            Ok(())
        },
        print: |c, s| print_cidrs(s, "metrics_allow", &c.metrics_allow),
    },
    Key {
        name: "connection_limit_exempt",
        repeatable: true,
        parse: |c, v| {
            if v != "none" {
                c.connection_limit_exempt.push(Cidr::parse(v)?);
            }
            Ok(())
        },
        print: |c, s| print_cidrs(s, "connection_limit_exempt", &c.connection_limit_exempt),
    },
    Key {
        name: "max_recipients",
        repeatable: false,
        parse: |c, v| {
            c.max_recipients = parse_count(v, 1, crate::protocol::limits::RECIPIENTS)?;
            Ok(())
        },
        print: |c, s| line(s, "max_recipients", c.max_recipients),
    },
    Key {
        name: "max_messages_per_connection",
        repeatable: false,
        parse: |c, v| {
            c.max_messages_per_connection = match v {
                "none" => 0,
                v => parse_count(v, 1, 1_000_000)? as u32,
            };
            Ok(())
        },
        print: |c, s| match c.max_messages_per_connection {
            0 => line(s, "max_messages_per_connection", "none"),
            n => line(s, "max_messages_per_connection", n),
        },
    },
    Key {
        name: "rate_limit",
        repeatable: false,
        parse: |c, v| {
            c.rate_limit = crate::server::limits::Rate::parse(v)?;
            Ok(())
        },
        print: |c, s| match &c.rate_limit {
            Some(r) => line(s, "rate_limit", r),
            None => line(s, "rate_limit", "none"),
        },
    },
    Key {
        name: "log",
        repeatable: false,
        parse: |c, v| {
            c.log = one_of("log", v, LOG)?;
            Ok(())
        },
        print: |c, s| line(s, "log", name_of(LOG, &c.log)),
    },
    Key {
        name: "syslog_socket",
        repeatable: false,
        parse: |c, v| {
            c.syslog_socket = absolute(v)?;
            Ok(())
        },
        print: |c, s| line(s, "syslog_socket", c.syslog_socket.display()),
    },
    Key {
        name: "shutdown_grace",
        repeatable: false,
        parse: |c, v| {
            c.shutdown_grace = parse_duration_or_zero(v)?;
            Ok(())
        },
        print: |c, s| line(s, "shutdown_grace", secs(&c.shutdown_grace)),
    },
];

/// The rows of the `smarthost_*` keys, in `--check` order within a smarthost.
pub const HOST_KEYS: &[HostKey] = &[
    HostKey {
        name: "smarthost_connections",
        parse: |h, v| {
            h.connections = parse_count(v, 1, 64)?;
            Ok(())
        },
        print: |h, s| line(s, "smarthost_connections", h.connections),
    },
    HostKey {
        name: "smarthost_connect_timeout",
        parse: |h, v| {
            h.connect_timeout = parse_duration(v)?;
            Ok(())
        },
        print: |h, s| line(s, "smarthost_connect_timeout", secs(&h.connect_timeout)),
    },
    HostKey {
        name: "smarthost_timeout",
        parse: |h, v| {
            h.timeout = Some(parse_duration(v)?);
            Ok(())
        },
        print: |h, s| {
            match &h.timeout {
            Some(t) => line(s, "smarthost_timeout", secs(t)),
            None => s.push_str(
                "# smarthost_timeout unset: RFC 5321 4.5.3.2 (5m per command, 10m after the data)\n",
            ),
        }
        },
    },
    HostKey {
        name: "smarthost_tls",
        parse: |h, v| {
            h.tls = one_of("smarthost_tls", v, SMARTHOST_TLS)?;
            Ok(())
        },
        print: |h, s| line(s, "smarthost_tls", name_of(SMARTHOST_TLS, &h.tls)),
    },
    HostKey {
        name: "smarthost_ca_file",
        parse: |h, v| {
            h.ca_file = Some(absolute(v)?);
            Ok(())
        },
        print: |h, s| {
            if let Some(p) = &h.ca_file {
                line(s, "smarthost_ca_file", p.display());
            }
        },
    },
    HostKey {
        name: "smarthost_fingerprint",
        parse: |h, v| {
            h.fingerprint = Some(parse_fingerprint(v)?);
            Ok(())
        },
        print: |h, s| {
            if let Some(fp) = &h.fingerprint {
                let hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
                line(s, "smarthost_fingerprint", format!("sha256:{hex}"));
            }
        },
    },
    HostKey {
        name: "smarthost_tls_verify",
        parse: |h, v| {
            h.tls_verify = parse_yes_no("smarthost_tls_verify", v)?;
            Ok(())
        },
        print: |h, s| line(s, "smarthost_tls_verify", yes_no(h.tls_verify)),
    },
    HostKey {
        name: "smarthost_user",
        parse: |h, v| {
            h.user = Some(v.to_string());
            Ok(())
        },
        print: |h, s| {
            if let Some(u) = &h.user {
                line(s, "smarthost_user", u);
            }
        },
    },
    HostKey {
        name: "smarthost_password_file",
        parse: |h, v| {
            h.password_file = Some(absolute(v)?);
            Ok(())
        },
        print: |h, s| {
            if let Some(p) = &h.password_file {
                let shown = format!("{}  # contents not shown", p.display());
                line(s, "smarthost_password_file", shown);
            }
        },
    },
    HostKey {
        name: "smarthost_auth_plaintext",
        parse: |h, v| {
            h.auth_plaintext = parse_yes_no("smarthost_auth_plaintext", v)?;
            Ok(())
        },
        print: |h, s| line(s, "smarthost_auth_plaintext", yes_no(h.auth_plaintext)),
    },
    HostKey {
        name: "smarthost_auth",
        parse: |h, v| {
            h.auth = one_of(
                "smarthost_auth",
                v,
                &[
                    ("password", SmarthostAuth::Password),
                    ("xoauth2", SmarthostAuth::Xoauth2),
                    ("oauthbearer", SmarthostAuth::Oauthbearer),
                ],
            )?;
            Ok(())
        },
        print: |h, s| {
            let name = match h.auth {
                SmarthostAuth::Password => "password",
                SmarthostAuth::Xoauth2 => "xoauth2",
                SmarthostAuth::Oauthbearer => "oauthbearer",
            };
            line(s, "smarthost_auth", name)
        },
    },
    HostKey {
        name: "smarthost_oauth_token_url",
        parse: |h, v| {
            h.oauth.token_url = Some(parse_https_url("smarthost_oauth_token_url", v)?);
            Ok(())
        },
        print: |h, s| {
            if let Some(v) = &h.oauth.token_url {
                line(s, "smarthost_oauth_token_url", v);
            }
        },
    },
    HostKey {
        name: "smarthost_oauth_device_url",
        parse: |h, v| {
            h.oauth.device_url = Some(parse_https_url("smarthost_oauth_device_url", v)?);
            Ok(())
        },
        print: |h, s| {
            if let Some(v) = &h.oauth.device_url {
                line(s, "smarthost_oauth_device_url", v);
            }
        },
    },
    HostKey {
        name: "smarthost_oauth_client_id",
        parse: |h, v| {
            h.oauth.client_id = Some(v.to_string());
            Ok(())
        },
        print: |h, s| {
            if let Some(v) = &h.oauth.client_id {
                line(s, "smarthost_oauth_client_id", v);
            }
        },
    },
    HostKey {
        name: "smarthost_oauth_client_secret_file",
        parse: |h, v| {
            h.oauth.client_secret_file = Some(absolute(v)?);
            Ok(())
        },
        print: |h, s| {
            if let Some(p) = &h.oauth.client_secret_file {
                line(
                    s,
                    "smarthost_oauth_client_secret_file",
                    format!("{}  # contents not shown", p.display()),
                );
            }
        },
    },
    HostKey {
        name: "smarthost_oauth_scope",
        parse: |h, v| {
            let words = split_words(v)?;
            let scopes = words.iter().flat_map(|w| w.split_whitespace());
            let scopes = scopes.collect::<Vec<_>>().join(" ");
            if scopes.is_empty() {
                return Err("smarthost_oauth_scope needs at least one scope".into());
            }
            h.oauth.scope = Some(scopes);
            Ok(())
        },
        print: |h, s| {
            if let Some(v) = &h.oauth.scope {
                line(s, "smarthost_oauth_scope", format!("\"{v}\""));
            }
        },
    },
    HostKey {
        name: "smarthost_oauth_refresh_token_file",
        parse: |h, v| {
            h.oauth.refresh_token_file = Some(absolute(v)?);
            Ok(())
        },
        print: |h, s| {
            if let Some(p) = &h.oauth.refresh_token_file {
                line(
                    s,
                    "smarthost_oauth_refresh_token_file",
                    format!("{}  # contents not shown", p.display()),
                );
            }
        },
    },
    HostKey {
        name: "smarthost_oauth_token_command",
        parse: |h, v| {
            let words = split_words(v)?;
            if !words.first().is_some_and(|w| w.starts_with('/')) {
                return Err(
                    "smarthost_oauth_token_command: the program must be an absolute path \
                            (it is run without a shell)"
                        .into(),
                );
            }
            h.oauth.token_command = words;
            Ok(())
        },
        print: |h, s| {
            if !h.oauth.token_command.is_empty() {
                let words = join_words(&h.oauth.token_command);
                line(s, "smarthost_oauth_token_command", words);
            }
        },
    },
    HostKey {
        name: "smarthost_oauth_timeout",
        parse: |h, v| {
            h.oauth.timeout = parse_duration(v)?;
            Ok(())
        },
        print: |h, s| {
            if h.auth != SmarthostAuth::Password {
                line(s, "smarthost_oauth_timeout", secs(&h.oauth.timeout))
            }
        },
    },
    HostKey {
        name: "smarthost_idle",
        parse: |h, v| {
            h.idle = parse_duration_or_zero(v)?;
            Ok(())
        },
        print: |h, s| line(s, "smarthost_idle", secs(&h.idle)),
    },
];

impl Default for Config {
    /// Every key's default. `hostname` is `localhost` here; `load` asks the kernel.
    fn default() -> Config {
        Config {
            path: PathBuf::new(),
            listen: Vec::new(),
            hostname: "localhost".into(),
            allow: Vec::new(),
            spool: PathBuf::from("/var/spool/smtp-relayd"),
            smarthosts: Vec::new(),
            routes: Vec::new(),
            host_defaults: Smarthost::default(),
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
            notify_failed: None,
            notify_off: false,
            notify_from: None,
            delay_warning: None,
            shutdown_grace: Duration::from_secs(10),
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
            metrics_listen: None,
            metrics_allow: Vec::new(),
            add_missing_headers: true,
            min_data_rate: 500,
            lines: Vec::new(),
        }
    }
}

/// Loopback, IPv4 and IPv6: the default of `allow` and `connection_limit_exempt`.
fn loopback() -> Vec<Cidr> {
    vec![
        Cidr::parse("127.0.0.0/8").unwrap(),
        Cidr::parse("::1").unwrap(),
    ]
}

impl Smarthost {
    /// The line `key` was last given on for this smarthost (0: not given).
    pub fn line_of(&self, key: &str) -> usize {
        self.lines
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, l)| *l)
    }

    /// The files with its secrets, by key.
    pub fn secret_files(&self) -> [(&'static str, &Option<PathBuf>); 3] {
        [
            ("smarthost_password_file", &self.password_file),
            (
                "smarthost_oauth_client_secret_file",
                &self.oauth.client_secret_file,
            ),
            (
                "smarthost_oauth_refresh_token_file",
                &self.oauth.refresh_token_file,
            ),
        ]
    }

    /// `FILE:LINE: what` for a problem with this smarthost's `key`.
    pub fn error_at(&self, config: &Config, key: &str, what: &str) -> String {
        let line = match self.line_of(key) {
            0 => self.line,
            l => l,
        };
        format!("{}:{line}: {what}", config.path.display())
    }

    /// `smarthost_auth password`: a user needs its password file, and no OAuth2 key.
    fn validate_password(&self, at: &dyn Fn(usize, String) -> String) -> Result<(), String> {
        let c = self;
        let line_of = |key: &str| self.line_of(key);
        if let Some((key, _)) = c
            .lines
            .iter()
            .find(|(k, _)| k.starts_with("smarthost_oauth_"))
        {
            let what = format!("{key} needs smarthost_auth xoauth2 or oauthbearer");
            return Err(at(line_of(key), what));
        }
        match (&c.user, &c.password_file) {
            (Some(_), None) => {
                let what = "smarthost_user needs smarthost_password_file".to_string();
                return Err(at(line_of("smarthost_user"), what));
            }
            (None, Some(_)) => {
                let what = "smarthost_password_file needs smarthost_user".to_string();
                return Err(at(line_of("smarthost_password_file"), what));
            }
            _ => {}
        }
        if c.user.is_some() && c.tls == SmarthostTls::None && !c.auth_plaintext {
            let what = "with smarthost_tls none the password would cross the network in clear; \
                 use smarthost_tls starttls or implicit (or, on a trusted link, smarthost_auth_plaintext yes)";
            return Err(at(line_of("smarthost_user"), what.to_string()));
        }
        Ok(())
    }

    /// `smarthost_auth xoauth2|oauthbearer`: the account, TLS, and exactly one source
    /// of tokens with what its grant needs.
    fn validate_oauth(&self, at: &dyn Fn(usize, String) -> String) -> Result<(), String> {
        let line_of = |key: &str| self.line_of(key);
        let o = &self.oauth;
        let auth = line_of("smarthost_auth");
        if cfg!(not(feature = "tls")) {
            let what = "this smtp-relayd was built without TLS, and OAuth2 needs it".to_string();
            return Err(at(auth, what));
        }
        if self.user.is_none() {
            let what = "smarthost_auth with a token needs smarthost_user (the account the \
                        token is for)";
            return Err(at(auth, what.to_string()));
        }
        if self.tls == SmarthostTls::None {
            let what = "a token is only sent over TLS: use smarthost_tls starttls or implicit";
            return Err(at(auth, what.to_string()));
        }
        if self.password_file.is_some() {
            let what = "smarthost_password_file is for smarthost_auth password; with a token, \
                        remove it";
            return Err(at(line_of("smarthost_password_file"), what.to_string()));
        }
        let given = |key: &str| line_of(key) != 0;
        if !o.token_command.is_empty() {
            for key in [
                "smarthost_oauth_token_url",
                "smarthost_oauth_refresh_token_file",
                "smarthost_oauth_client_id",
                "smarthost_oauth_client_secret_file",
            ] {
                if given(key) {
                    let what = format!("{key} does not go with smarthost_oauth_token_command");
                    return Err(at(line_of(key), what));
                }
            }
            return Ok(());
        }
        if o.token_url.is_none() {
            let what = "smarthost_auth with a token needs smarthost_oauth_token_url (with \
                        client credentials or a refresh token) or smarthost_oauth_token_command";
            return Err(at(auth, what.to_string()));
        }
        if o.client_id.is_none() {
            let what = "smarthost_oauth_token_url needs smarthost_oauth_client_id".to_string();
            return Err(at(line_of("smarthost_oauth_token_url"), what));
        }
        if o.refresh_token_file.is_none() {
            // Client credentials: the secret and the scope (`.default` for Microsoft).
            for key in [
                "smarthost_oauth_client_secret_file",
                "smarthost_oauth_scope",
            ] {
                if !given(key) {
                    let what = format!(
                        "the client credentials grant needs {key} (or give \
                         smarthost_oauth_refresh_token_file for the refresh token grant)"
                    );
                    return Err(at(line_of("smarthost_oauth_token_url"), what));
                }
            }
        }
        Ok(())
    }

    /// Every check across this smarthost's keys.
    fn validate(&self, at: &dyn Fn(usize, String) -> String) -> Result<(), String> {
        if self.auth == SmarthostAuth::Password {
            self.validate_password(at)?;
        } else {
            self.validate_oauth(at)?;
        }
        if cfg!(not(feature = "tls")) && self.tls != SmarthostTls::None {
            let what = "this smtp-relayd was built without TLS; set 'smarthost_tls none'";
            return Err(at(self.line_of("smarthost_tls"), what.to_string()));
        }
        Ok(())
    }
}

impl Config {
    /// Reads and parses the file, takes the kernel's host name when `hostname` is not
    /// given, and checks the files named for secrets (their permissions).
    pub fn load(path: &Path) -> Result<Config, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let text =
            String::from_utf8(text).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
        let mut c = Self::parse(path, &text)?;
        if c.line_of("hostname") == 0 {
            c.hostname = system_hostname();
        }
        c.check_files()?;
        Ok(c)
    }

    /// The files that hold secrets must not be readable by group or others.
    pub fn check_files(&self) -> Result<(), String> {
        let file = self.path.display();
        if let Some(p) = &self.auth_users {
            check_secret_file(p).map_err(|e| {
                format!("{e} (auth_users on {file}:{})", self.line_of("auth_users"))
            })?;
        }
        for h in &self.smarthosts {
            for (key, path) in h.secret_files() {
                let Some(p) = path else { continue };
                // No refresh token yet is a state `oauth login` ends, not a config error.
                if key == "smarthost_oauth_refresh_token_file" && !p.exists() {
                    continue;
                }
                check_secret_file(p)
                    .map_err(|e| format!("{e} ({key} on {file}:{})", h.line_of(key)))?;
            }
            if let Some(program) = h.oauth.token_command.first() {
                std::fs::metadata(program).map_err(|e| {
                    let line = h.line_of("smarthost_oauth_token_command");
                    format!("{file}:{line}: smarthost_oauth_token_command: {program}: {e}")
                })?;
            }
        }
        Ok(())
    }

    /// Parses the text of a config file: each line through its key's row, then the
    /// checks across keys (`validate`). No file is read.
    pub fn parse(path: &Path, text: &str) -> Result<Config, String> {
        let file = path.display();
        let mut c = Config {
            path: path.to_path_buf(),
            ..Config::default()
        };
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = raw.split_once('#').map_or(raw, |(a, _)| a).trim();
            if line.is_empty() {
                continue;
            }
            let (name, value) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            let err = |what: String| format!("{file}:{line_no}: {what}");
            if let Some(key) = HOST_KEYS.iter().find(|k| k.name == name) {
                if value.is_empty() {
                    return Err(err(format!("'{name}' needs a value")));
                }
                // In the block of the last named smarthost, else a default for all.
                let host = match c.smarthosts.last_mut() {
                    Some(h) => h,
                    None => &mut c.host_defaults,
                };
                let block = if host.named { host.line } else { 0 };
                let first = host
                    .lines
                    .iter()
                    .find(|(k, l)| *k == key.name && *l > block);
                if let Some((_, first)) = first {
                    return Err(err(format!(
                        "'{name}' given again (first on line {first}); it takes one value"
                    )));
                }
                host.lines.push((key.name, line_no));
                (key.parse)(host, value).map_err(err)?;
                c.lines.push((key.name, line_no));
                continue;
            }
            let Some(key) = TABLE.iter().find(|k| k.name == name) else {
                let hint = TABLE
                    .iter()
                    .map(|k| k.name)
                    .chain(HOST_KEYS.iter().map(|k| k.name))
                    .min_by_key(|k| edit_distance(k, name))
                    .filter(|k| edit_distance(k, name) <= 2);
                return Err(err(match hint {
                    Some(h) => format!("unknown key '{name}' (did you mean '{h}'?)"),
                    None => format!("unknown key '{name}'"),
                }));
            };
            if value.is_empty() {
                return Err(err(format!("'{name}' needs a value")));
            }
            let first = c.lines.iter().find(|(k, _)| *k == key.name);
            if let (Some((_, first)), false) = (first, key.repeatable) {
                return Err(err(format!(
                    "'{name}' given again (first on line {first}); it takes one value"
                )));
            }
            c.lines.push((key.name, line_no));
            (key.parse)(&mut c, value).map_err(err)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// The `FILE:LINE` of the `nth` line that gave `key`.
    fn nth_line(&self, key: &str, nth: usize) -> usize {
        let mut lines = self.lines.iter().filter(|(k, _)| *k == key);
        lines.nth(nth).map_or(0, |(_, l)| *l)
    }

    /// The one unnamed smarthost made the list, the routes' names made indexes, and
    /// the default route added unless the last `route` line has no condition.
    fn resolve_smarthosts(&mut self, at: &dyn Fn(usize, String) -> String) -> Result<(), String> {
        let file = self.path.display().to_string();
        if self.smarthosts.is_empty() {
            if self.host_defaults.line == 0 {
                return Err(format!(
                    "{file}: 'smarthost HOST:PORT' is required (the upstream server mail is \
                     relayed to)"
                ));
            }
            let mut h = self.host_defaults.clone();
            h.name = h.address.to_string();
            self.smarthosts.push(h);
        } else if self.smarthosts.len() > 64 {
            let what = "at most 64 smarthosts".to_string();
            return Err(at(self.smarthosts[64].line, what));
        }
        let names: Vec<String> = self.smarthosts.iter().map(|h| h.name.clone()).collect();
        let mut default_at = None;
        for r in &mut self.routes {
            if let Some(d) = default_at {
                let what = format!(
                    "this route is never used: the route on line {d} has no condition and takes all mail"
                );
                return Err(at(r.line, what));
            }
            if !self.smarthosts[0].named {
                let what = "route needs named smarthosts (smarthost NAME HOST:PORT)".to_string();
                return Err(at(r.line, what));
            }
            r.hosts.clear();
            for name in &r.via {
                let Some(i) = names.iter().position(|n| n == name) else {
                    let what = format!(
                        "route: no smarthost named '{name}' (there are: {})",
                        names.join(", ")
                    );
                    return Err(at(r.line, what));
                };
                if r.hosts.contains(&i) {
                    return Err(at(r.line, format!("route: '{name}' given twice")));
                }
                r.hosts.push(i);
            }
            if self.mode == Mode::Passthrough && !r.recipients.is_empty() {
                let what = "with mode passthrough a route can only choose by sender: the \
                            smarthost is chosen at MAIL, before any recipient";
                return Err(at(r.line, what.to_string()));
            }
            if r.is_default() {
                default_at = Some(r.line);
            }
        }
        if default_at.is_none() {
            self.routes.push(Route {
                via: names,
                hosts: (0..self.smarthosts.len()).collect(),
                senders: Vec::new(),
                recipients: Vec::new(),
                line: 0,
            });
        }
        Ok(())
    }

    /// The route for one recipient of a message from `sender` (empty for `<>`): the
    /// first that matches (the last one always does).
    pub fn route_of(&self, sender: &[u8], recipient: &[u8]) -> usize {
        self.routes
            .iter()
            .position(|r| r.matches(sender, recipient))
            .unwrap_or(self.routes.len() - 1)
    }

    /// The defaults that depend on what was given, and every check across keys.
    fn validate(&mut self) -> Result<(), String> {
        let file = self.path.display().to_string();
        let at = |line: usize, what: String| format!("{file}:{line}: {what}");
        // The same listener twice, or the same alias name twice.
        for (j, l) in self.listen.iter().enumerate() {
            if let Some(i) = self.listen[..j].iter().position(|o| o.addr == l.addr) {
                let what = format!(
                    "listen {} given twice (first on line {})",
                    l.addr,
                    self.nth_line("listen", i)
                );
                return Err(at(self.nth_line("listen", j), what));
            }
        }
        for (j, (name, _)) in self.alias.iter().enumerate() {
            if self.alias[..j].iter().any(|(n, _)| n == name) {
                let what = format!("alias '{name}' given twice");
                return Err(at(self.nth_line("alias", j), what));
            }
        }
        if self.listen.is_empty() {
            self.listen.push(Listen {
                addr: SocketAddr::from(([127, 0, 0, 1], 25)),
                tls: false,
            });
        }
        if self.line_of("allow") == 0 {
            self.allow = loopback();
        }
        if self.line_of("metrics_allow") == 0 {
            self.metrics_allow = loopback();
        }
        if self.line_of("connection_limit_exempt") == 0 {
            self.connection_limit_exempt = loopback();
        }
        self.resolve_smarthosts(&at)?;
        let line_of = |key: &str| self.line_of(key);
        let c = &*self;
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            let (have, need) = if c.tls_cert.is_some() {
                ("tls_cert", "tls_key")
            } else {
                ("tls_key", "tls_cert")
            };
            return Err(at(line_of(have), format!("{have} needs {need}")));
        }
        if c.tls_cert.is_none() && c.listen.iter().any(|l| l.tls) {
            let what = "a 'tls' listener needs tls_cert and tls_key".to_string();
            return Err(at(line_of("listen"), what));
        }
        if c.require_auth && c.auth_users.is_none() {
            let what = "require_auth needs auth_users".to_string();
            return Err(at(line_of("require_auth"), what));
        }
        if c.auth_users.is_some() && c.tls_cert.is_none() && !c.auth_plaintext {
            let what = "AUTH is only offered over TLS: set tls_cert and tls_key \
                        (or auth_plaintext yes, for clients on loopback)";
            return Err(at(line_of("auth_users"), what.to_string()));
        }
        if cfg!(not(feature = "tls")) && c.auth_users.is_some() {
            let what = "this smtp-relayd was built without TLS and AUTH".to_string();
            return Err(at(line_of("auth_users"), what));
        }
        if cfg!(not(feature = "tls")) && c.tls_cert.is_some() {
            let what = "this smtp-relayd was built without TLS".to_string();
            return Err(at(line_of("tls_cert"), what));
        }
        for h in &c.smarthosts {
            h.validate(&at)?;
        }
        if c.retry_max < c.retry_min {
            let line = c
                .lines
                .iter()
                .find(|(k, _)| *k == "retry_max" || *k == "retry_min")
                .map_or(0, |(_, l)| *l);
            let what = "retry_max must not be less than retry_min".to_string();
            return Err(at(line, what));
        }
        if c.max_connections < c.workers {
            let what = format!(
                "max_connections ({}) must be at least workers ({})",
                c.max_connections, c.workers
            );
            return Err(at(line_of("max_connections"), what));
        }
        Ok(())
    }

    /// The effective settings, in the file's own syntax, for `--check`: every row's
    /// print, in table order.
    pub fn effective(&self) -> String {
        let mut s = String::new();
        for key in TABLE {
            (key.print)(self, &mut s);
        }
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

fn parse_host_port(v: &str) -> Result<HostPort, String> {
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
    Ok(HostPort {
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
            c.smarthosts[0].address,
            HostPort {
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

    /// Named smarthosts: keys before the first are defaults, keys after a
    /// `smarthost` line are its own; routes resolve to indexes; `effective()` parses
    /// back to the same text.
    #[test]
    fn several_smarthosts_blocks_defaults_and_routes() {
        let text = "smarthost_tls none\nsmarthost_idle 7s\n\
                    smarthost a a.example:25\n  smarthost_connections 4\n\
                    smarthost b b.example:465\n  smarthost_tls implicit\n  smarthost_idle 1s\n\
                    route b recipient *@b.test\nroute b,a sender cron@*\n";
        let c = parse(text).unwrap();
        let names: Vec<&str> = c.smarthosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let (a, b) = (&c.smarthosts[0], &c.smarthosts[1]);
        assert_eq!(
            (a.tls, a.idle, a.connections),
            (SmarthostTls::None, Duration::from_secs(7), 4)
        );
        assert_eq!(
            (b.tls, b.idle, b.connections),
            (SmarthostTls::Implicit, Duration::from_secs(1), 2)
        );
        assert_eq!(b.address.port, 465);
        // The default route, every smarthost in order, is added after the given ones.
        let hosts: Vec<&[usize]> = c.routes.iter().map(|r| r.hosts.as_slice()).collect();
        assert_eq!(hosts, [&[1][..], &[1, 0], &[0, 1]]);
        assert_eq!(c.routes[2].line, 0);
        let cases: [(&str, &str, usize); 6] = [
            ("x@y", "r@b.test", 0),
            ("cron@box", "r@b.test", 0),
            ("cron@box", "r@a.test", 1),
            ("CRON@BOX", "r@a.test", 1),
            ("", "r@a.test", 2),
            ("x@y", "r@sub.b.test", 2),
        ];
        for (sender, rcpt, want) in cases {
            assert_eq!(
                c.route_of(sender.as_bytes(), rcpt.as_bytes()),
                want,
                "{sender} {rcpt}"
            );
        }
        let printed = c.effective();
        assert!(
            printed.contains("smarthost a a.example:25\n    smarthost_connections 4\n"),
            "{printed}"
        );
        assert!(printed.contains("route b,a sender cron@*\n"), "{printed}");
        assert_eq!(parse(&printed).unwrap().effective(), printed);
        // One unnamed smarthost: keys before and after it are its own, as always.
        let c = parse("smarthost_idle 3s\nsmarthost a.b:25\nsmarthost_tls none\n").unwrap();
        assert_eq!(c.smarthosts.len(), 1);
        assert_eq!(c.smarthosts[0].name, "a.b:25");
        assert_eq!(
            (c.smarthosts[0].idle, c.smarthosts[0].tls),
            (Duration::from_secs(3), SmarthostTls::None)
        );
        assert_eq!(c.routes.len(), 1);
        let e = parse("smarthost_idle 3s\nsmarthost a.b:25\nsmarthost_idle 4s\n").unwrap_err();
        assert!(
            e.contains("t.conf:3: 'smarthost_idle' given again (first on line 1)"),
            "{e}"
        );
        let e = parse("smarthost a.b:25\nsmarthost c.d:25\n").unwrap_err();
        assert!(
            e.contains("t.conf:2: 'smarthost' given again (first on line 1)"),
            "{e}"
        );
        let e = parse("smarthost a.b:25\nroute a.b:25\n").unwrap_err();
        assert!(e.contains("t.conf:2: smarthost name 'a.b:25'"), "{e}");
        let e = parse("smarthost a x:1\nsmarthost y:2\n").unwrap_err();
        assert!(
            e.contains("t.conf:2: this smarthost needs a name too"),
            "{e}"
        );
    }

    #[test]
    fn oauth_keys_validate_and_round_trip() {
        let base = "smarthost smtp.office365.com:587\nsmarthost_user alerts@example.net\n";
        let ok = |extra: &str| {
            let c = parse(&format!("{base}{extra}")).unwrap_or_else(|e| panic!("{extra}: {e}"));
            let printed = c.effective();
            let again = parse(&printed).unwrap_or_else(|e| panic!("{printed}: {e}"));
            assert_eq!(again.effective(), printed);
            again
        };
        let c = ok("smarthost_auth xoauth2\n\
                    smarthost_oauth_token_url https://login.microsoftonline.com/T/oauth2/v2.0/token\n\
                    smarthost_oauth_client_id app-1\n\
                    smarthost_oauth_scope \"https://outlook.office.com/SMTP.Send  offline_access\"\n\
                    smarthost_oauth_refresh_token_file /etc/smtp-relayd/refresh\n");
        assert_eq!(c.smarthosts[0].auth, SmarthostAuth::Xoauth2);
        assert_eq!(c.smarthosts[0].oauth.grant(), Grant::RefreshToken);
        assert_eq!(
            c.smarthosts[0].oauth.scope.as_deref(),
            Some("https://outlook.office.com/SMTP.Send offline_access")
        );
        assert_eq!(
            c.smarthosts[0].oauth.device_url().as_deref(),
            Some("https://login.microsoftonline.com/T/oauth2/v2.0/devicecode")
        );
        assert_eq!(c.smarthosts[0].oauth.timeout, Duration::from_secs(30));
        let c = ok("smarthost_auth oauthbearer\n\
                    smarthost_oauth_token_url https://127.0.0.1:8443/token\n\
                    smarthost_oauth_client_id app-1\n\
                    smarthost_oauth_client_secret_file /etc/smtp-relayd/secret\n\
                    smarthost_oauth_scope https://outlook.office365.com/.default\n\
                    smarthost_oauth_timeout 5s\n");
        assert_eq!(c.smarthosts[0].oauth.grant(), Grant::ClientCredentials);
        assert_eq!(c.smarthosts[0].oauth.timeout, Duration::from_secs(5));
        let c = ok("smarthost_auth xoauth2\n\
                    smarthost_oauth_token_command /usr/bin/oama access 'a b@x' \"it's\"\n");
        assert_eq!(c.smarthosts[0].oauth.grant(), Grant::Command);
        assert_eq!(
            c.smarthosts[0].oauth.token_command,
            ["/usr/bin/oama", "access", "a b@x", "it's"]
        );
        // Password mode prints no OAuth2 key.
        let c = ok("smarthost_password_file /etc/p\n");
        assert!(!c.effective().contains("oauth"), "{}", c.effective());
        let bad: &[(&str, &str)] = &[
            (
                "smarthost_auth xoauth2\nsmarthost_password_file /etc/p\n",
                "t.conf:4: smarthost_password_file is for",
            ),
            (
                "smarthost_auth xoauth2\n",
                "t.conf:3: smarthost_auth with a token needs smarthost_oauth_token_url",
            ),
            ("smarthost_auth kerberos\n", "t.conf:3: "),
            (
                "smarthost_oauth_client_id x\nsmarthost_password_file /etc/p\n",
                "t.conf:3: smarthost_oauth_client_id needs smarthost_auth xoauth2",
            ),
            (
                "smarthost_auth xoauth2\nsmarthost_tls none\nsmarthost_oauth_token_command /bin/t\n",
                "t.conf:3: a token is only sent over TLS",
            ),
            (
                "smarthost_auth xoauth2\nsmarthost_oauth_token_url http://h/token\n",
                "t.conf:4: smarthost_oauth_token_url: 'http://h/token' must be an https:// URL",
            ),
            (
                "smarthost_auth xoauth2\nsmarthost_oauth_token_url https://h/token\n",
                "t.conf:4: smarthost_oauth_token_url needs smarthost_oauth_client_id",
            ),
            (
                "smarthost_auth xoauth2\nsmarthost_oauth_token_url https://h/token\nsmarthost_oauth_client_id c\n",
                "the client credentials grant needs smarthost_oauth_client_secret_file",
            ),
            (
                "smarthost_auth xoauth2\nsmarthost_oauth_token_command /bin/t\nsmarthost_oauth_token_url https://h/token\n",
                "t.conf:5: smarthost_oauth_token_url does not go with smarthost_oauth_token_command",
            ),
            (
                "smarthost_auth xoauth2\nsmarthost_oauth_token_command t\n",
                "the program must be an absolute path",
            ),
            (
                "smarthost_auth xoauth2\nsmarthost_oauth_token_command /bin/t 'open\n",
                "unclosed quote",
            ),
            (
                "smarthost_auth xoauth2\nsmarthost_oauth_scope \"\"\n",
                "needs at least one scope",
            ),
        ];
        for (extra, want) in bad {
            let e = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
        }
        let e = parse(
            "smarthost a.b:587\nsmarthost_auth xoauth2\nsmarthost_oauth_token_command /bin/t\n",
        )
        .unwrap_err();
        assert!(e.contains("needs smarthost_user"), "{e}");
    }

    /// One row per key, each documented in the README's table of keys.
    #[test]
    fn every_key_is_one_row_and_documented() {
        let readme = include_str!("../README.md");
        let names: Vec<&str> = TABLE
            .iter()
            .map(|k| k.name)
            .chain(HOST_KEYS.iter().map(|k| k.name))
            .collect();
        for (i, name) in names.iter().enumerate() {
            struct Named<'a> {
                name: &'a str,
            }
            let key = Named { name };
            assert!(!names[..i].contains(name), "{name} twice");
            // The first cell of a row of the table: `` `name VALUE` `` (or two keys
            // in one row, comma-separated).
            let named = |cell: &str| {
                cell.split(", ").any(|k| {
                    let k = k.trim().trim_start_matches('`');
                    k.strip_prefix(key.name)
                        .is_some_and(|rest| rest.starts_with([' ', '`']))
                })
            };
            let documented = readme
                .lines()
                .filter_map(|l| l.strip_prefix("| `"))
                .any(|l| named(&format!("`{}", l.split(" | ").next().unwrap_or(""))));
            assert!(documented, "{} is not in the README's table", key.name);
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
