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

impl suite::Factory for Memory {
    fn make(&self) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }
}

conformance!(crate::Memory);
