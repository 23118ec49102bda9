//! Token parsing never panics; accepted tokens round-trip through digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::domain::Token;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = Token::parse(text) {
            assert_eq!(
                Token::from_digits(&token.digits()).ok().as_ref(),
                Some(&token)
            );
        }
    }
});
