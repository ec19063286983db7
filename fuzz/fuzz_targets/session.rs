//! The server session fed arbitrary bytes cut into chunks: it never panics, its
//! buffers stay within their bounds, and its replies and stored messages are the same
//! for every split of the input (the first byte picks the chunk size, and its top bit
//! passthrough mode, with a scripted smarthost whose replies vary, odd ones included).
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use smtp_relayd::policy::Policy;
use smtp_relayd::protocol::client::Reply;
use smtp_relayd::protocol::server::{
    Ask, BODY_CAP, OUT_CAP, Peer, ServerSession, Settings, Step, StoreError,
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
    let mut out = s.output().to_vec();
    s.clear_output();
    let (mut stored, mut body) = (Vec::new(), Vec::new());
    let mut stores = 0u32;
    let mut asked = 0u32;
    'outer: for part in input.chunks(chunk) {
        let mut pos = 0;
        loop {
            let (n, step) = s.feed(&part[pos..]);
            pos += n;
            assert!(pos <= part.len());
            assert!(s.output().len() <= OUT_CAP);
            assert!(s.body().len() <= BODY_CAP);
            match step {
                Step::NeedInput | Step::Flush => {}
                Step::OpenMessage => {
                    body.clear();
                    // Every third open fails, as a full disk would.
                    stores += 1;
                    s.spool_opened(if stores % 3 == 0 {
                        Err(StoreError::NoSpace)
                    } else {
                        Ok(())
                    });
                    s.add_missing("ID", "Thu, 3 Dec 2026 14:00:00 +0000");
                }
                // Room for messages up to 150 octets.
                Step::CheckSpace(size) => s.space_checked(size <= 150),
                Step::WriteBody => {
                    body.extend_from_slice(s.body());
                    s.clear_body();
                }
                Step::StoreMessage => {
                    body.extend_from_slice(s.body());
                    stored.push(std::mem::take(&mut body));
                    s.stored(Ok("ID"));
                }
                Step::DiscardMessage => body.clear(),
                Step::StartTls => {
                    if s.start_tls(pos == part.len()) {
                        s.tls_established();
                    }
                }
                Step::Authenticate => {
                    let ok = s.credentials() == Some(("user", &b"pass"[..]));
                    s.authenticated(ok.then_some(None));
                }
                Step::Close => {
                    out.extend_from_slice(s.output());
                    break 'outer;
                }
                Step::Upstream(ask) => {
                    asked += 1;
                    match ask {
                        Ask::Mail => s.upstream_replied(&upstream(asked, 250)),
                        Ask::Rcpt { first } => {
                            let n = s.envelope().recipients.len() - first;
                            let replies: Vec<Reply> =
                                (0..n as u32).map(|i| upstream(asked + i, 250)).collect();
                            s.upstream_rcpt(&replies[..replies.len().min(1 + asked as usize % 3)]);
                        }
                        Ask::Data => {
                            body.clear();
                            s.upstream_replied(&upstream(asked, 354));
                            s.add_missing("ID", "Thu, 3 Dec 2026 14:00:00 +0000");
                        }
                        Ask::End => {
                            body.extend_from_slice(s.body());
                            s.clear_body();
                            stored.push(std::mem::take(&mut body));
                            s.upstream_replied(&upstream(asked, 250));
                        }
                    }
                }
            }
            out.extend_from_slice(s.output());
            s.clear_output();
            if step == Step::NeedInput {
                break;
            }
        }
    }
    (out, stored)
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
