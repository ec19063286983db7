//! The upstream reply reader: arbitrary bytes in chunks never panic, and what it
//! returns does not depend on how the bytes were split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_relayd::protocol::client::ReplyReader;

fn read(input: &[u8], chunk: usize) -> Vec<String> {
    let mut r = ReplyReader::new();
    let mut seen = Vec::new();
    for part in input.chunks(chunk) {
        let mut pos = 0;
        while pos < part.len() {
            let (n, parsed) = r.feed(&part[pos..]);
            assert!(n > 0 || parsed.is_some());
            pos += n;
            if let Some(p) = parsed {
                seen.push(format!("{p:?}"));
            }
        }
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, input)) = data.split_first() else {
        return;
    };
    assert_eq!(
        read(input, input.len().max(1)),
        read(input, usize::from(c) % 31 + 1)
    );
});
