//! Parsers of what a caller sends besides the request body: the client
//! certificate (SAN identities), the TOTP code and API keys never panic.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tessera::access::api_key;
use tessera::access::totp::{OtpVerifier, TotpSecret};

fuzz_target!(|data: &[u8]| {
    let _ = tessera::tls::certificate_identities(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = api_key::key_id(text);
        if let Some(secret) = TotpSecret::from_base32(text) {
            // A parsed secret round-trips through its base32 form.
            let again = TotpSecret::from_base32(secret.to_base32().expose_secret());
            assert_eq!(again.map(|s| s.code_at(1)), Some(secret.code_at(1)));
        }
        let verifier = OtpVerifier::new(Duration::from_secs(30));
        let secret = TotpSecret::from_base32("JBSWY3DPEHPK3PXP").unwrap();
        let _ = verifier.verify("p", &secret, Some(text), UNIX_EPOCH + Duration::from_secs(59));
    }
});
