//! What a token endpoint may answer: the HTTP response reader and the JSON and token
//! readers never panic, and the response does not depend on where the bytes stopped
//! arriving: a prefix is "more" or the same response as the whole.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_relayd::oauth::{device_reply, http, json, token_reply};

fuzz_target!(|data: &[u8]| {
    let whole = http::parse(data, true);
    if let Ok(Some(r)) = http::parse(data, false) {
        // Complete without EOF: EOF changes nothing, nor do further bytes.
        assert_eq!(whole.as_ref().ok(), Some(&Some(r.clone())));
        let mut more = data.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(http::parse(&more, false), Ok(Some(r)));
    }
    for n in [data.len() / 3, data.len() / 2] {
        if let Ok(Some(r)) = http::parse(&data[..n], false) {
            assert_eq!(http::parse(data, false), Ok(Some(r)));
        }
    }
    if let Ok(Some(r)) = whole {
        let _ = token_reply(r.status, &r.body);
        let _ = device_reply(r.status, &r.body);
    }
    if let Ok(o) = json::object(data) {
        let _ = o.str("access_token");
    }
    let _ = token_reply(200, data);
});
