//! Opening arbitrary bytes never panics and never succeeds without the key:
//! the only accepted inputs are ones this target sealed itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::domain::{TenantId, TokenId};
use tessera::envelope::{self, Binding};
use tessera::secret::DataKey;

fuzz_target!(|data: &[u8]| {
    let key = DataKey::from_bytes([0x42; 32]);
    let Ok(tenant) = TenantId::new("fuzz") else {
        return;
    };
    let id = TokenId::from_bytes([7; 32]);
    let version = envelope::dek_version(data).unwrap_or(1);
    let binding = Binding {
        tenant: &tenant,
        token_id: &id,
        dek_version: version,
    };
    assert!(envelope::open(&key, binding, data).is_err());
    // Sealing the input and opening it again is the identity.
    let sealed = envelope::seal(&key, binding, data).expect("seal");
    assert_eq!(
        envelope::open(&key, binding, &sealed)
            .expect("open")
            .as_slice(),
        data
    );
});
