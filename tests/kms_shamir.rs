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

impl suite::Factory for Shamir {
    fn make(&self) -> Box<dyn Kms> {
        let (setup, shares) = split_new_master_key(3, 5).unwrap();
        let kms = ShamirKms::sealed(setup).unwrap();
        // submit_share is async but never awaits I/O; a runtime of its own
        // on a scoped thread keeps the factory synchronous.
        std::thread::scope(|s| {
            s.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                for (who, share) in ["alice", "bob", "carol"].iter().zip(&shares) {
                    let bytes = serde_json::to_vec(share).unwrap();
                    runtime.block_on(kms.submit_share(who, &bytes)).unwrap();
                }
            });
        });
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
