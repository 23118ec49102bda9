//! Audit record and signed-head decoders never panic; what decodes
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::audit::chain::{ChainedEvent, SignedHead};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = ChainedEvent::decode(data) {
        assert_eq!(event.encode(), data);
    }
    if let Ok(head) = SignedHead::decode(data) {
        assert_eq!(head.encode(), data);
    }
});
