//! The seam of the write pipeline: one atomic, durable commit of the writes
//! of many concurrent callers.
//!
//! The committer (`crate::pipeline`) gathers what callers queued while the
//! previous commit ran into one [`WriteBatch`] and hands it to
//! [`Engine::commit`]: on sled one transaction and one flush, on PostgreSQL
//! one transaction and one COMMIT. The batch is all or nothing. When one
//! caller's [`WriteUnit`] breaks a rule (a token id or a live fingerprint
//! already taken, a record already tombstoned), the commit writes nothing
//! and names that unit in [`CommitError::Refused`]; the committer answers
//! that caller and commits the rest again. Callers never see a write of
//! another caller fail theirs.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::TokenId;
use crate::store::{SealedRecord, StoreError, Tombstone};

/// One caller's record writes: applied together with the rest of its batch,
/// or not at all.
#[derive(Debug, Default, Clone)]
pub struct WriteUnit {
    /// New records. Each needs an unused token id and, when it has a
    /// fingerprint, no live record of its tenant holding that fingerprint
    /// (earlier units of the batch included).
    pub records: Vec<SealedRecord>,
    /// Tombstones, each for an existing record that has none yet.
    pub tombstones: Vec<(TokenId, Tombstone)>,
}

impl WriteUnit {
    /// Whether the unit writes nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.tombstones.is_empty()
    }
}

/// Audit events appended by a batch: already chained, at consecutive
/// positions from `from`, which must be the log's next position.
#[derive(Debug, Default)]
pub struct AuditAppend {
    /// Position of the first event.
    pub from: u64,
    /// The encoded chained events, in order.
    pub events: Vec<Vec<u8>>,
    /// The new signed chain head, replacing the old one in the same commit.
    pub head: Option<Vec<u8>>,
}

/// Everything one commit writes.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// The callers' record writes, in queue order.
    pub units: Vec<WriteUnit>,
    /// The batch's audit events.
    pub audit: AuditAppend,
}

impl WriteBatch {
    /// A batch of one unit and no events.
    pub fn of_unit(unit: WriteUnit) -> Self {
        Self {
            units: vec![unit],
            audit: AuditAppend::default(),
        }
    }
}

/// A commit wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Unit `unit` broke a rule of the store (`AlreadyExists`,
    /// `FingerprintTaken`, `NotFound`); the other units may commit without it.
    #[error("write {unit} of the batch was refused: {error}")]
    Refused {
        /// Its index in [`WriteBatch::units`].
        unit: usize,
        /// Which rule.
        error: StoreError,
    },
    /// The whole batch failed: the backend (retryable or not), or the audit
    /// events were not at the log's next position (`AlreadyExists`: another
    /// writer moved the end).
    #[error(transparent)]
    Batch(#[from] StoreError),
}

impl CommitError {
    /// The store error, whichever unit it concerned.
    pub fn into_store(self) -> StoreError {
        match self {
            Self::Refused { error, .. } | Self::Batch(error) => error,
        }
    }
}

/// Commits, durability and liveness.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Writes `batch` atomically and durably: on `Ok` every write in it
    /// survives a crash; on `Err` none is visible, now or after a restart,
    /// with one exception: when the disk fails while making the batch
    /// durable (a failed fsync), the batch may or may not be on disk. The
    /// backend then refuses every later call until the process restarts,
    /// as PostgreSQL does after a failed fsync, so nothing is served from
    /// writes whose fate is unknown.
    async fn commit(&self, batch: Arc<WriteBatch>) -> Result<(), CommitError>;

    /// Returns once everything written to the store so far, by any writer,
    /// is durable. A reader that found another writer's record may be
    /// ahead of that writer's commit; it calls this before acting on the
    /// record as acknowledged (deterministic reuse returns such a token).
    async fn sync(&self) -> Result<(), StoreError>;

    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
