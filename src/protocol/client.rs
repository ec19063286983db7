//! The client side of SMTP (the relay talking to its smarthost) as a sans-IO state
//! machine, after OpenSMTPD's `mta_session`: greeting, EHLO (HELO fallback), then
//! transactions of MAIL, RCPT..., DATA, body, end of data, pipelined when the server
//! offers PIPELINING (RFC 2920), and QUIT.
//!
//! The relay's IO shell writes `output()`, reads replies with `ReplyReader`, hands each
//! to `on_reply`, and acts on the `Event`. A TLS stream slots in under the shell.

use core::fmt::Write as _;

use super::{base64, limits};

/// A reply from the server, or made up locally for a failure that has no reply.
/// The text is the reply's lines joined by spaces, cut to a bounded length, with
/// anything but printable ASCII replaced, so it is safe to log and to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// At most `REPLY_TEXT` characters.
    pub text: String,
}

/// How much of a reply's text is kept.
pub const REPLY_TEXT: usize = 320;

impl Reply {
    pub fn new(code: u16, text: &str) -> Self {
        let mut r = Reply {
            code,
            text: String::new(),
        };
        r.push_text(text.as_bytes());
        r
    }

    fn push_text(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.text.len() >= REPLY_TEXT {
                break;
            }
            self.text.push(if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            });
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl core::fmt::Display for Reply {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Why the server's bytes are not a reply (the connection is then dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    LineTooLong,
    TooManyLines,
    Syntax,
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LineTooLong => "reply line too long",
            Self::TooManyLines => "reply has too many lines",
            Self::Syntax => "not an SMTP reply",
        })
    }
}

/// A complete reply and the EHLO capabilities its lines named, or why it is bad.
pub type Parsed = Result<(Reply, Capabilities), ReplyError>;

/// Collects one reply at a time from the server's bytes, with a bound on the length
/// of a line and on the number of lines. Keeps the EHLO keywords as they pass.
#[derive(Debug)]
pub struct ReplyReader {
    line: heapless::Vec<u8, { limits::REPLY_LINE }>,
    overflow: bool,
    lines: usize,
    reply: Reply,
    capabilities: Capabilities,
}

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyReader {
    pub fn new() -> Self {
        Self {
            line: heapless::Vec::new(),
            overflow: false,
            lines: 0,
            reply: Reply::new(0, ""),
            capabilities: Capabilities::default(),
        }
    }

    /// Feeds bytes. Returns how many were consumed and, once a reply is complete,
    /// the reply with the capabilities its lines named (meaningful after EHLO).
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Parsed>) {
        let mut i = 0;
        while i < input.len() {
            // Up to the next LF at once (a line is short; most replies are one line).
            let rest = &input[i..];
            let (part, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(p) => (&rest[..p], true),
                None => (rest, false),
            };
            i += part.len() + usize::from(complete);
            if !self.overflow && self.line.extend_from_slice(part).is_err() {
                self.overflow = true;
            }
            if !complete {
                continue;
            }
            if self.overflow {
                return (i, Some(Err(self.fail(ReplyError::LineTooLong))));
            }
            let result = self.take_line();
            self.line.clear();
            match result {
                Ok(false) => {}
                Ok(true) => {
                    let reply = core::mem::replace(&mut self.reply, Reply::new(0, ""));
                    let caps = core::mem::take(&mut self.capabilities);
                    self.lines = 0;
                    return (i, Some(Ok((reply, caps))));
                }
                Err(e) => return (i, Some(Err(self.fail(e)))),
            }
        }
        (i, None)
    }

    /// Part of a reply line has been received and not yet handled.
    pub fn partial(&self) -> bool {
        !self.line.is_empty() || self.lines > 0
    }

    fn fail(&mut self, e: ReplyError) -> ReplyError {
        *self = Self::new();
        e
    }

    /// The line in `self.line` (without its LF): `ddd-text` (more follow) or
    /// `ddd text` / `ddd` (the last).
    fn take_line(&mut self) -> Result<bool, ReplyError> {
        let Self {
            line,
            lines,
            reply,
            capabilities,
            ..
        } = self;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        *lines += 1;
        if *lines > limits::REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        if line.len() < 3
            || !line[..3].iter().all(u8::is_ascii_digit)
            || !(b'2'..=b'5').contains(&line[0])
        {
            return Err(ReplyError::Syntax);
        }
        let code = line[..3]
            .iter()
            .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::Syntax),
        };
        let text = line.get(4..).unwrap_or(b"");
        if *lines == 1 {
            reply.code = code;
        } else {
            // RFC 5321 §4.2.1: every line of a reply has the same code.
            if code != reply.code {
                return Err(ReplyError::Syntax);
            }
            capabilities.add(text);
            reply.push_text(b" ");
        }
        reply.push_text(text);
        Ok(last)
    }
}

/// What the server said it offers in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// RFC 1870: the server's limit, when it gave one (0 means none).
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub enhanced_status_codes: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    pub auth_xoauth2: bool,
    pub auth_oauthbearer: bool,
}

impl Capabilities {
    /// One `ehlo-line`: a keyword and its parameters, case-insensitive.
    fn add(&mut self, line: &[u8]) {
        let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let Some(keyword) = words.next() else { return };
        let is = |k: &[u8]| keyword.eq_ignore_ascii_case(k);
        if is(b"PIPELINING") {
            self.pipelining = true;
        } else if is(b"SIZE") {
            let limit = words
                .next()
                .and_then(|w| core::str::from_utf8(w).ok())
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0);
            self.size = Some(limit);
        } else if is(b"8BITMIME") {
            self.eight_bit_mime = true;
        } else if is(b"SMTPUTF8") {
            self.smtputf8 = true;
        } else if is(b"STARTTLS") {
            self.starttls = true;
        } else if is(b"ENHANCEDSTATUSCODES") {
            self.enhanced_status_codes = true;
        } else if is(b"AUTH") {
            for mech in words {
                self.auth_plain |= mech.eq_ignore_ascii_case(b"PLAIN");
                self.auth_login |= mech.eq_ignore_ascii_case(b"LOGIN");
                self.auth_xoauth2 |= mech.eq_ignore_ascii_case(b"XOAUTH2");
                self.auth_oauthbearer |= mech.eq_ignore_ascii_case(b"OAUTHBEARER");
            }
        }
    }
}

/// The envelope of one message to send.
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    pub sender: &'a str,
    pub recipients: &'a [&'a str],
    /// The content size in octets, for SIZE= (RFC 1870).
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// One command of a passthrough transaction (see `Client::single`).
#[derive(Debug, Clone, Copy)]
pub enum Single<'a> {
    Mail {
        sender: &'a str,
        /// The size the client declared, if it did.
        size: Option<u64>,
        eight_bit: bool,
        smtputf8: bool,
    },
    Rcpt(&'a str),
    Data,
    Rset,
}

/// The result for one recipient once a transaction is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    Delivered(Reply),
    /// 4xx, or no answer: try again later.
    Deferred(Reply),
    /// 5xx: will never be delivered.
    Failed(Reply),
}

impl RcptResult {
    fn from_reply(reply: &Reply) -> Self {
        if reply.is_positive() {
            RcptResult::Delivered(reply.clone())
        } else if reply.is_permanent() {
            RcptResult::Failed(reply.clone())
        } else {
            RcptResult::Deferred(reply.clone())
        }
    }

    pub fn reply(&self) -> &Reply {
        match self {
            RcptResult::Delivered(r) | RcptResult::Deferred(r) | RcptResult::Failed(r) => r,
        }
    }
}

/// Named by the reply the client waits for, as in OpenSMTPD's `MTA_*` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Banner,
    Ehlo,
    Helo,
    /// STARTTLS was sent (RFC 3207 §4).
    StartTls,
    /// AUTH was sent without an initial response (it would not fit in the command
    /// line, RFC 4954 §4); the server's empty `334` asks for it.
    AuthChallenge,
    /// The response was sent (PLAIN, XOAUTH2, OAUTHBEARER; on the AUTH line or after
    /// `334`): the server answers 235, refuses, or (a token it does not take) sends an
    /// error challenge in a `334`.
    AuthResponse,
    /// The client answered an error challenge; the server's refusal comes next.
    AuthAbort,
    /// AUTH LOGIN was sent; the server asks for the user name next.
    AuthLogin,
    /// The user name was sent; the server asks for the password next.
    AuthLoginUser,
    /// The password was sent; the server answers 235 or refuses.
    AuthLoginPassword,
    /// Idle between transactions.
    Ready,
    Mail,
    Rcpt(usize),
    Data,
    /// 354 came: the shell is sending the body.
    Body,
    Eom,
    Rset,
    Quit,
    Closed,
}

/// What the shell does after `on_reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send what `output()` holds (if anything) and read the next reply.
    Continue,
    /// The session is open and idle: a transaction may start.
    Ready,
    /// The server agreed to STARTTLS: check that nothing else was received (anything
    /// buffered now would be trusted as if it came over TLS), do the handshake, then
    /// call `tls_started`.
    StartTls,
    /// Send the body, dot-stuffed and ended, then call `body_sent`.
    SendBody,
    /// The transaction is over; every recipient has its result. If `busy()`, an
    /// RSET reply is still to be read before the next transaction.
    Done(Vec<RcptResult>),
    /// The session cannot go on (bad greeting, EHLO and HELO refused, 421, QUIT
    /// answered): close the connection. The reply says why.
    Closed(Reply),
}

/// The relay's credentials at the smarthost. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    /// The account: AUTH's authcid, XOAUTH2's `user=`, OAUTHBEARER's `a=`.
    pub user: String,
    /// The password, or the OAuth2 access token.
    pub secret: String,
    pub mechanism: Mechanism,
}

/// How the secret is presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// A password, with PLAIN (RFC 4616) or else LOGIN, as the server offers.
    Password,
    /// A bearer token with Google's and Microsoft's `XOAUTH2`.
    Xoauth2,
    /// A bearer token with RFC 7628's `OAUTHBEARER`; the server's name and port go
    /// in the message, as §3.1 says the client SHOULD send them.
    Oauthbearer { host: String, port: u16 },
}

impl Mechanism {
    fn name(&self) -> &'static str {
        match self {
            Mechanism::Password => "PLAIN",
            Mechanism::Xoauth2 => "XOAUTH2",
            Mechanism::Oauthbearer { .. } => "OAUTHBEARER",
        }
    }
}

impl core::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, secret: <redacted>, mechanism: {:?} }}",
            self.user, self.mechanism
        )
    }
}

/// RFC 5801 §4 `saslname`: `,` and `=` escaped as `=2C` and `=3D`.
fn saslname(user: &str, out: &mut Vec<u8>) {
    for &b in user.as_bytes() {
        match b {
            b',' => out.extend_from_slice(b"=2C"),
            b'=' => out.extend_from_slice(b"=3D"),
            _ => out.push(b),
        }
    }
}

/// The client's first (and only) SASL message: PLAIN's `authzid NUL authcid NUL
/// passwd` (RFC 4616 §2, empty authzid), XOAUTH2's `user=U^Aauth=Bearer T^A^A`, or
/// OAUTHBEARER's `n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A` (RFC 7628 §3.1).
pub fn sasl_message(c: &Credentials) -> Vec<u8> {
    let mut m = Vec::with_capacity(c.user.len() + c.secret.len() + 64);
    match &c.mechanism {
        Mechanism::Password => {
            m.push(0);
            m.extend_from_slice(c.user.as_bytes());
            m.push(0);
            m.extend_from_slice(c.secret.as_bytes());
        }
        Mechanism::Xoauth2 => {
            m.extend_from_slice(b"user=");
            m.extend_from_slice(c.user.as_bytes());
            m.extend_from_slice(b"\x01auth=Bearer ");
            m.extend_from_slice(c.secret.as_bytes());
            m.extend_from_slice(b"\x01\x01");
        }
        Mechanism::Oauthbearer { host, port } => {
            m.extend_from_slice(b"n,a=");
            saslname(&c.user, &mut m);
            m.extend_from_slice(b",\x01host=");
            m.extend_from_slice(host.as_bytes());
            let _ = write!(Out(&mut m), "\x01port={port}\x01auth=Bearer ");
            m.extend_from_slice(c.secret.as_bytes());
            m.extend_from_slice(b"\x01\x01");
        }
    }
    m
}

/// What the session must do before it is ready for mail.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// STARTTLS is required: without it nothing is sent (no fallback to plaintext).
    pub starttls: bool,
    /// The connection is already TLS (implicit TLS, port 465).
    pub implicit_tls: bool,
    pub credentials: Option<Credentials>,
    /// AUTH may be sent without TLS (only with `smarthost_tls none`).
    pub auth_plaintext: bool,
}

/// Where a connection to the smarthost failed, for the log and for the relay's
/// choices (a permanent refusal at `Auth` is a configuration error, not the message's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before the connection: getting the OAuth2 token.
    Token,
    /// Before any reply: name resolution, TCP, implicit TLS.
    Connect,
    Greeting,
    /// EHLO, or HELO after it was refused.
    Hello,
    StartTls,
    Auth,
    /// MAIL onwards.
    Transaction,
}

impl core::fmt::Display for Stage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Stage::Token => "OAuth2 token",
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Hello => "EHLO/HELO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Transaction => "transaction",
        })
    }
}

pub struct Client {
    state: State,
    options: Options,
    tls: bool,
    /// The step at which the session last failed, for the log.
    stage: Stage,
    name: heapless::String<{ limits::DOMAIN }>,
    capabilities: Capabilities,
    out: Vec<u8>,
    /// Per recipient, its RCPT reply, then its final result.
    results: Vec<Option<RcptResult>>,
    mail_reply: Option<Reply>,
    accepted: usize,
    /// The recipients of the transaction, for RCPT one at a time without pipelining.
    pending: Vec<heapless::String<{ limits::MAILBOX }>>,
    /// A token's error challenge (RFC 7628 §3.2.2), decoded, for the refusal's text.
    auth_error: Option<String>,
}

impl Client {
    /// `name` is what the relay calls itself in EHLO.
    pub fn new(name: &str, options: Options) -> Self {
        let mut n = heapless::String::new();
        let _ = n.push_str(&name[..name.len().min(limits::DOMAIN)]);
        Self {
            state: State::Banner,
            tls: options.implicit_tls,
            options,
            stage: Stage::Greeting,
            name: n,
            capabilities: Capabilities::default(),
            out: Vec::with_capacity(1024),
            results: Vec::new(),
            mail_reply: None,
            accepted: 0,
            pending: Vec::new(),
            auth_error: None,
        }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Commands waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// A reply is awaited.
    pub fn busy(&self) -> bool {
        !matches!(self.state, State::Ready | State::Closed | State::Body)
    }

    /// Checks a transaction against what the server offers before anything is sent.
    /// An `Err` is the permanent reply to record for every recipient.
    pub fn check(&self, tx: &Transaction<'_>) -> Result<(), Reply> {
        if let Some(limit) = self.capabilities.size.filter(|&l| l > 0 && tx.size > l) {
            let mut r = Reply::new(552, "");
            let _ = write!(
                r.text,
                "5.3.4 message size {} exceeds smarthost limit {limit}",
                tx.size
            );
            return Err(r);
        }
        if tx.smtputf8 && !self.capabilities.smtputf8 {
            return Err(Reply::new(553, "5.6.7 smarthost does not support SMTPUTF8"));
        }
        Ok(())
    }

    /// Starts a transaction (the session must be ready, and `check` must have passed).
    /// With PIPELINING, MAIL, every RCPT and DATA go in one batch (RFC 2920 §3.1).
    pub fn start(&mut self, tx: &Transaction<'_>) {
        debug_assert!(self.is_ready());
        self.results.clear();
        self.results.resize(tx.recipients.len(), None);
        self.mail_reply = None;
        self.accepted = 0;
        let caps = self.capabilities;
        self.write_mail(tx.sender, Some(tx.size), tx.eight_bit, tx.smtputf8);
        if caps.pipelining {
            for r in tx.recipients {
                let _ = write!(Out(&mut self.out), "RCPT TO:<{r}>\r\n");
            }
            self.out.extend_from_slice(b"DATA\r\n");
        }
        self.pending = tx
            .recipients
            .iter()
            .map(|r| heapless::String::try_from(*r).unwrap_or_default())
            .collect();
        self.state = State::Mail;
    }

    /// `MAIL FROM:<sender>` with the parameters the server understands.
    fn write_mail(&mut self, sender: &str, size: Option<u64>, eight_bit: bool, smtputf8: bool) {
        let _ = write!(Out(&mut self.out), "MAIL FROM:<{sender}>");
        if let (Some(size), Some(_)) = (size, self.capabilities.size) {
            let _ = write!(Out(&mut self.out), " SIZE={size}");
        }
        if eight_bit && self.capabilities.eight_bit_mime {
            self.out.extend_from_slice(b" BODY=8BITMIME");
        }
        if smtputf8 {
            self.out.extend_from_slice(b" SMTPUTF8");
        }
        self.out.extend_from_slice(b"\r\n");
    }

    /// Passthrough: queues one command of a transaction whose reply the shell reads
    /// and hands to the client itself. The state machine stays ready (between
    /// transactions) as far as the session is concerned.
    pub fn single(&mut self, command: Single<'_>) {
        debug_assert!(self.is_ready());
        match command {
            Single::Mail {
                sender,
                size,
                eight_bit,
                smtputf8,
            } => self.write_mail(sender, size, eight_bit, smtputf8),
            Single::Rcpt(r) => {
                let _ = write!(Out(&mut self.out), "RCPT TO:<{r}>\r\n");
            }
            Single::Data => self.out.extend_from_slice(b"DATA\r\n"),
            Single::Rset => self.out.extend_from_slice(b"RSET\r\n"),
        }
    }

    /// The body and its end were sent: wait for the final reply.
    pub fn body_sent(&mut self) {
        debug_assert_eq!(self.state, State::Body);
        self.state = State::Eom;
    }

    /// Says goodbye (RFC 5321 §4.1.1.10).
    pub fn quit(&mut self) {
        self.out.extend_from_slice(b"QUIT\r\n");
        self.state = State::Quit;
    }

    /// The shell lost the connection (EOF, error, timeout). Recipients without a final
    /// result are deferred with `reason`.
    pub fn connection_lost(&mut self, reason: &Reply) -> Vec<RcptResult> {
        let in_tx = matches!(
            self.state,
            State::Mail | State::Rcpt(_) | State::Data | State::Body | State::Eom
        );
        self.state = State::Closed;
        if !in_tx {
            return Vec::new();
        }
        self.finish(|r| match r {
            Some(RcptResult::Failed(f)) => RcptResult::Failed(f.clone()),
            _ => RcptResult::Deferred(reason.clone()),
        })
    }

    fn finish(&mut self, f: impl Fn(&Option<RcptResult>) -> RcptResult) -> Vec<RcptResult> {
        self.results.iter().map(f).collect()
    }

    /// Handles one complete reply from the server.
    pub fn on_reply(&mut self, reply: Reply, caps: Capabilities) -> Event {
        // 421 at any point: the server is closing the channel (RFC 5321 §3.8).
        if reply.code == 421 && self.state != State::Quit {
            let results = self.connection_lost(&reply);
            return if results.is_empty() {
                Event::Closed(reply)
            } else {
                Event::Done(results)
            };
        }
        match self.state {
            State::Banner => {
                if reply.code != 220 {
                    return self.fail(Stage::Greeting, reply);
                }
                let _ = write!(Out(&mut self.out), "EHLO {}\r\n", self.name);
                self.state = State::Ehlo;
                Event::Continue
            }
            State::Ehlo => {
                if reply.code == 250 {
                    self.capabilities = caps;
                    return self.after_hello();
                }
                // §4.1.4: a server that does not know EHLO gets HELO.
                let _ = write!(Out(&mut self.out), "HELO {}\r\n", self.name);
                self.state = State::Helo;
                Event::Continue
            }
            State::Helo => {
                if reply.code != 250 {
                    return self.fail(Stage::Hello, reply);
                }
                self.capabilities = Capabilities::default();
                self.after_hello()
            }
            State::StartTls => {
                if reply.code != 220 {
                    return self.fail(Stage::StartTls, reply);
                }
                Event::StartTls
            }
            State::AuthChallenge => {
                if reply.code != 334 {
                    return self.fail(Stage::Auth, reply);
                }
                let Some(c) = self.options.credentials.as_ref() else {
                    return self.fail(Stage::Auth, reply);
                };
                let mut line = String::new();
                base64::encode(&sasl_message(c), &mut line);
                line.push_str("\r\n");
                self.out.extend_from_slice(line.as_bytes());
                self.state = State::AuthResponse;
                Event::Continue
            }
            State::AuthResponse if reply.code == 334 => {
                // RFC 7628 §3.2.3: an error challenge is answered with a single ^A
                // (OAUTHBEARER), XOAUTH2 with an empty line; the refusal follows.
                let text = reply.text.strip_prefix("334").unwrap_or(&reply.text);
                let mut decoded = heapless::Vec::<u8, 512>::new();
                if base64::decode(text.trim().as_bytes(), &mut decoded).is_some() {
                    self.auth_error = Some(Reply::new(0, &String::from_utf8_lossy(&decoded)).text);
                }
                let oauthbearer = matches!(
                    self.options.credentials.as_ref().map(|c| &c.mechanism),
                    Some(Mechanism::Oauthbearer { .. })
                );
                self.out
                    .extend_from_slice(if oauthbearer { b"AQ==\r\n" } else { b"\r\n" });
                self.state = State::AuthAbort;
                Event::Continue
            }
            State::AuthAbort => {
                let mut reply = reply;
                if let Some(said) = self.auth_error.take() {
                    let text = format!("{} (error challenge: {said})", reply.text);
                    reply = Reply::new(reply.code, &text);
                }
                if reply.code == 235 {
                    // Success after an error challenge is not a thing; do not trust it.
                    reply = Reply::new(535, &reply.text);
                }
                self.fail(Stage::Auth, reply)
            }
            State::AuthResponse | State::AuthLoginPassword => {
                if reply.code != 235 {
                    return self.fail(Stage::Auth, reply);
                }
                self.options.credentials = None;
                self.state = State::Ready;
                Event::Ready
            }
            State::AuthLogin | State::AuthLoginUser => {
                if reply.code != 334 {
                    return self.fail(Stage::Auth, reply);
                }
                let Some(c) = self.options.credentials.as_ref() else {
                    return self.fail(Stage::Auth, reply);
                };
                let mut line = String::new();
                if self.state == State::AuthLogin {
                    base64::encode(c.user.as_bytes(), &mut line);
                    self.state = State::AuthLoginUser;
                } else {
                    base64::encode(c.secret.as_bytes(), &mut line);
                    self.state = State::AuthLoginPassword;
                }
                line.push_str("\r\n");
                self.out.extend_from_slice(line.as_bytes());
                Event::Continue
            }
            State::Mail => {
                let ok = reply.is_positive();
                self.mail_reply = Some(reply);
                if ok {
                    self.next_rcpt(0)
                } else if self.capabilities.pipelining {
                    // RCPT and DATA replies still come; read them, they change nothing.
                    self.state = State::Rcpt(0);
                    Event::Continue
                } else {
                    self.done()
                }
            }
            State::Rcpt(i) => {
                if self.mail_reply.as_ref().is_some_and(Reply::is_positive) {
                    if reply.is_positive() {
                        self.accepted += 1;
                    } else {
                        self.results[i] = Some(RcptResult::from_reply(&reply));
                    }
                }
                self.next_rcpt(i + 1)
            }
            State::Data => {
                if reply.code == 354 {
                    if self.accepted > 0 {
                        self.state = State::Body;
                        return Event::SendBody;
                    }
                    // RFC 2920 §3.1: DATA was taken with no valid recipient; send an
                    // empty message to end it, and ignore the result.
                    self.out.extend_from_slice(b".\r\n");
                    self.mail_reply
                        .get_or_insert(Reply::new(554, "5.5.1 no valid recipients"));
                    self.state = State::Eom;
                    return Event::Continue;
                }
                if self.accepted > 0 {
                    // DATA refused: every accepted recipient shares that fate.
                    self.settle_accepted(&reply);
                }
                self.done()
            }
            State::Eom => {
                if self.accepted > 0 {
                    self.settle_accepted(&reply);
                }
                self.done()
            }
            State::Rset => {
                if reply.is_positive() {
                    self.state = State::Ready;
                    Event::Ready
                } else {
                    self.state = State::Closed;
                    Event::Closed(reply)
                }
            }
            State::Quit => {
                self.state = State::Closed;
                Event::Closed(reply)
            }
            State::Ready | State::Body | State::Closed => {
                // A reply nobody asked for: the peer is out of step; drop it.
                self.state = State::Closed;
                Event::Closed(Reply::new(reply.code, "unexpected reply from smarthost"))
            }
        }
    }

    /// After a successful EHLO or HELO: STARTTLS if required, then AUTH if configured,
    /// then ready. A server that cannot do what is required gets QUIT and nothing else.
    fn after_hello(&mut self) -> Event {
        if self.options.starttls && !self.tls {
            if !self.capabilities.starttls {
                return self.give_up(
                    Stage::StartTls,
                    "4.7.0 smarthost does not offer STARTTLS; nothing was sent",
                );
            }
            self.out.extend_from_slice(b"STARTTLS\r\n");
            self.state = State::StartTls;
            return Event::Continue;
        }
        if let Some(c) = &self.options.credentials {
            if !self.tls && !self.options.auth_plaintext {
                return self.give_up(
                    Stage::Auth,
                    "4.7.0 refusing to send credentials without TLS",
                );
            }
            let caps = &self.capabilities;
            let offered = match c.mechanism {
                Mechanism::Password => caps.auth_plain,
                Mechanism::Xoauth2 => caps.auth_xoauth2,
                Mechanism::Oauthbearer { .. } => caps.auth_oauthbearer,
            };
            if !offered {
                if c.mechanism == Mechanism::Password && caps.auth_login {
                    self.out.extend_from_slice(b"AUTH LOGIN\r\n");
                    self.state = State::AuthLogin;
                    return Event::Continue;
                }
                let why = match c.mechanism {
                    Mechanism::Password => {
                        "4.7.0 smarthost offers neither AUTH PLAIN nor AUTH LOGIN".to_string()
                    }
                    _ => format!(
                        "4.7.0 smarthost does not offer AUTH {}; nothing was sent",
                        c.mechanism.name()
                    ),
                };
                return self.give_up(Stage::Auth, &why);
            }
            let mut response = String::new();
            base64::encode(&sasl_message(c), &mut response);
            if response.len() + 2 > limits::AUTH_LINE {
                return self.give_up(
                    Stage::Auth,
                    "4.7.0 the credentials are longer than an AUTH line may be (12,288 octets)",
                );
            }
            let mut line = format!("AUTH {}", c.mechanism.name());
            // RFC 4954 §4: the initial response only if the command line stays within
            // 512 octets; else the response follows the server's 334.
            if line.len() + 1 + response.len() + 2 <= limits::COMMAND_LINE {
                line.push(' ');
                line.push_str(&response);
                self.state = State::AuthResponse;
            } else {
                self.state = State::AuthChallenge;
            }
            line.push_str("\r\n");
            self.out.extend_from_slice(line.as_bytes());
            return Event::Continue;
        }
        self.state = State::Ready;
        Event::Ready
    }

    /// The handshake after STARTTLS succeeded: forget what was said in plaintext and
    /// say EHLO again (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        debug_assert_eq!(self.state, State::StartTls);
        self.tls = true;
        self.capabilities = Capabilities::default();
        let _ = write!(Out(&mut self.out), "EHLO {}\r\n", self.name);
        self.state = State::Ehlo;
    }

    /// The step at which the session last failed.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The step the session is at now.
    pub fn stage_now(&self) -> Stage {
        match self.state {
            State::Banner => Stage::Greeting,
            State::Ehlo | State::Helo => Stage::Hello,
            State::StartTls => Stage::StartTls,
            State::AuthChallenge
            | State::AuthResponse
            | State::AuthAbort
            | State::AuthLogin
            | State::AuthLoginUser
            | State::AuthLoginPassword => Stage::Auth,
            _ => Stage::Transaction,
        }
    }

    fn fail(&mut self, stage: Stage, reply: Reply) -> Event {
        self.stage = stage;
        self.state = State::Closed;
        Event::Closed(reply)
    }

    /// Ends a session the server cannot serve as required: QUIT, and a local reason.
    fn give_up(&mut self, stage: Stage, why: &str) -> Event {
        self.out.extend_from_slice(b"QUIT\r\n");
        self.fail(stage, Reply::new(454, why))
    }

    fn settle_accepted(&mut self, reply: &Reply) {
        for r in self.results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(RcptResult::from_reply(reply));
        }
    }

    /// After RCPT number `i` was answered: send the next one (without pipelining),
    /// or move on to DATA.
    fn next_rcpt(&mut self, i: usize) -> Event {
        if i < self.results.len() {
            if !self.capabilities.pipelining {
                let _ = write!(Out(&mut self.out), "RCPT TO:<{}>\r\n", self.pending[i]);
            }
            self.state = State::Rcpt(i);
            return Event::Continue;
        }
        if self.capabilities.pipelining {
            self.state = State::Data;
            return Event::Continue;
        }
        if self.accepted == 0 {
            return self.done();
        }
        self.out.extend_from_slice(b"DATA\r\n");
        self.state = State::Data;
        Event::Continue
    }

    /// Every recipient gets its result; a failed transaction is reset with RSET.
    fn done(&mut self) -> Event {
        let mail = self
            .mail_reply
            .take()
            .unwrap_or_else(|| Reply::new(451, "4.3.0 no reply to MAIL"));
        let results: Vec<RcptResult> = self
            .results
            .iter()
            .map(|r| match r {
                Some(r) => r.clone(),
                None if !mail.is_positive() => RcptResult::from_reply(&mail),
                None => RcptResult::Deferred(Reply::new(
                    451,
                    "4.3.0 transaction ended without a result",
                )),
            })
            .collect();
        let delivered = results
            .iter()
            .any(|r| matches!(r, RcptResult::Delivered(_)));
        if delivered {
            self.state = State::Ready;
        } else {
            self.out.extend_from_slice(b"RSET\r\n");
            self.state = State::Rset;
        }
        Event::Done(results)
    }
}

/// `fmt::Write` into a byte vector.
struct Out<'a>(&'a mut Vec<u8>);

impl core::fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Parsed> {
        let mut r = ReplyReader::new();
        let mut out = vec![];
        let mut pos = 0;
        // One octet at a time: the reader must not care how replies are split.
        while pos < bytes.len() {
            let (n, got) = r.feed(&bytes[pos..pos + 1]);
            pos += n;
            if let Some(got) = got {
                out.push(got);
            }
        }
        out
    }

    #[test]
    fn reply_reader_table() {
        let got = read_all(b"220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-auth login PLAIN\r\n250 8BITMIME\r\n");
        let (r, _) = got[0].clone().unwrap();
        assert_eq!((r.code, r.text.as_str()), (220, "mx.test ESMTP"));
        let (r, caps) = got[1].clone().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(
            caps,
            Capabilities {
                pipelining: true,
                size: Some(1000),
                eight_bit_mime: true,
                auth_plain: true,
                auth_login: true,
                ..Default::default()
            }
        );
        assert_eq!(read_all(b"250\r\n")[0].clone().unwrap().0.code, 250);
        assert_eq!(
            read_all(b"250 ok\n")[0].clone().unwrap().0.code,
            250,
            "bare LF is tolerated"
        );
        assert_eq!(read_all(b"25 x\r\n")[0], Err(ReplyError::Syntax));
        assert_eq!(read_all(b"250-a\r\n251 b\r\n")[0], Err(ReplyError::Syntax));
        assert_eq!(read_all(b"250xok\r\n")[0], Err(ReplyError::Syntax));
        assert_eq!(read_all(b"hello\r\n")[0], Err(ReplyError::Syntax));
        assert_eq!(read_all(b"650 x\r\n")[0], Err(ReplyError::Syntax));
        let long = [&b"250 "[..], &[b'x'; 5000], b"\r\n"].concat();
        assert_eq!(read_all(&long)[0], Err(ReplyError::LineTooLong));
        let many = b"250-x\r\n".repeat(200);
        assert_eq!(read_all(&many)[0], Err(ReplyError::TooManyLines));
        let r = read_all(b"550 bad \x1b[31mred\xff\r\n")[0]
            .clone()
            .unwrap()
            .0;
        assert_eq!(r.text.as_str(), "bad ?[31mred?");
    }

    /// Drives a client with scripted server replies; returns what it sent and the events.
    fn drive(client: &mut Client, replies: &[&str]) -> (String, Vec<Event>) {
        let mut sent = String::new();
        let mut events = vec![];
        let mut reader = ReplyReader::new();
        for r in replies {
            let bytes = r.replace('|', "\r\n");
            let mut pos = 0;
            while pos < bytes.len() {
                let (n, got) = reader.feed(&bytes.as_bytes()[pos..]);
                pos += n;
                if let Some(Ok((reply, caps))) = got {
                    let ev = client.on_reply(reply, caps);
                    if ev == Event::SendBody {
                        client.body_sent();
                    }
                    events.push(ev);
                }
            }
            sent.push_str(std::str::from_utf8(client.output()).unwrap());
            client.clear_output();
        }
        (sent, events)
    }

    fn tx<'a>(rcpts: &'a [&'a str]) -> Transaction<'a> {
        Transaction {
            sender: "a@b.c",
            recipients: rcpts,
            size: 42,
            eight_bit: true,
            smtputf8: false,
        }
    }

    fn codes(results: &[RcptResult]) -> Vec<(char, u16)> {
        results
            .iter()
            .map(|r| match r {
                RcptResult::Delivered(r) => ('D', r.code),
                RcptResult::Deferred(r) => ('T', r.code),
                RcptResult::Failed(r) => ('F', r.code),
            })
            .collect()
    }

    fn ready(ehlo: &str) -> Client {
        let mut c = Client::new("relay.test", Options::default());
        let (sent, ev) = drive(&mut c, &["220 mx|", ehlo]);
        assert_eq!(sent, "EHLO relay.test\r\n");
        assert_eq!(ev.last(), Some(&Event::Ready));
        c
    }

    #[test]
    fn pipelined_transaction_with_mixed_recipients() {
        let mut c = ready("250-mx|250-PIPELINING|250-SIZE 100|250 8BITMIME|");
        let rcpts = ["ok@x", "later@x", "never@x"];
        c.start(&tx(&rcpts));
        assert_eq!(
            std::str::from_utf8(c.output()).unwrap(),
            "MAIL FROM:<a@b.c> SIZE=42 BODY=8BITMIME\r\nRCPT TO:<ok@x>\r\nRCPT TO:<later@x>\r\nRCPT TO:<never@x>\r\nDATA\r\n"
        );
        c.clear_output();
        let (_, ev) = drive(
            &mut c,
            &["250 ok|250 ok|450 busy|550 no|354 go|", "250 queued|"],
        );
        assert_eq!(ev[4], Event::SendBody);
        let Event::Done(results) = &ev[5] else {
            panic!("{ev:?}")
        };
        assert_eq!(codes(results), [('D', 250), ('T', 450), ('F', 550)]);
        assert!(c.is_ready());
    }

    #[test]
    fn one_at_a_time_without_pipelining() {
        let mut c = ready("250-mx|250 SIZE|");
        let rcpts = ["r1@x", "r2@x"];
        c.start(&tx(&rcpts));
        assert_eq!(
            std::str::from_utf8(c.output()).unwrap(),
            "MAIL FROM:<a@b.c> SIZE=42\r\n"
        );
        c.clear_output();
        let (sent, ev) = drive(
            &mut c,
            &["250 ok|", "250 ok|", "250 ok|", "354 go|", "451 try later|"],
        );
        assert_eq!(sent, "RCPT TO:<r1@x>\r\nRCPT TO:<r2@x>\r\nDATA\r\nRSET\r\n");
        let Event::Done(results) = ev.last().unwrap() else {
            panic!()
        };
        assert_eq!(codes(results), [('T', 451), ('T', 451)]);
        assert!(c.busy(), "RSET reply pending");
        let (_, ev) = drive(&mut c, &["250 ok|"]);
        assert_eq!(ev, [Event::Ready]);
    }

    #[test]
    fn failures_before_data() {
        // MAIL refused permanently, pipelined: the rest of the batch is read, all fail.
        let mut c = ready("250-mx|250 PIPELINING|");
        c.start(&tx(&["r@x"]));
        c.clear_output();
        let (sent, ev) = drive(&mut c, &["553 sender rejected|503 no mail|503 no rcpt|"]);
        let Event::Done(results) = ev.last().unwrap() else {
            panic!()
        };
        assert_eq!(codes(results), [('F', 553)]);
        assert_eq!(sent, "RSET\r\n");

        // All recipients refused, not pipelined: no DATA is sent.
        let mut c = ready("250 mx|");
        c.start(&tx(&["r@x"]));
        c.clear_output();
        let (sent, ev) = drive(&mut c, &["250 ok|", "450 mailbox busy|"]);
        assert_eq!(sent, "RCPT TO:<r@x>\r\nRSET\r\n");
        let Event::Done(results) = ev.last().unwrap() else {
            panic!()
        };
        assert_eq!(codes(results), [('T', 450)]);

        // Pipelined, no valid recipient, but DATA says 354 anyway: send an empty end.
        let mut c = ready("250-mx|250 PIPELINING|");
        c.start(&tx(&["r@x"]));
        c.clear_output();
        let (sent, ev) = drive(
            &mut c,
            &["250 ok|550 no|354 go|", "554 no valid recipients|"],
        );
        assert!(sent.starts_with(".\r\n"), "{sent:?}");
        let Event::Done(results) = ev.last().unwrap() else {
            panic!()
        };
        assert_eq!(codes(results), [('F', 550)]);
    }

    #[test]
    fn session_level_failures() {
        let mut c = Client::new("relay.test", Options::default());
        let (_, ev) = drive(&mut c, &["554 go away|"]);
        assert!(matches!(&ev[0], Event::Closed(r) if r.code == 554));

        let mut c = Client::new("relay.test", Options::default());
        let (sent, ev) = drive(&mut c, &["220 old|", "500 what|", "250 old|"]);
        assert_eq!(sent, "EHLO relay.test\r\nHELO relay.test\r\n");
        assert_eq!(ev.last(), Some(&Event::Ready));

        // 421 during a transaction defers everyone and ends the session.
        let mut c = ready("250-mx|250 PIPELINING|");
        c.start(&tx(&["r1@x", "r2@x"]));
        let (_, ev) = drive(&mut c, &["250 ok|421 shutting down|"]);
        let Event::Done(results) = ev.last().unwrap() else {
            panic!()
        };
        assert_eq!(codes(results), [('T', 421), ('T', 421)]);
        assert!(!c.busy() && !c.is_ready());

        // A lost connection after the body defers (at-least-once) the accepted ones.
        let mut c = ready("250-mx|250 PIPELINING|");
        c.start(&tx(&["r1@x", "r2@x"]));
        let (_, ev) = drive(&mut c, &["250 ok|250 ok|550 no|354 go|"]);
        assert_eq!(ev.last(), Some(&Event::SendBody));
        let results = c.connection_lost(&Reply::new(451, "4.4.2 lost connection"));
        assert_eq!(codes(&results), [('T', 451), ('F', 550)]);
    }

    #[test]
    fn checks_before_sending() {
        let c = ready("250-mx|250 SIZE 10|");
        assert_eq!(c.check(&tx(&["r@x"])).unwrap_err().code, 552);
        let c = ready("250-mx|250 SIZE 0|");
        assert!(c.check(&tx(&["r@x"])).is_ok());
        let c = ready("250 mx|");
        let t = Transaction {
            smtputf8: true,
            ..tx(&["r@x"])
        };
        assert_eq!(c.check(&t).unwrap_err().code, 553);
    }

    fn creds() -> Credentials {
        Credentials {
            user: "user".into(),
            secret: "pass".into(),
            mechanism: Mechanism::Password,
        }
    }

    #[test]
    fn starttls_then_ehlo_again_then_auth_plain() {
        let opts = Options {
            starttls: true,
            credentials: Some(creds()),
            ..Default::default()
        };
        let mut c = Client::new("relay.test", opts);
        // Before TLS the server offers AUTH too; nothing of it is used.
        let (sent, ev) = drive(
            &mut c,
            &["220 mx|", "250-mx|250-STARTTLS|250 AUTH PLAIN LOGIN|"],
        );
        assert_eq!(sent, "EHLO relay.test\r\nSTARTTLS\r\n");
        assert_eq!(ev.last(), Some(&Event::Continue));
        let (_, ev) = drive(&mut c, &["220 2.0.0 ready for TLS|"]);
        assert_eq!(ev, [Event::StartTls]);
        c.tls_started();
        assert_eq!(
            std::str::from_utf8(c.output()).unwrap(),
            "EHLO relay.test\r\n"
        );
        c.clear_output();
        let (sent, _) = drive(&mut c, &["250-mx|250-AUTH LOGIN PLAIN|250 PIPELINING|"]);
        assert_eq!(sent, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
        let (_, ev) = drive(&mut c, &["235 2.7.0 ok|"]);
        assert_eq!(ev, [Event::Ready]);
        assert!(
            c.capabilities().pipelining,
            "the capabilities after TLS are used"
        );
    }

    #[test]
    fn auth_login_over_implicit_tls() {
        let opts = Options {
            implicit_tls: true,
            credentials: Some(creds()),
            ..Default::default()
        };
        let mut c = Client::new("relay.test", opts);
        let (sent, ev) = drive(
            &mut c,
            &[
                "220 mx|",
                "250-mx|250 AUTH LOGIN|",
                "334 VXNlcm5hbWU6|",
                "334 UGFzc3dvcmQ6|",
                "235 ok|",
            ],
        );
        assert_eq!(
            sent,
            "EHLO relay.test\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n"
        );
        assert_eq!(ev.last(), Some(&Event::Ready));
    }

    #[test]
    fn what_is_required_is_never_skipped() {
        // STARTTLS required, not offered: QUIT, nothing else.
        let mut c = Client::new(
            "relay.test",
            Options {
                starttls: true,
                ..Default::default()
            },
        );
        let (sent, ev) = drive(&mut c, &["220 mx|", "250-mx|250 PIPELINING|"]);
        assert_eq!(sent, "EHLO relay.test\r\nQUIT\r\n");
        assert!(matches!(ev.last(), Some(Event::Closed(r)) if r.code == 454));
        assert_eq!(c.stage(), Stage::StartTls);
        // STARTTLS refused.
        let mut c = Client::new(
            "relay.test",
            Options {
                starttls: true,
                ..Default::default()
            },
        );
        let (_, ev) = drive(
            &mut c,
            &[
                "220 mx|",
                "250-mx|250 STARTTLS|",
                "454 4.7.0 TLS not available|",
            ],
        );
        assert!(matches!(ev.last(), Some(Event::Closed(r)) if r.code == 454));
        // Credentials without TLS are not sent.
        let mut c = Client::new(
            "relay.test",
            Options {
                credentials: Some(creds()),
                ..Default::default()
            },
        );
        let (sent, ev) = drive(&mut c, &["220 mx|", "250-mx|250 AUTH PLAIN|"]);
        assert!(!sent.contains("AUTH"), "{sent}");
        assert!(matches!(ev.last(), Some(Event::Closed(_))));
        // ...unless plaintext AUTH was allowed explicitly.
        let opts = Options {
            credentials: Some(creds()),
            auth_plaintext: true,
            ..Default::default()
        };
        let mut c = Client::new("relay.test", opts);
        let (sent, _) = drive(&mut c, &["220 mx|", "250-mx|250 AUTH PLAIN|"]);
        assert!(sent.contains("AUTH PLAIN"));
        // AUTH refused: a session failure at AUTH (the relay keeps the mail queued).
        let (_, ev) = drive(&mut c, &["535 5.7.8 Authentication credentials invalid|"]);
        assert!(matches!(ev.last(), Some(Event::Closed(r)) if r.code == 535));
        assert_eq!(c.stage(), Stage::Auth);
        // A server offering no usable mechanism.
        let opts = Options {
            implicit_tls: true,
            credentials: Some(creds()),
            ..Default::default()
        };
        let mut c = Client::new("relay.test", opts);
        let (sent, ev) = drive(&mut c, &["220 mx|", "250-mx|250 AUTH CRAM-MD5|"]);
        assert_eq!(sent, "EHLO relay.test\r\nQUIT\r\n");
        assert!(matches!(ev.last(), Some(Event::Closed(_))));
    }

    fn bearer(mechanism: Mechanism, token: &str) -> Options {
        Options {
            implicit_tls: true,
            credentials: Some(Credentials {
                user: "someuser@example.com".into(),
                secret: token.into(),
                mechanism,
            }),
            ..Default::default()
        }
    }

    fn b64(bytes: &[u8]) -> String {
        let mut s = String::new();
        base64::encode(bytes, &mut s);
        s
    }

    #[test]
    fn sasl_messages_as_the_documents_give_them() {
        // Google's XOAUTH2 document: user={User}^Aauth=Bearer {Access Token}^A^A.
        let c = |mechanism, user: &str| Credentials {
            user: user.into(),
            secret: "vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==".into(),
            mechanism,
        };
        assert_eq!(
            sasl_message(&c(Mechanism::Xoauth2, "someuser@example.com")),
            b"user=someuser@example.com\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01"
        );
        // RFC 7628 §4.1's example, with its host and port.
        let ob = Mechanism::Oauthbearer {
            host: "server.example.com".into(),
            port: 143,
        };
        assert_eq!(
            sasl_message(&c(ob.clone(), "user@example.com")),
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01"
        );
        // RFC 5801 saslname: ',' and '=' are escaped in a=.
        let m = sasl_message(&c(ob, "a,b=c"));
        assert!(m.starts_with(b"n,a=a=2Cb=3Dc,\x01"), "{m:?}");
        // PLAIN: empty authzid, NUL, authcid, NUL, password (RFC 4616 §2).
        assert_eq!(sasl_message(&creds()), b"\0user\0pass");
    }

    #[test]
    fn xoauth2_and_oauthbearer_with_a_short_token_on_the_auth_line() {
        for (mech, name) in [
            (Mechanism::Xoauth2, "XOAUTH2"),
            (
                Mechanism::Oauthbearer {
                    host: "mx.test".into(),
                    port: 587,
                },
                "OAUTHBEARER",
            ),
        ] {
            let opts = bearer(mech, "tok");
            let expect = b64(&sasl_message(opts.credentials.as_ref().unwrap()));
            let mut c = Client::new("relay.test", opts);
            let (sent, ev) = drive(
                &mut c,
                &[
                    "220 mx|",
                    "250-mx|250 AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER|",
                    "235 2.7.0 Accepted|",
                ],
            );
            assert_eq!(sent, format!("EHLO relay.test\r\nAUTH {name} {expect}\r\n"));
            assert_eq!(ev.last(), Some(&Event::Ready));
        }
    }

    #[test]
    fn a_long_token_goes_after_the_334_not_on_the_auth_line() {
        // Microsoft's tokens are over 2 KiB: the AUTH line would pass 512 octets.
        let token = "t".repeat(4096);
        let opts = bearer(Mechanism::Xoauth2, &token);
        let expect = b64(&sasl_message(opts.credentials.as_ref().unwrap()));
        let mut c = Client::new("relay.test", opts);
        let (sent, _) = drive(&mut c, &["220 mx|", "250-mx|250 AUTH LOGIN XOAUTH2|"]);
        assert_eq!(sent, "EHLO relay.test\r\nAUTH XOAUTH2\r\n");
        let (sent, _) = drive(&mut c, &["334 |"]);
        assert_eq!(sent, format!("{expect}\r\n"));
        assert!(sent.len() > 5000 && sent.len() <= limits::AUTH_LINE);
        let (_, ev) = drive(&mut c, &["235 2.7.0 Authentication successful|"]);
        assert_eq!(ev, [Event::Ready]);
        // The AUTH line carries the response while it stays within 512 octets:
        // "user=someuser@example.com^Aauth=Bearer " + token + "^A^A" is 40 + n
        // octets, base64 4*ceil((40+n)/3), after "AUTH XOAUTH2 " (13), then CRLF.
        let line_len = |n: usize| {
            let mut c = Client::new("r", bearer(Mechanism::Xoauth2, &"x".repeat(n)));
            let (sent, _) = drive(&mut c, &["220 mx|", "250-mx|250 AUTH XOAUTH2|"]);
            sent.lines().nth(1).unwrap().len() + 2
        };
        assert_eq!(line_len(332), 13 + 496 + 2);
        assert_eq!(line_len(333), "AUTH XOAUTH2\r\n".len());
        // A token no AUTH line can carry is not sent.
        let mut c = Client::new("r", bearer(Mechanism::Xoauth2, &"x".repeat(9300)));
        let (sent, ev) = drive(&mut c, &["220 mx|", "250-mx|250 AUTH XOAUTH2|"]);
        assert_eq!(sent, "EHLO r\r\nQUIT\r\n");
        assert!(matches!(ev.last(), Some(Event::Closed(r)) if r.code == 454));
    }

    #[test]
    fn a_refused_token_answers_the_error_challenge_then_fails_at_auth() {
        // Google: 334 with base64 JSON, the client sends an empty line, then 535.
        let json = br#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
        let challenge = format!("334 {}|", b64(json));
        let mut c = Client::new("relay.test", bearer(Mechanism::Xoauth2, "old"));
        drive(&mut c, &["220 mx|", "250-mx|250 AUTH XOAUTH2|"]);
        let (sent, ev) = drive(&mut c, &[challenge.as_str()]);
        assert_eq!((sent.as_str(), ev[0].clone()), ("\r\n", Event::Continue));
        let (sent, ev) = drive(
            &mut c,
            &["535-5.7.8 Username and Password not accepted|535 5.7.8 Learn more|"],
        );
        assert_eq!(sent, "");
        let Some(Event::Closed(r)) = ev.last() else {
            panic!("{ev:?}")
        };
        assert_eq!(r.code, 535);
        assert!(
            r.text.contains(r#"error challenge: {"status":"400""#),
            "{}",
            r.text
        );
        assert_eq!(c.stage(), Stage::Auth);
        // OAUTHBEARER answers with ^A (RFC 7628 §3.2.3).
        let ob = Mechanism::Oauthbearer {
            host: "mx".into(),
            port: 465,
        };
        let mut c = Client::new("relay.test", bearer(ob, "old"));
        drive(&mut c, &["220 mx|", "250-mx|250 AUTH OAUTHBEARER|"]);
        let (sent, _) = drive(&mut c, &[challenge.as_str()]);
        assert_eq!(sent, "AQ==\r\n");
        let (_, ev) = drive(&mut c, &["235 2.7.0 yes?|"]);
        assert!(
            matches!(ev.last(), Some(Event::Closed(r)) if r.code == 535),
            "success after an error challenge is not taken: {ev:?}"
        );
        // Microsoft refuses at once.
        let mut c = Client::new("relay.test", bearer(Mechanism::Xoauth2, "old"));
        drive(&mut c, &["220 mx|", "250-mx|250 AUTH LOGIN XOAUTH2|"]);
        let (_, ev) = drive(&mut c, &["535 5.7.3 Authentication unsuccessful|"]);
        assert!(matches!(ev.last(), Some(Event::Closed(r)) if r.code == 535));
    }

    #[test]
    fn a_token_mechanism_not_offered_sends_nothing() {
        let mut c = Client::new("relay.test", bearer(Mechanism::Xoauth2, "tok"));
        let (sent, ev) = drive(&mut c, &["220 mx|", "250-mx|250 AUTH PLAIN LOGIN|"]);
        assert_eq!(sent, "EHLO relay.test\r\nQUIT\r\n");
        let Some(Event::Closed(r)) = ev.last() else {
            panic!("{ev:?}")
        };
        assert_eq!(r.code, 454);
        assert!(r.text.contains("does not offer AUTH XOAUTH2"), "{}", r.text);
        assert_eq!(c.stage(), Stage::Auth);
    }

    #[test]
    fn debug_never_shows_the_password() {
        let text = format!(
            "{:?}",
            Options {
                credentials: Some(creds()),
                ..Default::default()
            }
        );
        assert!(text.contains("user") && !text.contains("pass\""), "{text}");
        assert!(!text.contains("\"pass\""));
    }
}
