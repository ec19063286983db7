//! The command parser: any line, with or without SMTPUTF8 in effect.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_relayd::protocol::command;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, line)) = data.split_first() else {
        return;
    };
    let _ = command::parse(line, flag & 1 == 1);
});
