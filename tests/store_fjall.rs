//! The store conformance suite against fjall, plus its durability across a
//! reopen.

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

use tessera::store::fjall::FjallStore;
use tessera::store::{RecordStore, Store, Tombstone, TombstoneReason};

const CACHE: u64 = 16 * 1024 * 1024;

/// Fresh stores in temporary directories, removed when the factory drops.
#[derive(Default)]
struct Fjall {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

#[async_trait::async_trait]
impl suite::Factory for Fjall {
    async fn make(&self) -> Arc<dyn Store> {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), CACHE).unwrap();
        self.dirs.lock().unwrap().push(dir);
        Arc::new(store)
    }
}

conformance!(crate::Fjall::default());

#[tokio::test]
async fn reopen_sees_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rec = suite::record(1, "a", Some(3));
    {
        let store = FjallStore::open(dir.path(), CACHE).unwrap();
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
    let store = FjallStore::open(dir.path(), CACHE).unwrap();
    let got = store.get(&rec.token_id).await.unwrap().unwrap();
    assert_eq!(got.record, rec);
    assert_eq!(got.tombstone.unwrap().reason, TombstoneReason::Deleted);
}
