//! sendmail's message preparation (header parsing, -t recipients, -i): any input
//! gives a message or an error, never a panic; a prepared message has CRLF lines.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_relayd::sendmail::message::{Context, prepare};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let ctx = Context {
        hostname: "box.lan",
        sender: "root@box.lan",
        full_name: (flags & 4 != 0).then_some("Cron Daemon"),
        date: "Tue, 1 Dec 2026 00:00:00 +0000",
        message_id: "<ID@box.lan>",
        extract_recipients: flags & 1 != 0,
        ignore_dots: flags & 2 != 0,
        add_missing: flags & 8 == 0,
    };
    if let Ok(p) = prepare(input, &ctx) {
        let c = &p.content;
        for (i, &b) in c.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(c.get(i + 1), Some(&b'\n'), "bare CR"),
                b'\n' => assert!(i > 0 && c[i - 1] == b'\r', "bare LF"),
                _ => {}
            }
        }
    }
});
