//! The KMS conformance suite against the Shamir backend, unsealed by three
//! distinct custodians.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[path = "kms_conformance/suite.rs"]
mod suite;

use tessera::kms::Kms;
use tessera::kms::shamir::{ShamirKms, split_new_master_key};

struct Shamir;

#[async_trait::async_trait]
impl suite::Factory for Shamir {
    async fn make(&self) -> Box<dyn Kms> {
        let (setup, shares) = split_new_master_key(3, 5).unwrap();
        let kms = ShamirKms::sealed(setup).unwrap();
        for (who, share) in ["alice", "bob", "carol"].iter().zip(&shares) {
            let bytes = serde_json::to_vec(share).unwrap();
            kms.submit_share(who, &bytes).await.unwrap();
        }
        assert!(!kms.unseal_progress().unwrap().sealed);
        Box::new(kms)
    }
    fn production_grade(&self) -> bool {
        true
    }
    fn key_id_prefix(&self) -> &'static str {
        "shamir:"
    }
}

#[tokio::test]
async fn shamir_kms_conforms() {
    suite::run_all(&Shamir).await;
}
