//! The server session fed arbitrary bytes cut into chunks, through the one driver
//! every shell uses: it never panics, its buffers stay within their bounds, and its
//! replies and stored messages are the same for every split of the input (the first
//! byte picks the chunk size, and its top bit passthrough mode, with a scripted
//! smarthost whose replies vary, odd ones included).
#![no_main]
use std::net::IpAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use smtp_relayd::protocol::client::Reply;
use smtp_relayd::protocol::driver::{self, Driver, Input, Shell};
use smtp_relayd::protocol::policy::{Policy, Senders};
use smtp_relayd::protocol::server::{
    BODY_CAP, OUT_CAP, Peer, Refusal, ServerSession, Settings, Stamp, StoreError,
};

/// The scripted smarthost's reply number `n`: mostly yes, sometimes not, sometimes
/// a code that makes no sense there.
fn upstream(n: u32, yes: u16) -> Reply {
    match n % 7 {
        3 => Reply::new(451, "4.3.0 busy"),
        5 => Reply::new(550, "no enhanced code \x01"),
        6 if n % 3 == 0 => Reply::new(if yes == 354 { 250 } else { 354 }, "odd"),
        _ => Reply::new(yes, "ok"),
    }
}

#[derive(Default)]
struct Script {
    out: Vec<u8>,
    stored: Vec<Vec<u8>>,
    body: Vec<u8>,
    opens: u32,
    asked: u32,
    rate_asked: u32,
}

const STAMP: Stamp<'static> = Stamp {
    id: "ID",
    date: "Thu, 3 Dec 2026 14:00:00 +0000",
};

impl Shell for Script {
    type Message = ();

    fn read(&mut self, _: &mut [u8], _: &ServerSession) -> Input {
        Input::Closed
    }

    fn write(&mut self, replies: &[u8]) -> Result<(), driver::Gone> {
        assert!(replies.len() <= OUT_CAP);
        self.out.extend_from_slice(replies);
        Ok(())
    }

    fn open(&mut self, _: &ServerSession) -> Result<(), StoreError> {
        self.body.clear();
        // Every third open fails, as a full disk would.
        self.opens += 1;
        if self.opens % 3 == 0 {
            return Err(StoreError::NoSpace);
        }
        Ok(())
    }

    fn stamp<'m>(&self, _: &'m ()) -> Stamp<'m> {
        STAMP
    }

    fn write_body(&mut self, _: &mut (), body: &[u8]) -> Result<(), StoreError> {
        assert!(body.len() <= BODY_CAP);
        self.body.extend_from_slice(body);
        Ok(())
    }

    fn commit(&mut self, _: &mut (), _: &ServerSession) -> Result<(), StoreError> {
        self.stored.push(std::mem::take(&mut self.body));
        Ok(())
    }

    fn discard(&mut self, _: ()) {
        self.body.clear();
    }

    // Room for messages up to 150 octets.
    fn check_space(&mut self, size: u64) -> bool {
        size <= 150
    }

    // Every fifth MAIL is over the rate.
    fn check_rate(&mut self, _: IpAddr) -> bool {
        self.rate_asked += 1;
        self.rate_asked % 5 != 0
    }

    fn authenticate(&mut self, s: &ServerSession) -> Option<Option<Senders>> {
        let ok = s.credentials() == Some(("user", &b"pass"[..]));
        ok.then_some(None)
    }

    fn tls_available(&self) -> bool {
        true
    }

    fn handshake(&mut self) -> bool {
        true
    }

    fn refused(&mut self, why: &Refusal, s: &ServerSession, id: Option<&str>) {
        // Every refusal has a one-line description.
        let mut line = String::new();
        why.describe(&mut line, s.peer().ip, Some(25), id.unwrap_or(""), None)
            .unwrap();
        assert!(!line.contains('\n'), "{line:?}");
    }

    fn upstream_mail(&mut self, _: &ServerSession) -> Option<Reply> {
        self.asked += 1;
        Some(upstream(self.asked, 250))
    }

    fn upstream_rcpt(&mut self, s: &ServerSession, first: usize) -> Option<Vec<Reply>> {
        self.asked += 1;
        let n = s.envelope().recipients.len() - first;
        let asked = self.asked;
        let replies: Vec<Reply> = (0..n as u32).map(|i| upstream(asked + i, 250)).collect();
        // Sometimes fewer replies than recipients, as when the connection fails.
        let keep = replies.len().min(1 + asked as usize % 3);
        Some(replies[..keep].to_vec())
    }

    fn upstream_data(&mut self, _: &ServerSession) -> Option<Reply> {
        self.asked += 1;
        self.body.clear();
        Some(upstream(self.asked, 354))
    }

    fn upstream_stamp(&self) -> Option<Stamp<'_>> {
        Some(STAMP)
    }

    fn upstream_body(&mut self, body: &[u8]) {
        assert!(body.len() <= BODY_CAP);
        self.body.extend_from_slice(body);
    }

    fn upstream_end(&mut self, _: &ServerSession) -> Option<Reply> {
        self.asked += 1;
        self.stored.push(std::mem::take(&mut self.body));
        Some(upstream(self.asked, 250))
    }

    fn upstream_abandon(&mut self) {
        self.body.clear();
    }
}

fn run(input: &[u8], chunk: usize, passthrough: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut s = ServerSession::new(Settings {
        hostname: heapless::String::try_from("relay.test").unwrap(),
        max_message_size: 300,
        reject_bare_newline: false,
        max_hops: 2,
        tls_available: true,
        auth_available: true,
        require_auth: false,
        policy: Arc::new(Policy {
            max_recipients: 5,
            max_messages_per_connection: 3,
            rate_limited: true,
            ..Policy::open("relay.test")
        }),
        passthrough,
        add_missing_headers: true,
    });
    s.start(Peer {
        ip: [127, 0, 0, 1].into(),
        relay_allowed: true,
        tls: false,
        auth_plaintext: true,
    });
    let mut script = Script::default();
    let mut driver = Driver::new();
    let _ = driver.flush(&mut s, &mut script);
    for part in input.chunks(chunk) {
        let end = driver.feed(&mut s, &mut script, part);
        let _ = driver.flush(&mut s, &mut script);
        if end.is_some() {
            break;
        }
    }
    (script.out, script.stored)
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, input)) = data.split_first() else {
        return;
    };
    let passthrough = c & 0x80 != 0;
    let whole = run(input, input.len().max(1), passthrough);
    // STARTTLS depends on where a read ends (data after it in the same read is
    // refused), so only inputs without it must be split-invariant.
    if !input
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"starttls"))
    {
        let split = run(input, usize::from(c % 64) + 1, passthrough);
        assert_eq!(whole, split, "replies differ by chunking");
    }
    // Every reply line starts with three digits and ends in CRLF.
    for line in whole.0.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.len() >= 5 && line[..3].iter().all(u8::is_ascii_digit),
            "{line:?}"
        );
        assert!(line.ends_with(b"\r\n"));
    }
});
