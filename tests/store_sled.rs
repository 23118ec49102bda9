//! The store conformance suite against sled, plus sled-specific durability:
//! reopening sees every acknowledged write.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[macro_use]
#[path = "store_conformance/mod.rs"]
mod suite;

use std::sync::{Arc, Mutex};

use tessera::store::sled::SledStore;
use tessera::store::{RecordStore, Store, Tombstone, TombstoneReason};

/// Fresh stores in temporary directories, removed when the factory drops.
#[derive(Default)]
struct Sled {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

#[async_trait::async_trait]
impl suite::Factory for Sled {
    async fn make(&self) -> Arc<dyn Store> {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        self.dirs.lock().unwrap().push(dir);
        Arc::new(store)
    }
}

conformance!(crate::Sled::default());

#[tokio::test]
async fn reopen_sees_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rec = suite::record(1, "a", Some(3));
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(rec.clone()).await.unwrap();
        store
            .append_tombstone(
                &rec.token_id,
                Tombstone {
                    reason: TombstoneReason::Deleted,
                    at_ms: 5,
                },
            )
            .await
            .unwrap();
    }
    // sled's background flusher thread lets go of the directory lock a
    // moment after the last handle drops; within one process, wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let store = loop {
        match SledStore::open(dir.path()) {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("sled did not reopen: {e}"),
        }
    };
    let got = store.get(&rec.token_id).await.unwrap().unwrap();
    assert_eq!(got.record, rec);
    assert_eq!(got.tombstone.unwrap().reason, TombstoneReason::Deleted);
}
