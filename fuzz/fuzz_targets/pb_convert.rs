//! Wire bytes to domain commands: decoding and conversion never panic, and a
//! refusal never echoes the PAN field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tessera::proto::v1;
use tessera::vault::TokenizeCommand;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = v1::TokenizeRequest::decode(data) {
        let pan = req.pan.clone();
        if let Err(status) = TokenizeCommand::try_from(req) {
            let digits: String = pan.chars().filter(char::is_ascii_digit).collect();
            if digits.len() >= 12 {
                assert!(!status.message().contains(&digits));
            }
        }
    }
});
