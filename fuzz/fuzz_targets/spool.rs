//! The spool file reader: any bytes as a spool file give an envelope and records or
//! a `Corrupt` reason, never a panic; what parses emits text that parses back to the
//! same (the envelope once the commit fills in its size, and every record once its
//! text is made one printable line); an envelope not yet committed never parses.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_relayd::spool::format::{SIZE_PLACEHOLDER, SIZE_WIDTH};
use smtp_relayd::spool::{Corrupt, Envelope, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = Envelope::parse(data) {
        assert!(head.len <= data.len());
        let mut text = String::new();
        let at = head.envelope.emit(&mut text);
        assert!(text[at..].starts_with(&format!("{SIZE_PLACEHOLDER}\n\n")));
        assert_eq!(Envelope::parse(text.as_bytes()), Err(Corrupt::Uncommitted));
        text.replace_range(at..at + SIZE_WIDTH, &format!("{:0w$}", head.size, w = SIZE_WIDTH));
        let again = Envelope::parse(text.as_bytes()).expect("a committed envelope parses");
        assert_eq!(again.envelope, head.envelope);
        assert_eq!((again.size, again.len), (head.size, text.len()));
    }
    // The records after the content.
    let records = String::from_utf8_lossy(data);
    for rec in Record::parse_all(&records) {
        let line = rec.emit();
        assert!(line.ends_with("\t\n") && !line[..line.len() - 2].contains(['\n', '\t']));
        let back = Record::parse(&line[..line.len() - 2]).expect("an emitted record parses");
        assert_eq!(back.emit(), line);
    }
});
