use proptest::prelude::*;

use super::*;

fn dek(byte: u8) -> DataKey {
    DataKey::from_bytes([byte; KEY_LEN])
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

const PAN: &[u8] = b"4000056655665556";

#[test]
fn round_trip() {
    let t = tenant("default");
    let id = TokenId::from_bytes([3; 32]);
    let binding = Binding {
        tenant: &t,
        token_id: &id,
        dek_version: 2,
    };
    let sealed = seal(&dek(1), binding, PAN).unwrap();
    assert_eq!(sealed.len(), HEADER_LEN + PAN.len() + TAG_LEN);
    assert_eq!(dek_version(&sealed).unwrap(), 2);
    assert_eq!(open(&dek(1), binding, &sealed).unwrap().as_slice(), PAN);
    // The PAN never appears in the sealed bytes.
    assert!(!sealed.windows(PAN.len()).any(|w| w == PAN));
}

#[test]
fn nonces_differ_between_seals() {
    let t = tenant("default");
    let id = TokenId::from_bytes([3; 32]);
    let binding = Binding {
        tenant: &t,
        token_id: &id,
        dek_version: 1,
    };
    let a = seal(&dek(1), binding, PAN).unwrap();
    let b = seal(&dek(1), binding, PAN).unwrap();
    assert_ne!(a, b);
}

#[test]
fn every_flipped_bit_fails_with_the_one_opaque_error() {
    let t = tenant("default");
    let id = TokenId::from_bytes([3; 32]);
    let binding = Binding {
        tenant: &t,
        token_id: &id,
        dek_version: 1,
    };
    let sealed = seal(&dek(1), binding, PAN).unwrap();
    for i in 0..sealed.len() {
        for bit in 0..8 {
            let mut bad = sealed.clone();
            bad[i] ^= 1 << bit;
            assert!(
                matches!(open(&dek(1), binding, &bad), Err(EnvelopeError::Unreadable)),
                "byte {i} bit {bit}"
            );
        }
    }
    for len in 0..sealed.len() {
        assert!(matches!(
            open(&dek(1), binding, &sealed[..len]),
            Err(EnvelopeError::Unreadable)
        ));
    }
}

#[test]
fn moved_record_fails_to_open() {
    let t = tenant("default");
    let other_tenant = tenant("other");
    let id = TokenId::from_bytes([3; 32]);
    let other_id = TokenId::from_bytes([4; 32]);
    let binding = Binding {
        tenant: &t,
        token_id: &id,
        dek_version: 1,
    };
    let sealed = seal(&dek(1), binding, PAN).unwrap();
    let moved_id = Binding {
        token_id: &other_id,
        ..binding
    };
    let moved_tenant = Binding {
        tenant: &other_tenant,
        ..binding
    };
    let other_version = Binding {
        dek_version: 2,
        ..binding
    };
    for wrong in [moved_id, moved_tenant, other_version] {
        assert!(matches!(
            open(&dek(1), wrong, &sealed),
            Err(EnvelopeError::Unreadable)
        ));
    }
    assert!(matches!(
        open(&dek(2), binding, &sealed),
        Err(EnvelopeError::Unreadable)
    ));
}

#[test]
fn header_claiming_another_dek_version_fails() {
    let t = tenant("default");
    let id = TokenId::from_bytes([3; 32]);
    let binding = Binding {
        tenant: &t,
        token_id: &id,
        dek_version: 1,
    };
    let mut sealed = seal(&dek(1), binding, PAN).unwrap();
    sealed[6] = 2; // low byte of the DEK version
    let claimed = Binding {
        dek_version: 2,
        ..binding
    };
    assert!(matches!(
        open(&dek(1), claimed, &sealed),
        Err(EnvelopeError::Unreadable)
    ));
}

/// A record sealed by format version 1, frozen in `tests/data/envelope_v1.json`.
/// Later versions of Tessera must keep opening it.
#[derive(serde::Deserialize, serde::Serialize)]
struct Golden {
    dek_hex: String,
    tenant: String,
    token_id_hex: String,
    dek_version: u32,
    plaintext: String,
    sealed_hex: String,
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/envelope_v1.json");

#[test]
fn frozen_v1_envelope_still_opens() {
    let golden: Golden = serde_json::from_slice(&std::fs::read(GOLDEN).unwrap()).unwrap();
    let key = DataKey::from_slice(&hex::decode(&golden.dek_hex).unwrap()).unwrap();
    let t = tenant(&golden.tenant);
    let id = TokenId::from_slice(&hex::decode(&golden.token_id_hex).unwrap()).unwrap();
    let binding = Binding {
        tenant: &t,
        token_id: &id,
        dek_version: golden.dek_version,
    };
    let sealed = hex::decode(&golden.sealed_hex).unwrap();
    let opened = open(&key, binding, &sealed).unwrap();
    assert_eq!(opened.as_slice(), golden.plaintext.as_bytes());
    // Sealing again with the frozen nonce reproduces the frozen bytes exactly:
    // the record key derivation, AAD and header layout have not drifted.
    let (header, _) = Header::parse(&sealed).unwrap();
    let again = seal_with_nonce(&key, binding, golden.plaintext.as_bytes(), header.nonce).unwrap();
    assert_eq!(again, sealed);
}

proptest! {
    #[test]
    fn round_trip_any_plaintext(
        plaintext in proptest::collection::vec(any::<u8>(), 0..64),
        id in any::<[u8; 32]>(),
        version in any::<u32>(),
    ) {
        let t = tenant("prop");
        let id = TokenId::from_bytes(id);
        let binding = Binding { tenant: &t, token_id: &id, dek_version: version };
        let sealed = seal(&dek(9), binding, &plaintext).unwrap();
        let opened = open(&dek(9), binding, &sealed).unwrap();
        prop_assert_eq!(opened.as_slice(), plaintext.as_slice());
    }
}
