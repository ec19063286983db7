//! The configuration parser: any text gives a config or an error, never a panic; a
//! config that parses prints (`--check`) settings that parse to the same config.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use smtp_relayd::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/relay.conf");
    if let Ok(c) = Config::parse(path, text) {
        let printed = c.effective();
        let again = Config::parse(path, &printed)
            .unwrap_or_else(|e| panic!("--check output does not parse: {e}\n{printed}"));
        assert_eq!(again.effective(), printed);
    }
});
