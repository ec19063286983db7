//! rewrite_from on any header section: never panics, the result is still a header
//! section, and rewriting it again changes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_relayd::rewrite::{header_len, rewrite_from};

const NEW: &str = "relay@example.net";

fuzz_target!(|data: &[u8]| {
    let Some(len) = header_len(data, true) else {
        return;
    };
    let Some(out) = rewrite_from(&data[..len], NEW) else {
        return;
    };
    assert_eq!(
        header_len(&out, true),
        Some(out.len()),
        "not a header section: {out:?}"
    );
    assert_eq!(
        rewrite_from(&out, NEW),
        None,
        "a second rewrite changed {out:?}"
    );
});
