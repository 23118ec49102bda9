//! Checkpoints of background jobs (re-encryption, tenant lifecycle): the one
//! overwritable table, progress markers only, never card data.

use async_trait::async_trait;

use crate::store::StoreError;

/// Named checkpoints. Contract checked by `tests/store_conformance/jobs.rs`;
/// every write is durable on return.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Writes (or overwrites) a checkpoint.
    async fn put_checkpoint(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError>;

    /// Reads a checkpoint.
    async fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Names of the checkpoints starting with `prefix`.
    async fn checkpoints(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Removes a checkpoint (the job finished).
    async fn delete_checkpoint(&self, name: &str) -> Result<(), StoreError>;
}
