//! The store conformance suite against the in-memory backend.

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

use std::sync::Arc;

use tessera::store::Store;
use tessera::store::memory::MemoryStore;

struct Memory;

#[async_trait::async_trait]
impl suite::Factory for Memory {
    async fn make(&self) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }
}

conformance!(crate::Memory);
