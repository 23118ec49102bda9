//! The KMS conformance suite against the dev backend.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[path = "kms_conformance/suite.rs"]
mod suite;

use std::sync::Mutex;

use tessera::config::Profile;
use tessera::kms::Kms;
use tessera::kms::dev::DevKms;

struct Dev {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

#[async_trait::async_trait]
impl suite::Factory for Dev {
    async fn make(&self) -> Box<dyn Kms> {
        let dir = tempfile::tempdir().unwrap();
        let kms = DevKms::open_or_create(&dir.path().join("dev-master.key"), Profile::Dev).unwrap();
        self.dirs.lock().unwrap().push(dir);
        Box::new(kms)
    }
    fn production_grade(&self) -> bool {
        false
    }
    fn key_id_prefix(&self) -> &'static str {
        "dev:"
    }
}

#[tokio::test]
async fn dev_kms_conforms() {
    suite::run_all(&Dev {
        dirs: Mutex::new(Vec::new()),
    })
    .await;
}
