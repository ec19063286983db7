//! The server side of an SMTP session as a sans-IO state machine.
//!
//! A shell feeds it the bytes it reads and does what the `Step` it returns says: send
//! the queued replies, open a spool file, write decoded body bytes, store or discard
//! the message, close. A step that needs an answer carries a token that only the
//! session mints and only its answer spends (`OpenMessage` is spent by
//! `spool_opened`, and so on), so no answer can come out of turn. One loop drives it
//! for every shell: `super::driver`. Nothing here reads a clock, takes a lock or
//! writes a log line: the rate limit is a question (`Step::CheckRate`), and what the
//! session refused is told (`Step::Refused`) for the shell to log.
//!
//! All storage is fixed when the session is made and reused for every connection the
//! worker serves, so a client cannot grow it.

use core::fmt::Write as _;
use core::net::IpAddr;
use std::sync::Arc;

use super::policy::{self, Policy, Senders};

use super::address::Mailbox;
use super::client::Reply;
use super::command::{self, BodyType, Command};
use super::data::{DataDecoder, Progress, Verdict};
use super::{limits, reply};

/// Room for the replies to one pipelined batch of commands (RFC 2920 §3.1).
pub const OUT_CAP: usize = 4096;
/// Decoded message bytes held before the worker writes them to the spool.
pub const BODY_CAP: usize = 64 * 1024;
/// The largest reply, so that one always fits before a command is taken.
const LARGEST_REPLY: usize = 512;

/// What the session needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: heapless::String<{ limits::DOMAIN }>,
    pub max_message_size: u64,
    pub reject_bare_newline: bool,
    pub max_hops: u32,
    /// A server certificate is configured: STARTTLS is offered.
    pub tls_available: bool,
    /// A users file is configured: AUTH is offered (over TLS, or see `Peer`).
    pub auth_available: bool,
    /// `require_auth yes`: nobody sends without authenticating.
    pub require_auth: bool,
    /// Sender and recipient rules, qualification, aliases, limits.
    pub policy: Arc<Policy>,
    /// `mode passthrough`: MAIL, RCPT, DATA and the end of data are answered with the
    /// smarthost's replies (`Step::Upstream`), and nothing is spooled.
    pub passthrough: bool,
    /// `add_missing_headers yes`: a message without `Date:` or `Message-ID:` gets one
    /// (see `add_missing`).
    pub add_missing_headers: bool,
}

/// The client as the worker knows it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: IpAddr,
    /// The client is inside an `allow` network and may relay.
    pub relay_allowed: bool,
    /// The connection is TLS from its first byte (an implicit-TLS listener).
    pub tls: bool,
    /// AUTH may be offered without TLS (`auth_plaintext yes` on a loopback address).
    pub auth_plaintext: bool,
}

/// The transaction being built.
#[derive(Debug, Default)]
pub struct Envelope {
    pub sender: Mailbox,
    /// Allocated once at `limits::RECIPIENTS` when the session is made and never
    /// grown (RCPT checks the room first); on the heap so that its pages are touched
    /// only as recipients come, not when the session is built.
    pub recipients: Vec<Mailbox>,
    pub body: BodyType,
    pub smtputf8: bool,
    /// The size the client declared at MAIL (`SIZE=`), if it did.
    pub size: Option<u64>,
}

/// Named by what the session waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hello,
    Mail,
    Rcpt,
    RcptOrData,
    /// DATA was accepted in principle; the worker is opening the spool file.
    SpoolOpen,
    Data,
    /// The end of data was seen; the worker is storing the message.
    SpoolCommit,
    /// STARTTLS was accepted; the worker checks for pipelined data, then calls `start_tls`.
    TlsCheck,
    /// AUTH PLAIN without an initial response: the response line comes next.
    AuthPlain,
    /// AUTH LOGIN: the user name line comes next.
    AuthLoginUser,
    /// AUTH LOGIN: the password line comes next.
    AuthLoginPassword,
    /// The worker is checking the credentials.
    AuthCheck,
    /// Passthrough: the worker is asking the smarthost.
    Upstream(Ask),
    /// MAIL with `SIZE=`: the worker checks the spool's free space.
    SpaceCheck,
    /// MAIL under `rate_limit`: the worker checks the client's message rate.
    RateCheck,
    Closed,
}

/// Passthrough: what the worker asks the smarthost before the client gets its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// `MAIL FROM:<envelope().sender>`; answer with `upstream_replied`.
    Mail,
    /// `RCPT TO:` for each of `envelope().recipients[first..]` (one RCPT can stand
    /// for several addresses through an alias); answer with `upstream_rcpt`.
    Rcpt { first: usize },
    /// `DATA`; answer with `upstream_replied` (354: the body follows).
    Data,
    /// The body is whole and accepted here: write `body()`, end the data, and answer
    /// with `upstream_replied` (the smarthost's final reply goes to the client).
    End,
}

/// What the shell does next. A variant with a token asks a question: the token is
/// spent by the session method that takes the answer, and by nothing else.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// All input is consumed: send the queued replies, then read.
    NeedInput,
    /// The reply buffer is full: send it, then feed the rest of the input.
    Flush,
    /// Open a spool file for a message; answer with `spool_opened`.
    OpenMessage(OpenMessage),
    /// The body buffer is full: write `body()` to the spool (passthrough: to the
    /// smarthost), `clear_body`, feed on.
    WriteBody,
    /// The message ended and is accepted: write `body()`, commit, answer with `stored`.
    StoreMessage(StoreMessage),
    /// The message ended and is refused (the reply is queued): drop the spool file
    /// (passthrough: abandon the smarthost's DATA without ending it), log why
    /// (`refusal()`).
    DiscardMessage,
    /// Passthrough: ask the smarthost (see `Ask`), then answer with `upstream_*`.
    Upstream(Upstream),
    /// AUTH: check `credentials()`, answer with `authenticated`.
    Authenticate(Authenticate),
    /// STARTTLS: answer with `start_tls`; when that gives a `Handshake`, send the
    /// replies, run the TLS handshake, then spend it with `tls_established`.
    StartTls(StartTls),
    /// MAIL declared `SIZE=` this large: check that the spool has room for it
    /// (RFC 1870 §6.1); answer with `space_checked`.
    CheckSpace(CheckSpace),
    /// MAIL under `rate_limit`: take one message from the client's allowance;
    /// answer with `rate_checked`.
    CheckRate(CheckRate),
    /// A command was refused by policy (the reply is queued): log why (`refusal()`),
    /// feed on.
    Refused,
    /// Send the queued replies and close the connection.
    Close,
}

/// Defines the question tokens: no field outside this module, so only the session
/// makes one; not `Clone`, so one answer spends it.
macro_rules! tokens {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, PartialEq, Eq)]
        #[must_use = "the session waits for the answer this token is spent on"]
        pub struct $name(());
    )*};
}

tokens! {
    /// `Step::OpenMessage`: spent by `spool_opened`.
    OpenMessage;
    /// `Step::StoreMessage`: spent by `stored`.
    StoreMessage;
    /// `Step::Authenticate`: spent by `authenticated`.
    Authenticate;
    /// `Step::StartTls`: spent by `start_tls`.
    StartTls;
    /// Given by `start_tls` when the handshake is to run: spent by `tls_established`.
    Handshake;
}

/// `Step::CheckSpace`: spent by `space_checked`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the session waits for the answer this token is spent on"]
pub struct CheckSpace(u64);

impl CheckSpace {
    /// The size MAIL declared, in octets.
    pub fn size(&self) -> u64 {
        self.0
    }
}

/// `Step::CheckRate`: spent by `rate_checked`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the session waits for the answer this token is spent on"]
pub struct CheckRate(IpAddr);

impl CheckRate {
    /// The client whose allowance is asked.
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

/// `Step::Upstream`: spent by `upstream_replied`, `upstream_rcpt` or
/// `upstream_unavailable`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the session waits for the answer this token is spent on"]
pub struct Upstream(Ask);

impl Upstream {
    pub fn ask(&self) -> Ask {
        self.0
    }
}

/// The answer to `Step::StartTls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsAnswer {
    /// Nothing followed STARTTLS in what the client sent, and TLS can be done here.
    Ready,
    /// More came after STARTTLS in the same read: refused, and the session ends.
    Pipelined,
    /// This shell cannot do TLS (`sendmail -bs`): 454, and the session goes on.
    Unavailable,
}

/// The name and date a message gets if it has no `Message-ID:` or `Date:`
/// (`add_missing_headers`): its queue id and the time it was received.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub id: &'a str,
    /// RFC 5322 date-time.
    pub date: &'a str,
}

/// What the session refused, for the shell's log: one wording for every shell
/// (`describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// RCPT from a client outside `allow` that has not authenticated.
    Relay { to: Mailbox },
    /// MAIL from a sender that `allow_sender` or the user's own senders refuse.
    Sender { from: Mailbox },
    /// RCPT (or an alias target) that `allow_recipient` refuses.
    Recipient { to: Mailbox },
    /// `max_messages_per_connection` reached: the session ends.
    TooManyMessages { count: u32 },
    /// `rate_limit` reached.
    Rate { from: Mailbox },
    /// MAIL declared a size the spool has no room for.
    NoSpace { size: u64 },
    /// The message text was refused at its end.
    Data { verdict: Verdict, size: u64 },
    /// Data came after STARTTLS in the same read (CVE-2011-0411): the session ends.
    DataAfterStartTls,
    /// Passthrough: the smarthost refused `verb` (MAIL, RCPT or DATA) for `address`
    /// (the sender or the recipient; empty for DATA).
    Upstream {
        verb: &'static str,
        reply: Reply,
        address: Mailbox,
    },
}

impl Refusal {
    /// A refusal that may point at trouble (an overload, an attack, a full disk)
    /// rather than at a client's mistake.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Refusal::Rate { .. } | Refusal::NoSpace { .. } | Refusal::DataAfterStartTls
        )
    }

    /// The log line, without the level: `reject: VERB from [IP]: REPLY; DETAIL`.
    /// `port` and `id` name the connection and the message, where known; `user` is
    /// the authenticated user.
    pub fn describe(
        &self,
        out: &mut impl core::fmt::Write,
        ip: IpAddr,
        port: Option<u16>,
        id: &str,
        user: Option<&str>,
    ) -> core::fmt::Result {
        let lossy = |m: &Mailbox| String::from_utf8_lossy(m).into_owned();
        let peer = |out: &mut dyn core::fmt::Write| match port {
            Some(p) => write!(out, "[{ip}]:{p}"),
            None => write!(out, "[{ip}]"),
        };
        match self {
            Refusal::Relay { to } => {
                out.write_str("reject: RCPT from ")?;
                peer(out)?;
                write!(out, ": 554 5.7.1 Relay access denied; to=<{}>", lossy(to))
            }
            Refusal::Recipient { to } => {
                out.write_str("reject: RCPT from ")?;
                peer(out)?;
                write!(out, ": 553 5.7.1 recipient not allowed; to=<{}>", lossy(to))
            }
            Refusal::Sender { from } => {
                out.write_str("reject: MAIL from ")?;
                peer(out)?;
                write!(
                    out,
                    ": 550 5.7.1 sender not allowed; from=<{}>",
                    lossy(from)
                )?;
                match user {
                    Some(u) => write!(out, ", sasl_username={}", u.escape_debug()),
                    None => Ok(()),
                }
            }
            Refusal::TooManyMessages { count } => {
                out.write_str("reject: MAIL from ")?;
                peer(out)?;
                write!(out, ": 421 4.7.0 {count} messages in one connection")
            }
            Refusal::Rate { from } => {
                out.write_str("reject: MAIL from ")?;
                peer(out)?;
                write!(
                    out,
                    ": 450 4.7.1 message rate limit exceeded; from=<{}>",
                    lossy(from)
                )
            }
            Refusal::NoSpace { size } => {
                out.write_str("reject: MAIL from ")?;
                peer(out)?;
                write!(out, ": 452 4.3.1 not enough disk space for SIZE={size}")
            }
            Refusal::Data { verdict, size } => {
                let why = match verdict {
                    Verdict::TooBig => "552 5.3.4 message too big",
                    Verdict::BareNewline => "550 5.6.0 bare CR or LF",
                    Verdict::TooManyHops | Verdict::Accept => "554 5.4.6 too many hops",
                };
                write!(out, "{id}: reject: DATA from ")?;
                peer(out)?;
                write!(out, ": {why}; size={size}")
            }
            Refusal::DataAfterStartTls => {
                out.write_str("data after STARTTLS from ")?;
                peer(out)?;
                out.write_str(" (possible command injection); closing")
            }
            Refusal::Upstream {
                verb,
                reply,
                address,
            } => {
                write!(out, "reject: {verb} from ")?;
                peer(out)?;
                write!(out, ": {reply} (smarthost)")?;
                match *verb {
                    "MAIL" => write!(out, "; from=<{}>", lossy(address)),
                    "RCPT" => write!(out, "; to=<{}>", lossy(address)),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Why the worker could not open or commit a spool file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The disk or a quota is full: 452 4.3.1.
    NoSpace,
    /// Anything else: 451 4.3.0.
    Local,
}

impl StoreError {
    fn reply(self) -> &'static str {
        match self {
            StoreError::NoSpace => reply::NO_STORAGE,
            StoreError::Local => reply::LOCAL_ERROR,
        }
    }
}

pub struct ServerSession {
    settings: Settings,
    peer: Peer,
    state: State,
    tls: bool,
    esmtp: bool,
    helo: heapless::String<{ limits::DOMAIN }>,
    envelope: Envelope,
    /// A command line up to its LF, which is not kept: 512 octets with the CRLF
    /// (§4.5.3.1.4) leave 511 here, the CR included.
    line: heapless::Vec<u8, { limits::COMMAND_LINE - 1 }>,
    /// The current command line overflowed; octets are dropped until its LF.
    discarding: bool,
    decoder: DataDecoder,
    out: heapless::String<OUT_CAP>,
    /// Allocated once at `BODY_CAP`; the decoder fills it up to that and no further.
    body: Vec<u8>,
    last_verdict: Verdict,
    auth: Auth,
    /// Messages stored in this connection (`max_messages_per_connection`).
    messages: u32,
    /// What was refused last, for the shell's log (`refusal()`); kept here so that a
    /// step stays a few octets.
    refusal: Option<Refusal>,
    /// `refusal` is not yet told (`Step::Refused`).
    refusal_pending: bool,
}

/// What AUTH has gathered. The password is wiped once it has been checked.
#[derive(Default)]
struct Auth {
    authenticated: bool,
    failures: u8,
    mechanism: &'static str,
    user: heapless::String<255>,
    password: heapless::Vec<u8, 256>,
    /// The response was well-formed base64 but not acceptable (e.g. a foreign authzid).
    invalid: bool,
    /// The senders the users file lets this user use (`None`: any).
    senders: Option<Senders>,
}

impl Auth {
    fn wipe(&mut self) {
        self.password.iter_mut().for_each(|b| *b = 0);
        self.password.clear();
    }
}

/// After this many failed AUTH attempts a session is closed.
const AUTH_ATTEMPTS: u8 = 3;

impl ServerSession {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            peer: Peer {
                ip: IpAddr::from([0, 0, 0, 0]),
                relay_allowed: false,
                tls: false,
                auth_plaintext: false,
            },
            state: State::Closed,
            tls: false,
            esmtp: false,
            helo: heapless::String::new(),
            envelope: Envelope {
                recipients: Vec::with_capacity(limits::RECIPIENTS),
                ..Envelope::default()
            },
            line: heapless::Vec::new(),
            discarding: false,
            decoder: DataDecoder::new(0),
            out: heapless::String::new(),
            body: Vec::with_capacity(BODY_CAP),
            last_verdict: Verdict::Accept,
            auth: Auth::default(),
            messages: 0,
            refusal: None,
            refusal_pending: false,
        }
    }

    /// Starts a new connection: everything is reset and the greeting queued.
    pub fn start(&mut self, peer: Peer) {
        self.peer = peer;
        self.tls = peer.tls;
        self.auth.wipe();
        self.auth = Auth::default();
        self.state = State::Hello;
        self.esmtp = false;
        self.messages = 0;
        self.refusal = None;
        self.refusal_pending = false;
        self.helo.clear();
        self.reset_transaction();
        self.line.clear();
        self.discarding = false;
        self.out.clear();
        self.body.clear();
        let _ = write!(
            self.out,
            "220 {} ESMTP smtp-relayd\r\n",
            self.settings.hostname
        );
    }

    /// Replies waiting to be sent.
    pub fn output(&self) -> &[u8] {
        self.out.as_bytes()
    }

    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// Decoded message bytes waiting to be written to the spool.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn clear_body(&mut self) {
        self.body.clear();
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    pub fn helo(&self) -> &str {
        &self.helo
    }

    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// `ESMTP` after EHLO, `SMTP` after HELO (RFC 5321 §4.4, RFC 3848), `UTF8SMTP` for
    /// an SMTPUTF8 transaction (RFC 6531 §3.7.3).
    /// With TLS, an `S` follows (RFC 3848 `ESMTPS`, RFC 6531 `UTF8SMTPS`).
    /// With AUTH, an `A` (`ESMTPSA`).
    pub fn protocol(&self) -> &'static str {
        match (
            self.esmtp,
            self.envelope.smtputf8,
            self.tls,
            self.auth.authenticated,
        ) {
            (false, ..) => "SMTP",
            (true, false, false, false) => "ESMTP",
            (true, false, true, false) => "ESMTPS",
            (true, false, false, true) => "ESMTPA",
            (true, false, true, true) => "ESMTPSA",
            (true, true, false, false) => "UTF8SMTP",
            (true, true, true, false) => "UTF8SMTPS",
            (true, true, false, true) => "UTF8SMTPA",
            (true, true, true, true) => "UTF8SMTPSA",
        }
    }

    /// The user the client authenticated as, if it did.
    pub fn authenticated_user(&self) -> Option<&str> {
        self.auth.authenticated.then_some(self.auth.user.as_str())
    }

    /// During `Step::Authenticate`: the user name, the password and the mechanism;
    /// `None` when the response was unacceptable (it counts as a failure).
    pub fn credentials(&self) -> Option<(&str, &[u8])> {
        (!self.auth.invalid).then_some((self.auth.user.as_str(), &self.auth.password[..]))
    }

    /// The mechanism of the AUTH in progress, for the log.
    pub fn auth_mechanism(&self) -> &'static str {
        self.auth.mechanism
    }

    /// The user name given in the AUTH in progress, for the log (may be anything).
    pub fn auth_user(&self) -> &str {
        &self.auth.user
    }

    fn auth_offered(&self) -> bool {
        self.settings.auth_available && (self.tls || self.peer.auth_plaintext)
    }

    /// What the session refused last (`Step::Refused`, `Step::DiscardMessage`).
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// `mode passthrough`: message text goes to the smarthost, not to a spool file.
    pub fn passthrough(&self) -> bool {
        self.settings.passthrough
    }

    /// The session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Content octets of the message being received.
    pub fn message_size(&self) -> u64 {
        self.decoder.size()
    }

    /// Why the last message was refused, for the log.
    pub fn last_verdict(&self) -> Verdict {
        self.last_verdict
    }

    /// The session reads message text now (the worker uses the DATA timeout).
    pub fn in_data(&self) -> bool {
        self.state == State::Data
    }

    /// A transaction is under way (the worker lets it finish at shutdown).
    pub fn in_transaction(&self) -> bool {
        !matches!(self.state, State::Hello | State::Mail | State::Closed) || !self.line.is_empty()
    }

    fn reply(&mut self, text: &str) {
        // Room was checked before the command was taken.
        let _ = self.out.push_str(text);
    }

    fn reset_transaction(&mut self) {
        self.envelope.sender.clear();
        self.envelope.recipients.clear();
        self.envelope.body = BodyType::SevenBit;
        self.envelope.smtputf8 = false;
        self.envelope.size = None;
    }

    /// Feeds bytes from the client. Returns how many were consumed and what to do.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Step) {
        let mut i = 0;
        loop {
            if self.refusal_pending {
                self.refusal_pending = false;
                return (i, Step::Refused);
            }
            match self.state {
                State::Closed => return (i, Step::Close),
                State::SpoolOpen => return (i, Step::OpenMessage(OpenMessage(()))),
                State::SpoolCommit => return (i, Step::StoreMessage(StoreMessage(()))),
                State::TlsCheck => return (i, Step::StartTls(StartTls(()))),
                State::AuthCheck => return (i, Step::Authenticate(Authenticate(()))),
                State::Upstream(ask) => return (i, Step::Upstream(Upstream(ask))),
                State::SpaceCheck => {
                    let size = self.envelope.size.unwrap_or(0);
                    return (i, Step::CheckSpace(CheckSpace(size)));
                }
                State::RateCheck => return (i, Step::CheckRate(CheckRate(self.peer.ip))),
                State::Data => {
                    let (n, progress) = self.decoder.decode(&input[i..], &mut self.body);
                    i += n;
                    match progress {
                        Progress::NeedInput => return (i, Step::NeedInput),
                        Progress::OutputFull => return (i, Step::WriteBody),
                        Progress::End => {
                            let verdict = self
                                .decoder
                                .verdict(self.settings.reject_bare_newline, self.settings.max_hops);
                            self.last_verdict = verdict;
                            if verdict == Verdict::Accept && self.settings.passthrough {
                                self.state = State::Upstream(Ask::End);
                                return (i, Step::Upstream(Upstream(Ask::End)));
                            }
                            if verdict == Verdict::Accept {
                                self.state = State::SpoolCommit;
                                return (i, Step::StoreMessage(StoreMessage(())));
                            }
                            self.reply(match verdict {
                                Verdict::TooBig => reply::MESSAGE_TOO_BIG,
                                Verdict::BareNewline => reply::BARE_NEWLINE,
                                Verdict::TooManyHops | Verdict::Accept => reply::MAIL_LOOP,
                            });
                            self.reset_transaction();
                            self.state = State::Mail;
                            let size = self.decoder.size();
                            self.refusal = Some(Refusal::Data { verdict, size });
                            return (i, Step::DiscardMessage);
                        }
                    }
                }
                State::Hello
                | State::Mail
                | State::Rcpt
                | State::RcptOrData
                | State::AuthPlain
                | State::AuthLoginUser
                | State::AuthLoginPassword => {
                    if i == input.len() {
                        return (i, Step::NeedInput);
                    }
                    if self.out.capacity() - self.out.len() < LARGEST_REPLY {
                        return (i, Step::Flush);
                    }
                    i += self.take_line(&input[i..]);
                }
            }
        }
    }

    /// Gathers command octets up to LF; handles the line once it is whole.
    fn take_line(&mut self, input: &[u8]) -> usize {
        let (chunk, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(p) => (&input[..p], Some(p + 1)),
            None => (input, None),
        };
        if !self.discarding && self.line.extend_from_slice(chunk).is_err() {
            // Over-long line (§4.5.3.1.4): drop it to its end, whatever its size.
            self.discarding = true;
            self.line.clear();
        }
        let Some(consumed) = complete else {
            return input.len();
        };
        if self.discarding {
            self.discarding = false;
            self.reply(reply::LINE_TOO_LONG);
        } else {
            let mut line = core::mem::take(&mut self.line);
            // CRLF ends a command; a bare LF is tolerated there, as most servers do.
            let text = line.strip_suffix(b"\r").unwrap_or(&line);
            if matches!(
                self.state,
                State::AuthPlain | State::AuthLoginUser | State::AuthLoginPassword
            ) {
                self.auth_response(text);
            } else {
                self.command(text);
            }
            line.clear();
            self.line = line;
        }
        consumed
    }

    fn command(&mut self, line: &[u8]) {
        let parsed = command::parse(line, self.envelope.smtputf8);
        let cmd = match parsed {
            Ok(cmd) => cmd,
            Err(e) => {
                self.reply(e.reply());
                return;
            }
        };
        match cmd {
            Command::Ehlo(name) | Command::Helo(name) => {
                self.esmtp = matches!(cmd, Command::Ehlo(_));
                self.helo.clear();
                // `name` is printable ASCII of at most 255 octets (the parser checked).
                let _ = self
                    .helo
                    .push_str(core::str::from_utf8(name).unwrap_or("unknown"));
                self.reset_transaction();
                self.state = State::Mail;
                if self.esmtp {
                    let _ = write!(
                        self.out,
                        "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n",
                        self.settings.hostname, self.settings.max_message_size
                    );
                    if self.settings.tls_available && !self.tls {
                        let _ = self.out.push_str("250-STARTTLS\r\n");
                    }
                    if self.auth_offered() {
                        let _ = self.out.push_str("250-AUTH PLAIN LOGIN\r\n");
                    }
                    let _ = self.out.push_str("250 ENHANCEDSTATUSCODES\r\n");
                } else {
                    let _ = write!(self.out, "250 {}\r\n", self.settings.hostname);
                }
            }
            Command::Mail(mail) => match self.state {
                State::Hello => self.reply(reply::NEED_HELO),
                _ if self.settings.require_auth && !self.auth.authenticated => {
                    self.reply(reply::AUTH_REQUIRED)
                }
                State::Rcpt | State::RcptOrData => self.reply(reply::NESTED_MAIL),
                _ if mail
                    .size
                    .is_some_and(|s| s > self.settings.max_message_size) =>
                {
                    self.reply(reply::MESSAGE_TOO_BIG)
                }
                _ => self.mail(mail),
            },
            Command::Rcpt(rcpt) => match self.state {
                State::Hello | State::Mail => self.reply(reply::NEED_MAIL),
                _ if !self.peer.relay_allowed && !self.auth.authenticated => {
                    self.refuse(Refusal::Relay { to: rcpt }, reply::RELAY_DENIED);
                }
                _ => self.rcpt(&rcpt),
            },
            Command::Data => match self.state {
                State::Hello => self.reply(reply::NEED_HELO),
                State::Mail => self.reply(reply::NEED_MAIL),
                State::Rcpt => self.reply(reply::NEED_RCPT),
                _ if self.settings.passthrough => self.state = State::Upstream(Ask::Data),
                _ => self.state = State::SpoolOpen,
            },
            Command::Rset => {
                self.reset_transaction();
                if self.state != State::Hello {
                    self.state = State::Mail;
                }
                self.reply(reply::OK);
            }
            Command::Noop => self.reply(reply::OK),
            Command::Quit => {
                self.reply(reply::BYE);
                self.state = State::Closed;
            }
            Command::Vrfy => self.reply(reply::VRFY),
            Command::Expn => self.reply(reply::EXPN),
            Command::Help => self.reply(reply::HELP),
            Command::StartTls => match self.state {
                _ if !self.settings.tls_available => self.reply(reply::NOT_IMPLEMENTED),
                _ if self.tls => self.reply(reply::TLS_ACTIVE),
                State::Rcpt | State::RcptOrData => self.reply(reply::IN_TRANSACTION),
                _ => self.state = State::TlsCheck,
            },
            Command::Auth { mechanism, initial } => match self.state {
                _ if !self.settings.auth_available => self.reply(reply::NOT_IMPLEMENTED),
                State::Hello => self.reply(reply::NEED_HELO),
                _ if self.auth.authenticated => self.reply(reply::ALREADY_AUTHENTICATED),
                State::Rcpt | State::RcptOrData => self.reply(reply::IN_TRANSACTION),
                _ if !self.auth_offered() => self.reply(reply::AUTH_NEEDS_TLS),
                _ => self.auth_start(mechanism, initial),
            },
            Command::NotImplemented => self.reply(reply::NOT_IMPLEMENTED),
        }
    }

    /// MAIL in the right state: the sender is qualified, then checked against the
    /// policy and the per-connection message limit; then the client's message rate
    /// (the shell's answer), the spool's room, or the smarthost, when those apply.
    fn mail(&mut self, mail: command::Mail) {
        let policy = Arc::clone(&self.settings.policy);
        let Ok(sender) = policy.qualify(&mail.sender) else {
            self.reply(reply::ADDRESS_TOO_LONG);
            return;
        };
        let user_ok = self
            .auth
            .senders
            .as_deref()
            .is_none_or(|own| policy::allowed(own, &sender));
        if !user_ok || !policy::allowed(&policy.senders, &sender) {
            self.refuse(Refusal::Sender { from: sender }, reply::SENDER_DENIED);
            return;
        }
        let limit = policy.max_messages_per_connection;
        if limit > 0 && self.messages >= limit {
            let count = self.messages;
            self.refuse(Refusal::TooManyMessages { count }, reply::TOO_MANY_MESSAGES);
            self.state = State::Closed;
            return;
        }
        self.envelope.sender = sender;
        self.envelope.body = mail.body;
        self.envelope.smtputf8 = mail.smtputf8;
        self.envelope.size = mail.size;
        if policy.rate_limited {
            self.state = State::RateCheck;
            return;
        }
        self.mail_accepted();
    }

    /// The sender passed every check of this server's.
    fn mail_accepted(&mut self) {
        if self.settings.passthrough {
            self.state = State::Upstream(Ask::Mail);
            return;
        }
        if self.envelope.size.is_some() {
            // Disk full is told now, not after the whole body (RFC 1870 §6.1).
            self.state = State::SpaceCheck;
            return;
        }
        self.state = State::Rcpt;
        self.reply(reply::SENDER_OK);
    }

    /// Queues `text` and tells the shell why (`Step::Refused`).
    fn refuse(&mut self, why: Refusal, text: &str) {
        self.refusal = Some(why);
        self.refusal_pending = true;
        self.reply(text);
    }

    /// The shell's answer to `Step::CheckRate`: whether the client may send one more
    /// message now. Without, the sender is refused with `450 4.7.1`.
    pub fn rate_checked(&mut self, _: CheckRate, allowed: bool) {
        debug_assert_eq!(self.state, State::RateCheck);
        if allowed {
            self.mail_accepted();
        } else {
            let from = core::mem::take(&mut self.envelope.sender);
            self.reset_transaction();
            self.state = State::Mail;
            self.refuse(Refusal::Rate { from }, reply::RATE_LIMITED);
        }
    }

    /// The shell's answer to `Step::CheckSpace`: whether the spool has room for the
    /// declared size. Without room the sender is refused with `452 4.3.1`.
    pub fn space_checked(&mut self, question: CheckSpace, room: bool) {
        debug_assert_eq!(self.state, State::SpaceCheck);
        if room {
            self.state = State::Rcpt;
            self.reply(reply::SENDER_OK);
        } else {
            self.reset_transaction();
            self.state = State::Mail;
            self.refuse(Refusal::NoSpace { size: question.0 }, reply::NO_STORAGE);
        }
    }

    /// Right after the 354 (`spool_opened`, or the smarthost's 354 in passthrough):
    /// the queue id and RFC 5322 date of the message, for the `Date:` and
    /// `Message-ID: <ID@HOSTNAME>` fields a message without them gets
    /// (`add_missing_headers`).
    fn add_missing(&mut self, Stamp { id, date }: Stamp<'_>) {
        if !self.settings.add_missing_headers {
            return;
        }
        let mut d = heapless::String::<{ super::data::MISSING_CAP }>::new();
        let mut m = heapless::String::<{ super::data::MISSING_CAP }>::new();
        let _ = write!(d, "Date: {date}\r\n");
        let _ = write!(m, "Message-ID: <{id}@{}>\r\n", self.settings.hostname);
        self.decoder.add_missing(&d, &m);
    }

    /// The message had a text line over 998 octets (it is re-encoded when sent).
    pub fn saw_long_line(&self) -> bool {
        self.decoder.saw_long_line()
    }

    /// RCPT from a client that may relay: the recipient is qualified and mapped by
    /// the aliases; every address it stands for must pass the policy and fit.
    fn rcpt(&mut self, rcpt: &[u8]) {
        let policy = Arc::clone(&self.settings.policy);
        let Ok(addr) = policy.qualify(rcpt) else {
            self.reply(reply::ADDRESS_TOO_LONG);
            return;
        };
        let targets = match policy.recipient(&addr) {
            Ok(targets) => targets,
            Err(refused) => {
                let to = refused.clone();
                self.refuse(Refusal::Recipient { to }, reply::RECIPIENT_DENIED);
                return;
            }
        };
        let room = policy
            .max_recipients
            .min(limits::RECIPIENTS)
            .saturating_sub(self.envelope.recipients.len());
        if targets.len() > room {
            self.reply(reply::TOO_MANY_RECIPIENTS);
            return;
        }
        let first = self.envelope.recipients.len();
        for t in targets {
            // An alias may name an address the client also gave: keep one.
            if !self.envelope.recipients.iter().any(|r| r == t) {
                self.envelope.recipients.push(t.clone());
            }
        }
        if self.settings.passthrough && self.envelope.recipients.len() > first {
            self.state = State::Upstream(Ask::Rcpt { first });
            return;
        }
        self.state = State::RcptOrData;
        self.reply(reply::RECIPIENT_OK);
    }

    fn auth_start(&mut self, mechanism: &[u8], initial: Option<&[u8]>) {
        self.auth.user.clear();
        self.auth.wipe();
        self.auth.invalid = false;
        if mechanism.eq_ignore_ascii_case(b"PLAIN") {
            self.auth.mechanism = "PLAIN";
            match initial {
                // RFC 4954 §4: "=" is an empty initial response.
                Some(r) => self.auth_response_in(State::AuthPlain, if r == b"=" { b"" } else { r }),
                None => {
                    self.state = State::AuthPlain;
                    self.reply(reply::AUTH_PLAIN_CHALLENGE);
                }
            }
        } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
            self.auth.mechanism = "LOGIN";
            match initial {
                Some(r) => self.auth_response_in(State::AuthLoginUser, r),
                None => {
                    self.state = State::AuthLoginUser;
                    self.reply(reply::AUTH_LOGIN_USER);
                }
            }
        } else {
            self.reply(reply::AUTH_MECHANISM);
        }
    }

    fn auth_response_in(&mut self, state: State, response: &[u8]) {
        self.state = state;
        self.auth_response(response);
    }

    /// One base64 response line (RFC 4954 §4) in an AUTH exchange.
    fn auth_response(&mut self, line: &[u8]) {
        if line == b"*" {
            self.auth.wipe();
            self.state = State::Mail;
            self.reply(reply::AUTH_CANCELLED);
            return;
        }
        let mut decoded = heapless::Vec::<u8, 512>::new();
        if super::base64::decode(line, &mut decoded).is_none() {
            self.auth.wipe();
            self.state = State::Mail;
            self.reply(reply::AUTH_BAD_RESPONSE);
            return;
        }
        match self.state {
            State::AuthPlain => {
                // RFC 4616: authzid NUL authcid NUL passwd; only one's own identity.
                let mut parts = decoded.split(|&b| b == 0);
                let (authzid, authcid, password) = (parts.next(), parts.next(), parts.next());
                match (authzid, authcid, password, parts.next()) {
                    (Some(z), Some(c), Some(p), None) => {
                        self.auth.invalid = !(z.is_empty() || z == c);
                        self.set_user(c);
                        self.auth.invalid |= self.auth.password.extend_from_slice(p).is_err();
                    }
                    _ => self.auth.invalid = true,
                }
                self.state = State::AuthCheck;
            }
            State::AuthLoginUser => {
                self.set_user(&decoded);
                self.state = State::AuthLoginPassword;
                self.reply(reply::AUTH_LOGIN_PASSWORD);
            }
            State::AuthLoginPassword => {
                self.auth.invalid |= self.auth.password.extend_from_slice(&decoded).is_err();
                self.state = State::AuthCheck;
            }
            _ => {}
        }
        decoded.iter_mut().for_each(|b| *b = 0);
    }

    fn set_user(&mut self, name: &[u8]) {
        self.auth.user.clear();
        match core::str::from_utf8(name) {
            Ok(n) if self.auth.user.push_str(n).is_ok() && !n.is_empty() => {}
            _ => self.auth.invalid = true,
        }
    }

    /// The worker's answer to `Step::Authenticate`: `None` for a failure, or the
    /// senders the user may use (`Some(None)`: any the policy allows).
    pub fn authenticated(&mut self, _: Authenticate, result: Option<Option<Senders>>) {
        debug_assert_eq!(self.state, State::AuthCheck);
        self.auth.wipe();
        self.state = State::Mail;
        if let Some(senders) = result {
            self.auth.authenticated = true;
            self.auth.senders = senders;
            self.reply(reply::AUTH_OK);
            return;
        }
        self.auth.failures += 1;
        if self.auth.failures >= AUTH_ATTEMPTS {
            self.reply(reply::AUTH_TOO_MANY);
            self.state = State::Closed;
        } else {
            self.reply(reply::AUTH_FAILED);
        }
    }

    /// The shell's answer to `Step::StartTls`. Pipelined data after STARTTLS would,
    /// once TLS is up, be taken as if it came over TLS (CVE-2011-0411); it is never
    /// executed: the session ends. A `Handshake` comes back when the shell is to send
    /// the `220` and run the handshake.
    pub fn start_tls(&mut self, _: StartTls, answer: TlsAnswer) -> Option<Handshake> {
        debug_assert_eq!(self.state, State::TlsCheck);
        match answer {
            TlsAnswer::Ready => {
                self.reply(reply::TLS_READY);
                Some(Handshake(()))
            }
            TlsAnswer::Pipelined => {
                self.refuse(Refusal::DataAfterStartTls, reply::DATA_AFTER_STARTTLS);
                self.state = State::Closed;
                None
            }
            TlsAnswer::Unavailable => {
                self.reply(reply::TLS_UNAVAILABLE);
                self.state = State::Mail;
                None
            }
        }
    }

    /// The TLS handshake is done: everything known before is forgotten, and the
    /// client must say EHLO again (RFC 3207 §4.2).
    pub fn tls_established(&mut self, _: Handshake) {
        self.tls = true;
        self.auth.authenticated = false;
        self.state = State::Hello;
        self.esmtp = false;
        self.helo.clear();
        self.line.clear();
        self.discarding = false;
        self.reset_transaction();
    }

    /// The shell's answer to `Step::OpenMessage`: the new message's id and date, or
    /// why there is none.
    pub fn spool_opened(&mut self, _: OpenMessage, result: Result<Stamp<'_>, StoreError>) {
        debug_assert_eq!(self.state, State::SpoolOpen);
        match result {
            Ok(stamp) => {
                self.decoder = DataDecoder::new(self.settings.max_message_size);
                self.add_missing(stamp);
                self.body.clear();
                self.reply(reply::START_DATA);
                self.state = State::Data;
            }
            Err(e) => {
                self.reply(e.reply());
                self.reset_transaction();
                self.state = State::Mail;
            }
        }
    }

    /// Passthrough: the shell's answer to `Step::Upstream` for `Mail`, `Data` and
    /// `End`: the smarthost's reply, or a local 4xx when it could not be asked. A
    /// `354` to `Data` comes with the message's stamp.
    pub fn upstream_replied(&mut self, _: Upstream, answer: &Reply, stamp: Option<Stamp<'_>>) {
        self.upstream_answer(answer, stamp);
    }

    fn upstream_answer(&mut self, answer: &Reply, stamp: Option<Stamp<'_>>) {
        let State::Upstream(ask) = self.state else {
            debug_assert!(false, "no question was asked");
            return;
        };
        match ask {
            Ask::Mail if answer.code / 100 == 2 => self.state = State::Rcpt,
            Ask::Data if answer.code == 354 => {
                self.decoder = DataDecoder::new(self.settings.max_message_size);
                if let Some(stamp) = stamp {
                    self.add_missing(stamp);
                }
                self.body.clear();
                self.reply(reply::START_DATA);
                self.state = State::Data;
                return;
            }
            Ask::End if answer.code / 100 == 2 => self.messages += 1,
            _ => {}
        }
        self.forward(ask, answer);
        if self.state == State::Upstream(ask) {
            self.body.clear();
            self.reset_transaction();
            self.state = State::Mail;
        }
    }

    /// Passthrough: the worker's answer to `Ask::Rcpt`: `replies[i]` is the
    /// smarthost's reply for recipient `first + i` (missing ones were not asked: the
    /// connection failed). The client gets the first acceptance if there is one (an
    /// alias target the smarthost refused is logged and dropped), else the first
    /// refusal.
    pub fn upstream_rcpt(&mut self, _: Upstream, replies: &[Reply]) {
        self.upstream_rcpt_answer(replies);
    }

    fn upstream_rcpt_answer(&mut self, replies: &[Reply]) {
        let State::Upstream(Ask::Rcpt { first }) = self.state else {
            debug_assert!(false, "no RCPT was asked");
            return;
        };
        let taken = |r: &Reply| r.code / 100 == 2;
        let answer = replies
            .iter()
            .find(|r| taken(r))
            .or(replies.first())
            .cloned()
            .unwrap_or_else(|| Reply::new(451, "4.4.2 no reply from the smarthost"));
        let mut i = 0;
        self.envelope.recipients.retain(|_| {
            let keep = i < first || replies.get(i - first).is_some_and(taken);
            i += 1;
            keep
        });
        self.state = if self.envelope.recipients.is_empty() {
            State::Rcpt
        } else {
            State::RcptOrData
        };
        self.forward(Ask::Rcpt { first }, &answer);
    }

    /// Passthrough: the shell has no smarthost to ask (it cannot, outside
    /// passthrough); whatever was asked is answered with a local error.
    pub fn upstream_unavailable(&mut self, _: Upstream) {
        match self.state {
            // No reply for any recipient: each is dropped, the client gets a 451.
            State::Upstream(Ask::Rcpt { .. }) => self.upstream_rcpt_answer(&[]),
            _ => self.upstream_answer(&Reply::new(451, "4.3.0 no smarthost to ask"), None),
        }
    }

    /// Queues a reply from the smarthost for the client: its code and text on one
    /// line (the text is printable ASCII, bounded). A code that makes no sense as the
    /// final answer to `ask` (any 1xx or 3xx, and a 2xx to DATA, which would tell the
    /// client its message was taken before it was sent) becomes a local error; a text
    /// without an enhanced status code gets one, as this server offers
    /// ENHANCEDSTATUSCODES.
    fn forward(&mut self, ask: Ask, answer: &Reply) {
        let code = answer.code;
        let sensible = match code / 100 {
            2 => ask != Ask::Data,
            4 | 5 => code < 600,
            _ => false,
        };
        if !sensible {
            self.reply(reply::UPSTREAM_PROTOCOL);
            return;
        }
        let t = answer.text.as_bytes();
        let enhanced = t.len() > 4
            && t[0] == b'0' + (code / 100) as u8
            && t[1] == b'.'
            && t[2].is_ascii_digit();
        let _ = if enhanced {
            write!(self.out, "{code} {}\r\n", answer.text)
        } else {
            write!(self.out, "{code} {}.0.0 {}\r\n", code / 100, answer.text)
        };
    }

    /// The shell's answer to `Step::StoreMessage`: the queue id, or why it failed.
    pub fn stored(&mut self, _: StoreMessage, result: Result<&str, StoreError>) {
        debug_assert_eq!(self.state, State::SpoolCommit);
        match result {
            Ok(id) => {
                self.messages += 1;
                let _ = write!(self.out, "250 2.0.0 Ok: queued as {id}\r\n");
            }
            Err(e) => self.reply(e.reply()),
        }
        self.body.clear();
        self.reset_transaction();
        self.state = State::Mail;
    }
}

/// Writes the trace field of RFC 5321 §4.4 that the relay prepends to each message
/// taken over SMTP (`received_local` is the one for the sendmail command's).
/// The `for` clause names the recipient only when there is exactly one, so that a
/// message does not reveal its other (e.g. Bcc) recipients.
pub fn received_header(
    out: &mut impl core::fmt::Write,
    session: &ServerSession,
    id: &str,
    date: &str,
) -> core::fmt::Result {
    let peer = session.peer().ip;
    write!(out, "Received: from {} (", session.helo())?;
    match peer {
        IpAddr::V4(ip) => write!(out, "[{ip}]")?,
        IpAddr::V6(ip) => write!(out, "[IPv6:{ip}]")?,
    }
    write!(
        out,
        ")\r\n\tby {} (smtp-relayd) with {} id {id}",
        session.settings.hostname,
        session.protocol()
    )?;
    let rcpts = &session.envelope().recipients;
    if rcpts.len() == 1 {
        write!(out, "\r\n\tfor <{}>", String::from_utf8_lossy(&rcpts[0]))?;
    }
    write!(out, "; {date}\r\n")
}

/// The trace field of a message the sendmail command submitted: no client, the
/// submitting user.
pub fn received_local(
    out: &mut impl core::fmt::Write,
    hostname: &str,
    uid: u32,
    id: &str,
    date: &str,
) -> core::fmt::Result {
    write!(
        out,
        "Received: by {hostname} (smtp-relayd sendmail, uid {uid})\r\n\tid {id}; {date}\r\n"
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::driver;
    use super::*;

    fn settings() -> Settings {
        Settings {
            hostname: heapless::String::try_from("relay.test").unwrap(),
            max_message_size: 1000,
            reject_bare_newline: false,
            max_hops: 30,
            tls_available: false,
            auth_available: false,
            require_auth: false,
            policy: Arc::new(Policy::open("relay.test")),
            passthrough: false,
            add_missing_headers: false,
        }
    }

    /// A scripted shell: spool results, the spool's room, a users file, a message
    /// rate table and a smarthost, all set by the test; it records what it was given.
    pub(super) struct Script {
        replies: String,
        /// Messages committed to the "spool".
        stored: Vec<Vec<u8>>,
        /// Passthrough: messages whose end of data the smarthost took.
        passed: Vec<Vec<u8>>,
        body: Vec<u8>,
        closed: bool,
        open_result: Result<(), StoreError>,
        /// The spool's room, in octets, for `Step::CheckSpace`.
        room: u64,
        store_result: Result<(), StoreError>,
        /// What the users file says `user` may send as.
        user_senders: Option<Senders>,
        /// Passthrough: the smarthost's next replies (when empty: 250, or 354 to DATA).
        upstream: std::collections::VecDeque<Reply>,
        /// Passthrough: what the smarthost was asked, in order.
        asked: Vec<String>,
        /// Passthrough: there is no smarthost to ask.
        no_smarthost: bool,
        /// `rate_limit`, shared by the sessions of a test.
        rate: Option<Arc<crate::server::limits::RateTable>>,
        /// What the session refused, in order (what the shell logs).
        refusals: Vec<Refusal>,
        /// Every check asked, with its answer: `space SIZE yes`, `rate IP no`.
        checks: Vec<String>,
        /// The shell can run a TLS handshake.
        tls: bool,
        /// For `driver::run`: the reads to give, in order (then the client is gone).
        reads: std::collections::VecDeque<Vec<u8>>,
        /// Messages opened and then dropped.
        discarded: u32,
    }

    impl Script {
        fn next_upstream(&mut self, default: u16) -> Reply {
            self.upstream
                .pop_front()
                .unwrap_or_else(|| Reply::new(default, "2.0.0 ok"))
        }
    }

    impl driver::Shell for Script {
        type Message = ();

        fn read(&mut self, buf: &mut [u8], _: &ServerSession) -> driver::Input {
            match self.reads.pop_front() {
                Some(r) => {
                    buf[..r.len()].copy_from_slice(&r);
                    driver::Input::Bytes(r.len())
                }
                None => driver::Input::Closed,
            }
        }

        fn write(&mut self, replies: &[u8]) -> Result<(), driver::Gone> {
            assert!(replies.len() <= OUT_CAP);
            self.replies
                .push_str(std::str::from_utf8(replies).expect("replies are ASCII"));
            Ok(())
        }

        fn open(&mut self, _: &ServerSession) -> Result<(), StoreError> {
            self.open_result?;
            self.body.clear();
            Ok(())
        }

        fn stamp<'m>(&self, _: &'m ()) -> Stamp<'m> {
            Stamp {
                id: "ID1",
                date: "DATE",
            }
        }

        fn write_body(&mut self, _: &mut (), body: &[u8]) -> Result<(), StoreError> {
            assert!(body.len() <= BODY_CAP);
            self.body.extend_from_slice(body);
            Ok(())
        }

        fn commit(&mut self, _: &mut (), _: &ServerSession) -> Result<(), StoreError> {
            let body = std::mem::take(&mut self.body);
            self.store_result?;
            self.stored.push(body);
            Ok(())
        }

        fn discard(&mut self, _: ()) {
            self.body.clear();
            self.discarded += 1;
        }

        fn check_space(&mut self, size: u64) -> bool {
            let room = size <= self.room;
            self.checks.push(format!("space {size} {}", yes(room)));
            room
        }

        fn check_rate(&mut self, ip: IpAddr) -> bool {
            let now = std::time::Instant::now();
            let ok = self.rate.as_ref().is_none_or(|r| r.take(ip, now));
            self.checks.push(format!("rate {ip} {}", yes(ok)));
            ok
        }

        fn authenticate(&mut self, s: &ServerSession) -> Option<Option<Senders>> {
            let ok = s.credentials() == Some(("user", &b"pass"[..]));
            ok.then(|| self.user_senders.clone())
        }

        fn tls_available(&self) -> bool {
            self.tls
        }

        fn handshake(&mut self) -> bool {
            true
        }

        fn refused(&mut self, why: &Refusal, _: &ServerSession, _: Option<&str>) {
            self.refusals.push(why.clone());
        }

        fn upstream_mail(&mut self, s: &ServerSession) -> Option<Reply> {
            if self.no_smarthost {
                return None;
            }
            let from = String::from_utf8_lossy(&s.envelope().sender).into_owned();
            self.asked.push(format!("MAIL {from}"));
            Some(self.next_upstream(250))
        }

        fn upstream_rcpt(&mut self, s: &ServerSession, first: usize) -> Option<Vec<Reply>> {
            if self.no_smarthost {
                return None;
            }
            let to: Vec<String> = s.envelope().recipients[first..]
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect();
            Some(
                to.iter()
                    .map(|t| {
                        self.asked.push(format!("RCPT {t}"));
                        self.next_upstream(250)
                    })
                    .collect(),
            )
        }

        fn upstream_data(&mut self, _: &ServerSession) -> Option<Reply> {
            if self.no_smarthost {
                return None;
            }
            self.asked.push("DATA".into());
            self.body.clear();
            Some(self.next_upstream(354))
        }

        fn upstream_stamp(&self) -> Option<Stamp<'_>> {
            Some(Stamp {
                id: "ID1",
                date: "DATE",
            })
        }

        fn upstream_body(&mut self, body: &[u8]) {
            assert!(body.len() <= BODY_CAP);
            self.body.extend_from_slice(body);
        }

        fn upstream_end(&mut self, _: &ServerSession) -> Option<Reply> {
            if self.no_smarthost {
                return None;
            }
            let body = std::mem::take(&mut self.body);
            self.asked
                .push(format!("END {}", String::from_utf8_lossy(&body)));
            let r = self.next_upstream(250);
            if r.code / 100 == 2 {
                self.passed.push(body);
            }
            Some(r)
        }

        fn upstream_abandon(&mut self) {
            self.body.clear();
        }
    }

    fn yes(b: bool) -> &'static str {
        if b { "yes" } else { "no" }
    }

    /// A session, the scripted shell, and the one driver between them. Derefs to the
    /// script, so a test sets `h.room` and reads `h.stored`.
    pub(super) struct Harness {
        s: ServerSession,
        script: Script,
        driver: driver::Driver<()>,
    }

    impl core::ops::Deref for Harness {
        type Target = Script;
        fn deref(&self) -> &Script {
            &self.script
        }
    }

    impl core::ops::DerefMut for Harness {
        fn deref_mut(&mut self) -> &mut Script {
            &mut self.script
        }
    }

    impl Harness {
        fn new(settings: Settings, relay_allowed: bool) -> Self {
            Self::with_peer(
                settings,
                Peer {
                    ip: IpAddr::from([192, 0, 2, 7]),
                    relay_allowed,
                    tls: false,
                    auth_plaintext: false,
                },
            )
        }

        pub(super) fn with_peer(settings: Settings, peer: Peer) -> Self {
            let mut s = ServerSession::new(settings);
            s.start(peer);
            let replies = String::from_utf8(s.output().to_vec()).unwrap();
            s.clear_output();
            Self {
                s,
                script: Script {
                    replies,
                    stored: vec![],
                    passed: vec![],
                    body: vec![],
                    closed: false,
                    open_result: Ok(()),
                    store_result: Ok(()),
                    room: u64::MAX,
                    user_senders: None,
                    upstream: Default::default(),
                    asked: vec![],
                    no_smarthost: false,
                    rate: None,
                    refusals: vec![],
                    checks: vec![],
                    tls: true,
                    reads: Default::default(),
                    discarded: 0,
                },
                driver: driver::Driver::new(),
            }
        }

        /// Feeds `input` in reads of `chunk` octets; the replies to it.
        pub(super) fn run(&mut self, input: &[u8], chunk: usize) -> String {
            let start = self.script.replies.len();
            for part in input.chunks(chunk.max(1)) {
                if self.script.closed {
                    break;
                }
                let end = self.driver.feed(&mut self.s, &mut self.script, part);
                let _ = self.driver.flush(&mut self.s, &mut self.script);
                if end.is_some() {
                    self.script.closed = true;
                }
            }
            self.script.replies[start..].to_string()
        }
    }

    /// Every refusal's log line, in the one wording all shells use.
    #[test]
    fn refusal_lines() {
        let mb = |s: &[u8]| Mailbox::from_slice(s).unwrap();
        let ip = IpAddr::from([192, 0, 2, 7]);
        let cases: &[(Refusal, Option<u16>, Option<&str>, &str)] = &[
            (
                Refusal::Relay { to: mb(b"x@y.z") },
                None,
                None,
                "reject: RCPT from [192.0.2.7]: 554 5.7.1 Relay access denied; to=<x@y.z>",
            ),
            (
                Refusal::Recipient { to: mb(b"x@y.z") },
                None,
                None,
                "reject: RCPT from [192.0.2.7]: 553 5.7.1 recipient not allowed; to=<x@y.z>",
            ),
            (
                Refusal::Sender { from: mb(b"a@b.c") },
                None,
                Some("cam\"1"),
                "reject: MAIL from [192.0.2.7]: 550 5.7.1 sender not allowed; from=<a@b.c>, \
                 sasl_username=cam\\\"1",
            ),
            (
                Refusal::TooManyMessages { count: 3 },
                None,
                None,
                "reject: MAIL from [192.0.2.7]: 421 4.7.0 3 messages in one connection",
            ),
            (
                Refusal::Rate { from: mb(b"") },
                None,
                None,
                "reject: MAIL from [192.0.2.7]: 450 4.7.1 message rate limit exceeded; from=<>",
            ),
            (
                Refusal::NoSpace { size: 9000 },
                None,
                None,
                "reject: MAIL from [192.0.2.7]: 452 4.3.1 not enough disk space for SIZE=9000",
            ),
            (
                Refusal::Data {
                    verdict: Verdict::TooBig,
                    size: 77,
                },
                Some(2525),
                None,
                "ID9: reject: DATA from [192.0.2.7]:2525: 552 5.3.4 message too big; size=77",
            ),
            (
                Refusal::DataAfterStartTls,
                Some(2525),
                None,
                "data after STARTTLS from [192.0.2.7]:2525 (possible command injection); closing",
            ),
            (
                Refusal::Upstream {
                    verb: "RCPT",
                    reply: Reply::new(550, "5.1.1 no such user"),
                    address: mb(b"x@y.z"),
                },
                None,
                None,
                "reject: RCPT from [192.0.2.7]: 550 5.1.1 no such user (smarthost); to=<x@y.z>",
            ),
            (
                Refusal::Upstream {
                    verb: "DATA",
                    reply: Reply::new(451, "4.3.0 busy"),
                    address: Mailbox::new(),
                },
                None,
                None,
                "reject: DATA from [192.0.2.7]: 451 4.3.0 busy (smarthost)",
            ),
        ];
        for (why, port, user, want) in cases {
            let mut line = String::new();
            why.describe(&mut line, ip, *port, "ID9", *user).unwrap();
            assert_eq!(line, *want);
        }
        assert!(Refusal::NoSpace { size: 1 }.is_warning());
        assert!(!Refusal::Relay { to: mb(b"a@b.c") }.is_warning());
    }

    #[test]
    fn refusals_are_told_to_the_shell() {
        let policy = Policy {
            senders: crate::protocol::policy::parse_patterns("*@example.net").unwrap(),
            recipients: crate::protocol::policy::parse_patterns("*@example.org").unwrap(),
            ..Policy::open("box.lan")
        };
        let mut h = Harness::new(with_policy(policy), false);
        h.room = 10;
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@evil.com>\r\nMAIL FROM:<a@example.net> SIZE=11\r\n\
              MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n",
            7,
        );
        assert_eq!(codes(&r)[1..], ["550", "452", "250", "554"]);
        let mb = |s: &[u8]| Mailbox::from_slice(s).unwrap();
        assert_eq!(
            h.refusals,
            [
                Refusal::Sender {
                    from: mb(b"a@evil.com")
                },
                Refusal::NoSpace { size: 11 },
                Refusal::Relay {
                    to: mb(b"b@example.org")
                },
            ]
        );
        assert_eq!(h.checks, ["space 11 no"]);
    }

    /// A shell without TLS (`sendmail -bs`) answers STARTTLS with 454 and the session
    /// goes on in plaintext; with TLS, the handshake starts the session anew.
    #[test]
    fn starttls_answers() {
        let tls = Settings {
            tls_available: true,
            ..settings()
        };
        let mut h = Harness::new(tls.clone(), true);
        h.tls = false;
        let r = h.run(b"EHLO x\r\n", 100);
        assert!(
            r.contains("250-STARTTLS\r\n"),
            "the session offers what its settings say"
        );
        assert_eq!(codes(&h.run(b"STARTTLS\r\n", 100)), ["454"]);
        assert!(!h.s.is_tls());
        assert_eq!(codes(&h.run(b"MAIL FROM:<a@b.c>\r\n", 100)), ["250"]);

        let mut h = Harness::new(tls, true);
        h.run(b"EHLO x\r\n", 100);
        assert_eq!(codes(&h.run(b"STARTTLS\r\n", 100)), ["220"]);
        assert!(h.s.is_tls());
        assert_eq!(
            codes(&h.run(b"MAIL FROM:<a@b.c>\r\n", 100)),
            ["503"],
            "EHLO again first"
        );
        // Pipelined after STARTTLS: refused, told, and the session ends.
        let mut h = Harness::new(settings_with_tls(), true);
        let r = h.run(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@b.c>\r\n", 100);
        assert!(r.ends_with(reply::DATA_AFTER_STARTTLS), "{r}");
        assert!(h.closed);
        assert_eq!(h.refusals, [Refusal::DataAfterStartTls]);
    }

    fn settings_with_tls() -> Settings {
        Settings {
            tls_available: true,
            ..settings()
        }
    }

    /// The driver owns the message being spooled: a client that goes away in the
    /// middle of DATA leaves nothing behind, and `run` says where it went.
    #[test]
    fn driver_drops_a_message_the_client_left() {
        let mut h = Harness::new(settings(), true);
        h.reads
            .push_back(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n".to_vec());
        h.reads.push_back(b"DATA\r\nSubject: half\r\n".to_vec());
        let mut buf = [0u8; 512];
        let end = driver::run(&mut h.s, &mut h.script, &mut buf);
        assert_eq!(end, driver::End::Lost("DATA"));
        assert_eq!(h.discarded, 1);
        assert!(h.stored.is_empty());
        assert_eq!(codes(&h.replies)[1..], ["250", "250", "250", "354"]);
    }

    fn codes(replies: &str) -> Vec<&str> {
        replies
            .split("\r\n")
            .filter(|l| l.len() >= 4 && &l[3..4] == " ")
            .map(|l| &l[..3])
            .collect()
    }

    #[test]
    fn greeting_and_ehlo() {
        let mut h = Harness::new(settings(), true);
        assert_eq!(h.replies, "220 relay.test ESMTP smtp-relayd\r\n");
        let r = h.run(b"EHLO client.test\r\n", 100);
        assert_eq!(
            r,
            "250-relay.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
        assert_eq!(h.run(b"HELO client.test\r\n", 100), "250 relay.test\r\n");
        assert_eq!(h.s.protocol(), "SMTP");
    }

    #[test]
    fn reply_code_table() {
        // (commands sent after a fresh greeting, expected final-reply codes)
        let cases: &[(&[u8], &[&str])] = &[
            (b"MAIL FROM:<a@b.c>\r\n", &["503"]),
            (b"RCPT TO:<a@b.c>\r\n", &["503"]),
            (b"DATA\r\n", &["503"]),
            (b"EHLO x\r\nRCPT TO:<a@b.c>\r\n", &["250", "503"]),
            (b"EHLO x\r\nDATA\r\n", &["250", "503"]),
            (
                b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nDATA\r\n",
                &["250", "250", "503"],
            ),
            (
                b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\n",
                &["250", "250", "503"],
            ),
            (
                b"EHLO x\r\nMAIL FROM:<a@b.c> SIZE=1001\r\n",
                &["250", "552"],
            ),
            (b"EHLO x\r\nMAIL FROM:<a@b.c> FOO=1\r\n", &["250", "555"]),
            (b"EHLO x\r\nMAIL FROM:<a@@b.c>\r\n", &["250", "501"]),
            (
                b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<b..d>\r\n",
                &["250", "250", "501"],
            ),
            (
                b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRSET\r\nRCPT TO:<a@b.c>\r\n",
                &["250", "250", "250", "503"],
            ),
            (
                b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nEHLO y\r\nRCPT TO:<a@b.c>\r\n",
                &["250", "250", "250", "503"],
            ),
            (
                b"NOOP\r\nHELP\r\nVRFY root\r\nEXPN list\r\n",
                &["250", "214", "252", "502"],
            ),
            (
                b"STARTTLS\r\nAUTH LOGIN\r\nBDAT 1\r\n",
                &["502", "502", "502"],
            ),
            (b"FROB\r\n", &["500"]),
            (b"EHLO\r\nHELO\r\n", &["501", "501"]),
            (b"DATA now\r\n", &["501"]),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
                &["500"],
            ),
            (b"QUIT\r\n", &["221"]),
        ];
        for &(input, want) in cases {
            for chunk in [1, 5, input.len()] {
                let mut h = Harness::new(settings(), true);
                let r = h.run(input, chunk);
                assert_eq!(
                    codes(&r),
                    want,
                    "input {:?} chunk {chunk}: {r}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn a_whole_transaction_pipelined() {
        let mut h = Harness::new(settings(), true);
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<g@h.i>\r\nDATA\r\n",
            1000,
        );
        assert_eq!(codes(&r), ["250", "250", "250", "250", "354"]);
        assert_eq!(h.s.envelope().recipients.len(), 2);
        assert_eq!(h.s.envelope().body, BodyType::EightBitMime);
        let r = h.run(b"Subject: hi\r\n\r\n..dot\r\n\xe9\r\n.\r\nQUIT\r\n", 3);
        assert_eq!(r, "250 2.0.0 Ok: queued as ID1\r\n221 2.0.0 Bye\r\n");
        assert_eq!(
            h.stored,
            vec![b"Subject: hi\r\n\r\n.dot\r\n\xe9\r\n".to_vec()]
        );
        assert!(h.closed);
    }

    fn passthrough() -> Settings {
        Settings {
            passthrough: true,
            ..settings()
        }
    }

    #[test]
    fn passthrough_gives_the_client_the_smarthost_replies() {
        let mut h = Harness::new(passthrough(), true);
        h.upstream.extend([
            Reply::new(250, "2.1.0 sender ok at upstream"),
            Reply::new(250, "2.1.5 rcpt ok"),
            Reply::new(550, "5.1.1 no such user"),
            Reply::new(354, "go ahead"),
            Reply::new(250, "2.0.0 queued upstream as 77"),
        ]);
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@b.c> SIZE=40\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<bad@e.f>\r\nDATA\r\n",
            7,
        );
        assert_eq!(
            r,
            "250-relay.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
             250 ENHANCEDSTATUSCODES\r\n250 2.1.0 sender ok at upstream\r\n250 2.1.5 rcpt ok\r\n\
             550 5.1.1 no such user\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert_eq!(
            h.asked,
            ["MAIL a@b.c", "RCPT d@e.f", "RCPT bad@e.f", "DATA"]
        );
        assert_eq!(h.s.envelope().size, Some(40));
        // Only the recipient the smarthost took stays in the envelope.
        assert_eq!(rcpts(&h), ["d@e.f"]);
        let r = h.run(b"Subject: hi\r\n\r\n..dot\r\n.\r\n", 3);
        assert_eq!(r, "250 2.0.0 queued upstream as 77\r\n");
        assert_eq!(h.asked[4], "END Subject: hi\r\n\r\n.dot\r\n");
        assert!(h.stored.is_empty(), "nothing is spooled");
        assert_eq!(h.s.messages, 1);
    }

    #[test]
    fn passthrough_refusals_reach_the_client() {
        // MAIL refused: no transaction; a text without an enhanced code gets one.
        let mut h = Harness::new(passthrough(), true);
        h.upstream.push_back(Reply::new(451, "try later"));
        let r = h.run(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n", 100);
        assert_eq!(codes(&r), ["250", "451", "503"]);
        assert!(r.contains("451 4.0.0 try later\r\n"), "{r}");
        assert_eq!(h.asked, ["MAIL a@b.c"]);
        // Every recipient refused: DATA needs one first.
        h.upstream.push_back(Reply::new(250, "2.1.0 ok"));
        h.upstream
            .push_back(Reply::new(550, "5.7.1 relaying denied"));
        let r = h.run(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n", 100);
        assert_eq!(codes(&r), ["250", "550", "503"]);
        // DATA refused: the transaction is over.
        h.upstream.push_back(Reply::new(250, "2.1.5 ok"));
        h.upstream.push_back(Reply::new(554, "5.5.1 no"));
        let r = h.run(b"RCPT TO:<d@e.f>\r\nDATA\r\nRCPT TO:<d@e.f>\r\n", 100);
        assert_eq!(codes(&r), ["250", "554", "503"]);
        // The end of data refused: the client gets it, and nothing counts.
        h.upstream.extend([
            Reply::new(250, "2.1.0 ok"),
            Reply::new(250, "2.1.5 ok"),
            Reply::new(354, "go"),
            Reply::new(452, "4.3.1 disk full upstream"),
        ]);
        let r = h.run(
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nhi\r\n.\r\n",
            100,
        );
        assert_eq!(codes(&r), ["250", "250", "354", "452"]);
        assert_eq!(h.s.messages, 0);
        // A nonsense code is never forwarded: 354 to MAIL, 334 at the end of data,
        // and 250 to DATA (the client would take its message for delivered).
        h.upstream.push_back(Reply::new(354, "what"));
        let r = h.run(b"MAIL FROM:<a@b.c>\r\n", 100);
        assert_eq!(r, reply::UPSTREAM_PROTOCOL);
        h.upstream.extend([
            Reply::new(250, "2.1.0 ok"),
            Reply::new(250, "2.1.5 ok"),
            Reply::new(250, "2.0.0 no data needed"),
        ]);
        let r = h.run(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n", 100);
        assert!(r.ends_with(reply::UPSTREAM_PROTOCOL), "{r}");
        h.upstream.extend([
            Reply::new(250, "2.1.0 ok"),
            Reply::new(250, "2.1.5 ok"),
            Reply::new(354, "go"),
            Reply::new(334, "VXNlcm5hbWU6"),
        ]);
        let r = h.run(
            b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nhi\r\n.\r\n",
            100,
        );
        assert!(r.ends_with(reply::UPSTREAM_PROTOCOL), "{r}");
        assert_eq!(h.s.messages, 0);
    }

    #[test]
    fn passthrough_without_a_smarthost_answers_every_question() {
        let mut h = Harness::new(passthrough(), true);
        h.run(b"HELO x\r\n", 100);
        // MAIL, then RCPT, each refused with a 451; the session goes on.
        let mut codes_seen = Vec::new();
        for line in [&b"MAIL FROM:<a@b.c>\r\n"[..], b"RCPT TO:<d@e.f>\r\n"] {
            h.no_smarthost = true;
            codes_seen.push(h.run(line, 100));
            h.no_smarthost = false;
            if codes_seen.len() == 1 {
                // The MAIL refusal leaves no transaction: open one to ask RCPT.
                h.upstream.push_back(Reply::new(250, "2.1.0 ok"));
                h.run(b"MAIL FROM:<a@b.c>\r\n", 100);
            }
        }
        assert!(
            codes_seen.iter().all(|r| r.starts_with("451 ")),
            "{codes_seen:?}"
        );
        assert!(h.s.envelope().recipients.is_empty());
        assert_eq!(codes(&h.run(b"NOOP\r\n", 100)), ["250"]);
    }

    #[test]
    fn passthrough_checks_locally_first() {
        // The policy, the size and the body checks answer without the smarthost.
        let mut settings = passthrough();
        settings.policy = Arc::new(Policy {
            senders: crate::protocol::policy::parse_patterns("*@b.c").unwrap(),
            ..Policy::open("relay.test")
        });
        let mut h = Harness::new(settings, true);
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@evil.test>\r\nMAIL FROM:<a@b.c> SIZE=5000\r\n",
            100,
        );
        assert_eq!(codes(&r)[1..], ["550", "552"]);
        assert!(h.asked.is_empty(), "{:?}", h.asked);
        let r = h.run(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n", 100);
        assert_eq!(codes(&r), ["250", "250", "354"]);
        // Too big: refused here, and the smarthost's DATA is abandoned, never ended.
        let big = vec![b'x'; 700];
        let mut body = Vec::new();
        for _ in 0..3 {
            body.extend_from_slice(&big);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".\r\n");
        let r = h.run(&body, 100);
        assert_eq!(codes(&r), ["552"]);
        assert_eq!(h.asked, ["MAIL a@b.c", "RCPT d@e.f", "DATA"]);
    }

    #[test]
    fn passthrough_alias_targets_each_asked() {
        let mut settings = passthrough();
        settings.policy = Arc::new(Policy {
            aliases: [(
                "ops".to_string(),
                vec![
                    Mailbox::try_from(&b"a@x.y"[..]).unwrap(),
                    Mailbox::try_from(&b"b@x.y"[..]).unwrap(),
                ],
            )]
            .into_iter()
            .collect(),
            ..Policy::open("relay.test")
        });
        let mut h = Harness::new(settings, true);
        h.upstream.extend([
            Reply::new(250, "2.1.0 ok"),
            Reply::new(550, "5.1.1 a unknown"),
            Reply::new(250, "2.1.5 b ok"),
        ]);
        let r = h.run(b"HELO x\r\nMAIL FROM:<s@x.y>\r\nRCPT TO:<ops>\r\n", 100);
        // One target taken: the client hears that acceptance; the other is dropped.
        assert!(r.ends_with("250 2.1.5 b ok\r\n"), "{r}");
        assert_eq!(h.asked[1..], ["RCPT a@x.y", "RCPT b@x.y"]);
        assert_eq!(rcpts(&h), ["b@x.y"]);
    }

    #[test]
    fn long_text_lines_are_taken_and_noted() {
        let txn = b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n";
        let mut h = Harness::new(
            Settings {
                max_message_size: 5000,
                ..settings()
            },
            true,
        );
        h.run(txn, 100);
        let r = h.run(&[&[b'x'; 1200][..], b"\r\n.\r\n"].concat(), 7);
        assert_eq!(codes(&r), ["250"], "{r}");
        assert!(h.s.saw_long_line());
        assert_eq!(h.stored[0].len(), 1202);
        h.run(txn, 100);
        h.run(b"short\r\n.\r\n", 7);
        assert!(!h.s.saw_long_line());
    }

    #[test]
    fn missing_date_and_message_id_are_added_when_configured() {
        let txn =
            b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: s\r\n\r\nb\r\n.\r\n";
        let mut h = Harness::new(
            Settings {
                add_missing_headers: true,
                ..settings()
            },
            true,
        );
        h.run(txn, 5);
        assert_eq!(
            String::from_utf8_lossy(&h.stored[0]),
            "Subject: s\r\nDate: DATE\r\nMessage-ID: <ID1@relay.test>\r\n\r\nb\r\n"
        );
        // Off: the message is stored as sent.
        let mut h = Harness::new(settings(), true);
        h.run(txn, 5);
        assert_eq!(h.stored[0], b"Subject: s\r\n\r\nb\r\n");
    }

    #[test]
    fn declared_size_is_checked_against_free_space_at_mail() {
        // RFC 1870 §6.1: 452 at MAIL when the declared size does not fit.
        let mut h = Harness::new(settings(), true);
        h.room = 500;
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@b.c> SIZE=900\r\nRCPT TO:<d@e.f>\r\nMAIL FROM:<a@b.c> SIZE=400\r\nRCPT TO:<d@e.f>\r\nMAIL FROM:<a@b.c>\r\n",
            3,
        );
        assert_eq!(codes(&r), ["250", "452", "503", "250", "250", "503"], "{r}");
        assert!(r.contains("452 4.3.1 "));
    }

    #[test]
    fn command_line_limit_counts_the_crlf() {
        // RFC 5321 §4.5.3.1.4: 512 octets with the CRLF; one more is too long.
        let noop = |total: usize| {
            let mut line = b"NOOP ".to_vec();
            line.resize(total - 2, b'x');
            line.extend_from_slice(b"\r\n");
            assert_eq!(line.len(), total);
            let mut h = Harness::new(settings(), true);
            codes(&h.run(&line, 64)).concat()
        };
        assert_eq!(noop(512), "250");
        assert_eq!(noop(513), "500");
        assert_eq!(noop(100_000), "500");
    }

    #[test]
    fn refusals_after_data() {
        let mut big = settings();
        big.max_message_size = 10;
        let txn = b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n";
        let cases: &[(Settings, &[u8], &str)] = &[
            (big.clone(), b"0123456789abcdef\r\n.\r\n", "552"),
            (
                Settings {
                    reject_bare_newline: true,
                    ..settings()
                },
                b"a\nb\r\n.\r\n",
                "550",
            ),
            (
                Settings {
                    max_hops: 1,
                    ..settings()
                },
                b"Received: a\r\nReceived: b\r\n\r\nx\r\n.\r\n",
                "554",
            ),
        ];
        for (s, body, code) in cases {
            let mut h = Harness::new(s.clone(), true);
            h.run(txn, 100);
            let r = h.run(body, 7);
            assert_eq!(codes(&r), [*code], "{r}");
            assert!(h.stored.is_empty());
            // The session is ready for the next transaction.
            assert_eq!(codes(&h.run(b"MAIL FROM:<>\r\n", 100)), ["250"]);
        }
        // Without reject, a bare LF is normalised and the message is taken.
        let mut h = Harness::new(settings(), true);
        h.run(txn, 100);
        assert_eq!(codes(&h.run(b"a\nb\r\n.\r\n", 100)), ["250"]);
        assert_eq!(h.stored, vec![b"a\r\nb\r\n".to_vec()]);
    }

    #[test]
    fn relay_denied_outside_allow() {
        let mut h = Harness::new(settings(), false);
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n",
            100,
        );
        assert_eq!(codes(&r), ["250", "250", "554", "503"]);
    }

    #[test]
    fn recipient_limit() {
        let mut h = Harness::new(settings(), true);
        let mut input = b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n".to_vec();
        for i in 0..101 {
            input.extend_from_slice(format!("RCPT TO:<r{i}@b.c>\r\n").as_bytes());
        }
        let r = h.run(&input, 64);
        let c = codes(&r);
        assert_eq!(c.len(), 103);
        assert!(c[..102].iter().all(|&c| c == "250"));
        assert_eq!(c[102], "452");
    }

    fn with_policy(policy: Policy) -> Settings {
        Settings {
            policy: Arc::new(policy),
            ..settings()
        }
    }

    fn rcpts(h: &Harness) -> Vec<String> {
        h.s.envelope()
            .recipients
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    #[test]
    fn sender_and_recipient_patterns() {
        let policy = Policy {
            senders: crate::protocol::policy::parse_patterns("*@example.net, <>").unwrap(),
            recipients: crate::protocol::policy::parse_patterns("*@*.example.org").unwrap(),
            ..Policy::open("example.net")
        };
        let mut h = Harness::new(with_policy(policy), true);
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@evil.org>\r\nMAIL FROM:<a@EXAMPLE.net>\r\n\
              RCPT TO:<b@example.org>\r\nRCPT TO:<b@mx.example.org>\r\nRSET\r\n\
              MAIL FROM:<>\r\nRSET\r\nMAIL FROM:<cam>\r\n",
            7,
        );
        assert_eq!(
            codes(&r),
            [
                "250", "550", "250", "553", "250", "250", "250", "250", "250"
            ]
        );
        assert!(r.contains("550 5.7.1 ") && r.contains("553 5.7.1 "));
        // `cam` was qualified to cam@example.net, which the pattern admits.
        assert_eq!(&h.s.envelope().sender[..], b"cam@example.net");
    }

    #[test]
    fn bare_names_are_qualified_and_aliased() {
        let mut policy = Policy::open("box.lan");
        for line in [
            "root admin@example.org",
            "ops a@example.org, admin@example.org",
        ] {
            let (n, t) = crate::protocol::policy::parse_alias(line).unwrap();
            policy.aliases.insert(n, t);
        }
        let mut h = Harness::new(with_policy(policy), true);
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<cron>\r\nRCPT TO:<root>\r\nRCPT TO:<Ops@box.lan>\r\n\
              RCPT TO:<guest>\r\nRCPT TO:<root@elsewhere.org>\r\nRCPT TO:<guest@box.lan>\r\n",
            5,
        );
        assert_eq!(codes(&r), ["250"; 7]);
        assert_eq!(&h.s.envelope().sender[..], b"cron@box.lan");
        assert_eq!(
            rcpts(&h),
            [
                "admin@example.org",
                "a@example.org",
                "guest@box.lan",
                "root@elsewhere.org"
            ],
            "an address named twice (by an alias or by the client) is kept once"
        );
        // A name that cannot be qualified within the path limit.
        let long = format!("RCPT TO:<{}>\r\n", "a".repeat(64));
        let mut h = Harness::new(with_policy(Policy::open(&"d".repeat(200))), true);
        let r = h.run(
            format!("EHLO x\r\nMAIL FROM:<a@b.c>\r\n{long}").as_bytes(),
            100,
        );
        assert_eq!(codes(&r), ["250", "250", "553"]);
    }

    #[test]
    fn configured_limits() {
        // max_recipients, counted after aliases.
        let mut policy = Policy {
            max_recipients: 2,
            ..Policy::open("box.lan")
        };
        let (n, t) = crate::protocol::policy::parse_alias("two a@x.org,b@x.org").unwrap();
        policy.aliases.insert(n, t);
        let mut h = Harness::new(with_policy(policy), true);
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nRCPT TO:<two>\r\n\
              RCPT TO:<f@g.h>\r\nRCPT TO:<i@j.k>\r\n",
            100,
        );
        assert_eq!(codes(&r), ["250", "250", "250", "452", "250", "452"]);
        assert!(r.contains("452 4.5.3 "));

        // max_messages_per_connection: the next MAIL gets 421 and the session ends.
        let policy = Policy {
            max_messages_per_connection: 1,
            ..Policy::open("box.lan")
        };
        let mut h = Harness::new(with_policy(policy), true);
        let msg = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<c@d.e>\r\nDATA\r\nx\r\n.\r\n";
        let mut input = b"EHLO x\r\n".to_vec();
        input.extend_from_slice(msg);
        input.extend_from_slice(msg);
        let r = h.run(&input, 100);
        assert_eq!(codes(&r), ["250", "250", "250", "354", "250", "421"]);
        assert!(r.ends_with("421 4.7.0 Error: too many messages in this connection, closing\r\n"));
        assert!(h.closed);
        assert_eq!(h.stored.len(), 1);

        // rate_limit 2/60: the third MAIL from the address, in any connection, gets 450.
        // The session asks the shell, which keeps one table for every connection.
        let policy = Arc::new(Policy {
            rate_limited: true,
            ..Policy::open("box.lan")
        });
        let settings = Settings {
            policy,
            ..settings()
        };
        let table = Arc::new(crate::server::limits::RateTable::new(
            crate::server::limits::Rate::parse("2/60").unwrap().unwrap(),
        ));
        let mut h = Harness::new(settings.clone(), true);
        h.rate = Some(Arc::clone(&table));
        let r = h.run(
            b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRSET\r\nMAIL FROM:<a@b.c>\r\n",
            100,
        );
        assert_eq!(codes(&r), ["250", "250", "250", "250"]);
        assert_eq!(h.checks, ["rate 192.0.2.7 yes", "rate 192.0.2.7 yes"]);
        let mut h = Harness::new(settings, true);
        h.rate = Some(table);
        let r = h.run(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n", 100);
        assert_eq!(
            codes(&r),
            ["250", "450", "503"],
            "no transaction after the 450"
        );
        assert!(r.contains("450 4.7.1 "));
        assert_eq!(
            h.refusals,
            [Refusal::Rate {
                from: Mailbox::from_slice(b"a@b.c").unwrap()
            }]
        );
    }

    #[test]
    fn users_file_senders_bind_an_authenticated_user() {
        let settings = Settings {
            tls_available: true,
            auth_available: true,
            ..settings()
        };
        let mut h = Harness::new(settings, false);
        h.user_senders = Some(Arc::from(
            crate::protocol::policy::parse_patterns("cam1@example.net,*@*.cams.example.net")
                .unwrap(),
        ));
        h.run(b"EHLO x\r\nSTARTTLS\r\n", 100);
        let r = h.run(
            b"EHLO x\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\nMAIL FROM:<boss@example.net>\r\n\
              MAIL FROM:<cam1@example.net>\r\nRCPT TO:<x@y.z>\r\nRSET\r\n\
              MAIL FROM:<a@b.cams.example.net>\r\n",
            9,
        );
        assert_eq!(codes(&r)[1..], ["235", "550", "250", "250", "250", "250"]);
    }

    #[test]
    fn over_long_command_line_is_discarded() {
        let mut h = Harness::new(settings(), true);
        let mut input = b"NOOP ".to_vec();
        input.extend(std::iter::repeat_n(b'A', 100_000));
        input.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(
            h.run(&input, 4096),
            "500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n"
        );
        // 510 octets + CRLF is within the limit.
        let line = [b"NOOP ", &[b'a'; 505][..], b"\r\n"].concat();
        assert_eq!(line.len(), 512);
        assert_eq!(codes(&h.run(&line, 512)), ["250"]);
    }

    #[test]
    fn spool_failures() {
        let mut h = Harness::new(settings(), true);
        h.open_result = Err(StoreError::NoSpace);
        let r = h.run(
            b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n",
            100,
        );
        assert_eq!(codes(&r), ["250", "250", "250", "452"]);
        let mut h = Harness::new(settings(), true);
        h.store_result = Err(StoreError::Local);
        h.run(
            b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n",
            100,
        );
        assert_eq!(codes(&h.run(b"x\r\n.\r\n", 100)), ["451"]);
    }

    #[test]
    fn many_pipelined_commands_flush_in_between() {
        let mut h = Harness::new(settings(), true);
        let input: Vec<u8> = b"NOOP\r\n".repeat(2000);
        let r = h.run(&input, input.len());
        assert_eq!(codes(&r).len(), 2000);
    }

    #[test]
    fn starttls_resets_everything_and_refuses_injection() {
        let tls = Settings {
            tls_available: true,
            ..settings()
        };
        let mut h = Harness::new(tls.clone(), true);
        let r = h.run(b"EHLO x\r\n", 100);
        assert!(r.contains("250-STARTTLS\r\n"), "{r}");
        // In a transaction: refused.
        assert_eq!(
            codes(&h.run(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nSTARTTLS\r\n", 100)),
            ["250", "250", "503"]
        );
        h.run(b"RSET\r\n", 100);
        // Clean: 220, then the session starts over (EHLO needed, nothing remembered).
        assert_eq!(
            h.run(b"STARTTLS\r\n", 100),
            "220 2.0.0 Ready to start TLS\r\n"
        );
        assert!(h.s.is_tls());
        assert_eq!(codes(&h.run(b"MAIL FROM:<a@b.c>\r\n", 100)), ["503"]);
        let r = h.run(b"EHLO x\r\n", 100);
        assert!(!r.contains("STARTTLS"), "not offered twice: {r}");
        assert_eq!(codes(&h.run(b"STARTTLS\r\n", 100)), ["554"]);
        assert_eq!(h.s.protocol(), "ESMTPS");

        // Pipelined after STARTTLS in the same read: never executed, session ends.
        let mut h = Harness::new(tls, true);
        let r = h.run(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<evil@x.y>\r\n", 1000);
        assert!(
            r.ends_with("421 4.7.0 Error: data after STARTTLS; closing connection\r\n"),
            "{r}"
        );
        assert!(h.closed && !h.s.is_tls());
        assert!(!r.contains("250 2.1.0"));

        // Without a certificate, STARTTLS is not offered and not implemented.
        let mut h = Harness::new(settings(), true);
        assert!(!h.run(b"EHLO x\r\n", 100).contains("STARTTLS"));
        assert_eq!(codes(&h.run(b"STARTTLS\r\n", 100)), ["502"]);
    }

    #[test]
    fn auth_plain_and_login_exchanges() {
        let auth = Settings {
            tls_available: true,
            auth_available: true,
            ..settings()
        };
        // Before TLS (not loopback-plaintext): not offered, 538 if tried.
        let mut h = Harness::new(auth.clone(), false);
        assert!(!h.run(b"EHLO x\r\n", 100).contains("AUTH"));
        assert_eq!(
            codes(&h.run(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n", 100)),
            ["538"]
        );
        h.run(b"STARTTLS\r\n", 100);
        assert!(
            h.run(b"EHLO x\r\n", 100)
                .contains("250-AUTH PLAIN LOGIN\r\n")
        );
        // Not allowed to relay by address; AUTH PLAIN with an initial response.
        assert_eq!(
            codes(&h.run(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRSET\r\n", 100)),
            ["250", "554", "250"]
        );
        assert_eq!(
            h.run(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n", 100),
            "235 2.7.0 Authentication successful\r\n"
        );
        assert_eq!(h.s.authenticated_user(), Some("user"));
        assert_eq!(
            codes(&h.run(b"MAIL FROM:<a@b.c> AUTH=<>\r\nRCPT TO:<d@e.f>\r\n", 100)),
            ["250", "250"]
        );
        assert_eq!(h.s.protocol(), "ESMTPSA");
        assert_eq!(
            codes(&h.run(b"RSET\r\nAUTH LOGIN\r\n", 100)),
            ["250", "503"]
        );

        // LOGIN step by step, a wrong password, a cancel, junk, then too many failures.
        let mut h = Harness::new(
            Settings {
                tls_available: false,
                ..auth.clone()
            },
            false,
        );
        h.s.peer.auth_plaintext = true;
        h.run(b"EHLO x\r\n", 100);
        assert_eq!(h.run(b"AUTH LOGIN\r\n", 100), "334 VXNlcm5hbWU6\r\n");
        assert_eq!(h.run(b"dXNlcg==\r\n", 100), "334 UGFzc3dvcmQ6\r\n");
        assert_eq!(codes(&h.run(b"d3Jvbmc=\r\n", 100)), ["535"]);
        assert_eq!(codes(&h.run(b"AUTH PLAIN\r\n*\r\n", 100)), ["334", "501"]);
        assert_eq!(codes(&h.run(b"AUTH PLAIN !!!!\r\n", 100)), ["501"]);
        assert_eq!(codes(&h.run(b"AUTH CRAM-MD5\r\n", 100)), ["504"]);
        // A foreign authzid is refused even with the right password.
        assert_eq!(
            codes(&h.run(b"AUTH PLAIN b3RoZXIAdXNlcgBwYXNz\r\n", 100)),
            ["535"]
        );
        let r = h.run(b"AUTH PLAIN AHVzZXIAd3Jvbmc=\r\n", 100);
        assert_eq!(
            r,
            "421 4.7.0 Error: too many failed authentication attempts\r\n"
        );
        assert!(h.closed);

        // require_auth: even an allowed address must authenticate before MAIL.
        let mut h = Harness::new(
            Settings {
                require_auth: true,
                ..auth
            },
            true,
        );
        h.run(b"EHLO x\r\n", 100);
        assert_eq!(codes(&h.run(b"MAIL FROM:<a@b.c>\r\n", 100)), ["530"]);
    }

    #[test]
    fn received_header_format() {
        let mut h = Harness::new(settings(), true);
        h.run(
            b"EHLO cam1\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n",
            100,
        );
        let mut s = String::new();
        received_header(&mut s, &h.s, "ABC", "Mon, 30 Nov 2026 22:00:00 +0000").unwrap();
        assert_eq!(
            s,
            "Received: from cam1 ([192.0.2.7])\r\n\tby relay.test (smtp-relayd) with ESMTP id ABC\r\n\tfor <d@e.f>; Mon, 30 Nov 2026 22:00:00 +0000\r\n"
        );
    }

    /// Runs a session over `input` in chunks; returns every reply and stored message.
    pub(super) fn run_all(input: &[u8], chunk: usize) -> (String, Vec<Vec<u8>>) {
        run_all_in(input, chunk, false)
    }

    /// The same, in passthrough with a smarthost that takes everything (a message
    /// counts as stored when its end of data is answered).
    pub(super) fn run_all_in(
        input: &[u8],
        chunk: usize,
        passthrough: bool,
    ) -> (String, Vec<Vec<u8>>) {
        let settings = Settings {
            hostname: heapless::String::try_from("relay.test").unwrap(),
            max_message_size: 200,
            reject_bare_newline: false,
            max_hops: 1,
            tls_available: true,
            auth_available: true,
            require_auth: false,
            policy: Arc::new(Policy::open("relay.test")),
            passthrough,
            add_missing_headers: false,
        };
        let mut h = Harness::with_peer(
            settings,
            Peer {
                ip: IpAddr::from([127, 0, 0, 1]),
                relay_allowed: true,
                tls: false,
                auth_plaintext: true,
            },
        );
        h.room = 100;
        h.run(input, chunk);
        let stored = if passthrough {
            std::mem::take(&mut h.script.passed)
        } else {
            std::mem::take(&mut h.script.stored)
        };
        (std::mem::take(&mut h.script.replies), stored)
    }
}

#[cfg(test)]
mod random_input {
    use super::tests::{run_all, run_all_in};

    /// Arbitrary bytes, cut into arbitrary chunks, never panic the session, never
    /// overflow its buffers, and the replies do not depend on how input is chunked.
    #[test]
    fn arbitrary_bytes_any_chunking() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let atoms: &[&[u8]] = &[
            b"EHLO x\r\n",
            b"HELO y\r\n",
            b"MAIL FROM:<a@b.c>\r\n",
            b"MAIL FROM:<>\r\n",
            b"RCPT TO:<d@e.f>\r\n",
            b"DATA\r\n",
            b"RSET\r\n",
            b"NOOP\r\n",
            b".\r\n",
            b"\r\n",
            b"\n",
            b"\r",
            b".",
            b"..",
            b"QUIT\r\n",
            b"\x00",
            b"\xff\xfe",
            b"Received: x\r\n",
            b"AUTH PLAIN\r\n",
            b"MAIL FROM:<a@b.c> SIZE=99999\r\n",
        ];
        for _ in 0..300 {
            let mut input = Vec::new();
            for _ in 0..(next() % 60) {
                match next() % 4 {
                    0 => input.extend((0..next() % 40).map(|_| next() as u8)),
                    1 => input.extend(std::iter::repeat_n(b'A', (next() % 700) as usize)),
                    _ => input.extend_from_slice(atoms[(next() % atoms.len() as u64) as usize]),
                }
            }
            let whole = run_all(&input, input.len().max(1));
            let chunked = run_all(&input, 1 + (next() % 13) as usize);
            assert_eq!(whole, chunked, "input {input:?}");
            // Passthrough: the same for any chunking, and the same messages go out
            // as durable mode stores.
            let pass = run_all_in(&input, input.len().max(1), true);
            let pass_chunked = run_all_in(&input, 1 + (next() % 13) as usize, true);
            assert_eq!(pass, pass_chunked, "input {input:?}");
            assert_eq!(pass.1, whole.1, "input {input:?}");
        }
    }
}
