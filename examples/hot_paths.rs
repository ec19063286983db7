//! The hot paths, run N times each, for instruction counts under callgrind
//! (`benches/micro.sh`). Usage: hot_paths CASE N
use std::hint::black_box;

use smtp_relayd::protocol::command;
use smtp_relayd::protocol::data::DataDecoder;
use smtp_relayd::protocol::server::{Peer, ServerSession, Settings, Step};
use smtp_relayd::protocol::stuff::DotStuffer;

/// A 1 KiB message body as a device sends it, already dot-stuffed, with a few dot lines.
fn wire_1k() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(
        b"From: cam1@example.net\r\nTo: ops@example.com\r\nSubject: motion\r\n\r\n",
    );
    while v.len() < 1000 {
        v.extend_from_slice(
            b"..line starting with a dot, then plain text of a usual length here\r\n",
        );
    }
    v.extend_from_slice(b".\r\n");
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (case, n): (&str, usize) = (&args[1], args[2].parse().unwrap());
    let wire = wire_1k();
    match case {
        "parse" => {
            let lines: [&[u8]; 3] = [
                b"MAIL FROM:<cam1@example.net> SIZE=1024 BODY=8BITMIME",
                b"RCPT TO:<ops@example.com>",
                b"EHLO camera1.lan",
            ];
            for i in 0..n {
                let _ = black_box(command::parse(black_box(lines[i % 3]), false));
            }
        }
        "unstuff" => {
            let mut out = Vec::with_capacity(64 * 1024);
            for _ in 0..n {
                let mut d = DataDecoder::new(u64::MAX);
                out.clear();
                black_box(d.decode(black_box(&wire), &mut out));
            }
        }
        "stuff" => {
            let mut out = Vec::with_capacity(4096);
            for _ in 0..n {
                let mut s = DotStuffer::new();
                out.clear();
                s.encode(black_box(&wire[..wire.len() - 3]), &mut out);
                s.finish(&mut out);
                black_box(&out);
            }
        }
        "session" => {
            // A whole pipelined transaction through the server session (line reader,
            // parser, state machine, DATA decoder), as one worker read delivers it.
            let mut input =
                b"EHLO cam1\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                    .to_vec();
            let head = input.len();
            input.extend_from_slice(&wire);
            let mut s = ServerSession::new(Settings {
                hostname: heapless::String::try_from("relay.test").unwrap(),
                max_message_size: 1 << 20,
                reject_bare_newline: false,
                max_hops: 30,
                tls_available: false,
                auth_available: false,
                require_auth: false,
                policy: std::sync::Arc::new(smtp_relayd::policy::Policy::open("relay.test")),
                passthrough: false,
            });
            for _ in 0..n {
                s.start(Peer {
                    ip: [127, 0, 0, 1].into(),
                    relay_allowed: true,
                    tls: false,
                    auth_plaintext: false,
                });
                let mut pos = 0;
                while pos < input.len() {
                    let end = if pos < head { head } else { input.len() };
                    let (used, step) = s.feed(&input[pos..end]);
                    pos += used;
                    match step {
                        Step::OpenMessage => s.spool_opened(Ok(())),
                        Step::StoreMessage => s.stored(Ok("ID")),
                        Step::WriteBody => s.clear_body(),
                        _ => {}
                    }
                    s.clear_output();
                }
                black_box(&s);
            }
        }
        _ => panic!("cases: parse unstuff stuff session"),
    }
}
