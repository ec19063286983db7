//! The hot paths, run N times each, for instruction counts under callgrind
//! (`benches/micro.sh`). Usage: hot_paths CASE N
use std::hint::black_box;

use smtp_relayd::protocol::client::ReplyReader;
use smtp_relayd::protocol::command;
use smtp_relayd::protocol::data::DataDecoder;
use smtp_relayd::protocol::driver::{Driver, Gone, Input, Shell};
use smtp_relayd::protocol::policy::{Policy, Senders};
use smtp_relayd::protocol::server::{Peer, Refusal, ServerSession, Settings, Stamp, StoreError};
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

/// The session's shell for the bench: the driver is fed the two reads directly, and
/// the spool keeps nothing.
struct Bench;

impl Shell for Bench {
    type Message = ();
    fn read(&mut self, _: &mut [u8], _: &ServerSession) -> Input {
        Input::Closed
    }
    fn write(&mut self, replies: &[u8]) -> Result<(), Gone> {
        black_box(replies);
        Ok(())
    }
    fn open(&mut self, _: &ServerSession) -> Result<(), StoreError> {
        Ok(())
    }
    fn stamp<'m>(&self, _: &'m ()) -> Stamp<'m> {
        Stamp {
            id: "ID",
            date: "Thu, 3 Dec 2026 14:00:00 +0000",
        }
    }
    fn write_body(&mut self, _: &mut (), body: &[u8]) -> Result<(), StoreError> {
        black_box(body);
        Ok(())
    }
    fn commit(&mut self, _: &mut (), _: &ServerSession) -> Result<(), StoreError> {
        Ok(())
    }
    fn discard(&mut self, _: ()) {}
    fn check_space(&mut self, _: u64) -> bool {
        true
    }
    fn check_rate(&mut self, _: std::net::IpAddr) -> bool {
        true
    }
    fn authenticate(&mut self, _: &ServerSession) -> Option<Option<Senders>> {
        None
    }
    fn tls_available(&self) -> bool {
        false
    }
    fn handshake(&mut self) -> bool {
        false
    }
    fn refused(&mut self, _: &Refusal, _: &ServerSession, _: Option<&str>) {}
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
            // parser, state machine, DATA decoder) and the one driver every shell
            // uses, fed a worker's two reads.
            let head =
                b"EHLO cam1\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n";
            let mut s = ServerSession::new(Settings {
                hostname: heapless::String::try_from("relay.test").unwrap(),
                max_message_size: 1 << 20,
                reject_bare_newline: false,
                max_hops: 30,
                tls_available: false,
                auth_available: false,
                require_auth: false,
                policy: std::sync::Arc::new(Policy::open("relay.test")),
                passthrough: false,
                add_missing_headers: true,
            });
            for _ in 0..n {
                s.start(Peer {
                    ip: [127, 0, 0, 1].into(),
                    relay_allowed: true,
                    tls: false,
                    auth_plaintext: false,
                });
                let mut shell = Bench;
                let mut d = Driver::new();
                for read in [&head[..], &wire] {
                    black_box(d.feed(&mut s, &mut shell, black_box(read)));
                    let _ = d.flush(&mut s, &mut shell);
                }
                black_box(&s);
            }
        }
        "reply" => {
            // The relay's line reader for the smarthost's replies: a provider's
            // multi-line EHLO reply and the reply to a message's end of data.
            let input: &[u8] = b"250-smtp.example.com at your service, [192.0.2.7]\r\n\
                250-SIZE 35882577\r\n250-8BITMIME\r\n250-AUTH LOGIN PLAIN XOAUTH2\r\n\
                250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n\
                250 SMTPUTF8\r\n250 2.0.0 OK  1764547200 a640c23a62f3a-ab7c1d2e3f4g.123 - gsmtp\r\n";
            for _ in 0..n {
                let mut r = ReplyReader::new();
                let mut pos = 0;
                while pos < input.len() {
                    let (used, got) = r.feed(black_box(&input[pos..]));
                    pos += used;
                    black_box(got);
                }
            }
        }
        _ => panic!("cases: parse unstuff stuff session reply"),
    }
}
