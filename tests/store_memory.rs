//! The store conformance suite against the in-memory backend.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[path = "store_conformance/suite.rs"]
mod suite;

use std::sync::Arc;

use tessera::store::Store;
use tessera::store::memory::MemoryStore;

struct Memory;

impl suite::Factory for Memory {
    fn make(&self) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    suite::run_all(&Memory).await;
}
