//! The KMS conformance suite against a real PKCS#11 HSM: SoftHSM2, installed
//! by the test when missing.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[path = "kms_conformance/suite.rs"]
mod suite;

#[path = "common/softhsm.rs"]
mod softhsm;

use std::sync::atomic::{AtomicU32, Ordering};

use tessera::kms::pkcs11::Pkcs11Kms;
use tessera::kms::{Kms, KmsError};

struct Hsm {
    token: softhsm::Token,
    next: AtomicU32,
}

#[async_trait::async_trait]
impl suite::Factory for Hsm {
    async fn make(&self) -> Box<dyn Kms> {
        // Each call: a new KEK on the token, so two instances have different master keys.
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let config = self.token.config(&format!("kek-{n}"));
        softhsm::retrying(|| Pkcs11Kms::create_kek(&config));
        Box::new(softhsm::retrying(|| Pkcs11Kms::open(&config)))
    }
    fn production_grade(&self) -> bool {
        true
    }
    fn key_id_prefix(&self) -> &'static str {
        "pkcs11:"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_kms_conforms_on_softhsm2() {
    let hsm = Hsm {
        token: softhsm::Token::new(),
        next: AtomicU32::new(0),
    };
    suite::run_all(&hsm).await;

    // The KEK is a token object: a second process (here: a second open)
    // finds it by label and unwraps what the first wrapped.
    let config = hsm.token.config("kek-0");
    let first = softhsm::retrying(|| Pkcs11Kms::open(&config));
    let ctx = tessera::kms::KeyContext {
        tenant: tessera::domain::TenantId::new("t").unwrap(),
        purpose: tessera::kms::KeyPurpose::Data,
        version: 1,
    };
    let (key, wrapped) = first.generate_data_key(&ctx).await.unwrap();
    let second = softhsm::retrying(|| Pkcs11Kms::open(&config));
    assert_eq!(
        second
            .unwrap_data_key(&wrapped, &ctx)
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );

    // Refusals: a missing KEK, a KEK created twice, a wrong PIN.
    assert!(matches!(
        Pkcs11Kms::open(&hsm.token.config("absent")),
        Err(KmsError::Refused(_))
    ));
    assert!(matches!(
        Pkcs11Kms::create_kek(&config),
        Err(KmsError::Refused(_))
    ));
}

#[test]
fn wrong_pin_is_refused() {
    let token = softhsm::Token::new();
    let mut config = token.config("kek");
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "9999").unwrap();
    config.pin_file = bad.path().to_owned();
    assert!(matches!(
        Pkcs11Kms::create_kek(&config),
        Err(KmsError::Refused(_))
    ));
}
