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
use crate::store::{Compaction, SealedRecord, StoreError, Tombstone, WrappedKeyRecord};

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
    /// New wrapped keys, each for a context the key table does not hold
    /// yet (`AlreadyExists` otherwise). The audit key's root is stored
    /// this way, in the commit that signs the log's first head with it:
    /// stored alone, a crash before the signed commit left a key that
    /// says "this log has a signed head" over a log that never got one.
    pub keys: Vec<WrappedKeyRecord>,
    /// Removals of the compaction job ([`crate::store::compact`]), after
    /// the unit's records and tombstones.
    pub compactions: Vec<Compaction>,
}

impl WriteUnit {
    /// Whether the unit writes nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.tombstones.is_empty()
            && self.keys.is_empty()
            && self.compactions.is_empty()
    }
}

/// Audit events appended by a batch: already chained, at consecutive
/// positions from `from`, which must be the log's next position.
#[derive(Debug, Default, Clone)]
pub struct AuditAppend {
    /// Position of the first event.
    pub from: u64,
    /// The encoded chained events, in order.
    pub events: Vec<Vec<u8>>,
    /// The new signed chain head, replacing the old one in the same commit.
    pub head: Option<Vec<u8>>,
}

/// Most events of the log's tail a store reads under its commit lock for
/// one commit. A writer whose known end is further behind (it was idle
/// while other replicas wrote) walks forward outside the lock first
/// ([`CommitError::TailTooLong`]), so no commit holds the lock for long.
pub const MAX_TAIL_EVENTS: usize = 4096;

/// Chains a batch's audit events at the log's end as the store finds it
/// under its commit lock.
///
/// Replicas on one database each have a committer. Chained outside the
/// lock, a batch named a position another replica could take first; the
/// loser chained again, and under load could keep losing. Chained under
/// the lock, every commit lands: the store reads the log's tail and the
/// signed head, and this step checks them and chains after the tail.
pub trait ChainStep: Send + Sync {
    /// The first position the step must see: the last event its writer
    /// knows (0 when it knows none). The store reads the events from there
    /// on, at most [`MAX_TAIL_EVENTS`].
    fn tail_from(&self) -> u64;

    /// The batch's events chained after `tail`: every stored event from
    /// [`Self::tail_from`] on, in order (the last one is the log's last),
    /// with `head`, the stored signed head. Errors refuse the whole batch.
    fn after(
        &self,
        tail: &[(u64, Vec<u8>)],
        head: Option<&[u8]>,
    ) -> Result<AuditAppend, CommitError>;
}

/// How a batch's audit events find their place in the log.
#[derive(Default)]
pub enum AuditWrite {
    /// No events.
    #[default]
    Nothing,
    /// Chained already, at a fixed position that must be the log's next
    /// one (otherwise the batch fails with `AlreadyExists`). Recovery
    /// appends this way, after a last event that may not decode.
    At(AuditAppend),
    /// Chained by the store under its commit lock after the log's tail;
    /// the write pipeline's events.
    Chained(Arc<dyn ChainStep>),
}

impl std::fmt::Debug for AuditWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nothing => f.write_str("Nothing"),
            Self::At(append) => f.debug_tuple("At").field(append).finish(),
            Self::Chained(_) => f.write_str("Chained"),
        }
    }
}

impl From<AuditAppend> for AuditWrite {
    fn from(append: AuditAppend) -> Self {
        Self::At(append)
    }
}

impl AuditWrite {
    /// Where the store reads the log's tail from, under its commit lock,
    /// before [`Self::place`]; `None` when the batch appends nothing.
    pub fn tail_from(&self) -> Option<u64> {
        match self {
            Self::Nothing => None,
            Self::At(append) if append.events.is_empty() => None,
            // The event before it tells whether it is the next position.
            Self::At(append) => Some(append.from.saturating_sub(1)),
            Self::Chained(step) => Some(step.tail_from()),
        }
    }

    /// The events to write, given `tail` (the stored events from
    /// [`Self::tail_from`] on, in order, at most [`MAX_TAIL_EVENTS`]) and
    /// the stored signed `head`, both read under the commit lock.
    pub fn place(
        &self,
        tail: &[(u64, Vec<u8>)],
        head: Option<&[u8]>,
    ) -> Result<std::borrow::Cow<'_, AuditAppend>, CommitError> {
        let end = tail.last().map_or_else(
            || self.tail_from().unwrap_or(0),
            |(seq, _)| seq.saturating_add(1),
        );
        match self {
            Self::Nothing => Ok(std::borrow::Cow::Owned(AuditAppend {
                from: end,
                ..AuditAppend::default()
            })),
            Self::At(append) if append.events.is_empty() => Ok(std::borrow::Cow::Borrowed(append)),
            // An empty tail from a position above 0 is a log shorter than
            // that: not the next position either.
            Self::At(append) if append.from == end && (append.from == 0 || !tail.is_empty()) => {
                Ok(std::borrow::Cow::Borrowed(append))
            }
            Self::At(_) => Err(CommitError::Batch(StoreError::AlreadyExists)),
            Self::Chained(step) => {
                let append = step.after(tail, head)?;
                if append.from != end {
                    return Err(CommitError::Batch(StoreError::Damaged(
                        "audit events chained away from the log's end",
                    )));
                }
                Ok(std::borrow::Cow::Owned(append))
            }
        }
    }
}

/// Everything one commit writes.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// The callers' record writes, in queue order.
    pub units: Vec<WriteUnit>,
    /// The batch's audit events.
    pub audit: AuditWrite,
}

impl WriteBatch {
    /// A batch of one unit and no events.
    pub fn of_unit(unit: WriteUnit) -> Self {
        Self {
            units: vec![unit],
            audit: AuditWrite::Nothing,
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
    /// The whole batch failed: the backend (retryable or not), or events
    /// [`AuditWrite::At`] a position that is not the log's next
    /// (`AlreadyExists`).
    #[error(transparent)]
    Batch(#[from] StoreError),
    /// The chain step found the log's tail not continuing the end its
    /// writer last saw (shorter, another event there, or events that do
    /// not link), or not matching the signed head: truncated or rewritten
    /// since (or the database lost commits it had acknowledged). Nothing
    /// was written; the writer checks the log again.
    #[error("the audit log does not continue the end its writer last saw")]
    AuditRewound,
    /// The tail after the writer's known end is longer than
    /// [`MAX_TAIL_EVENTS`]: nothing was written; the writer checks its way
    /// forward outside the commit lock and commits again.
    #[error("the audit log's tail is too long to check under the commit lock")]
    TailTooLong,
}

impl CommitError {
    /// The store error, whichever unit it concerned.
    pub fn into_store(self) -> StoreError {
        match self {
            Self::Refused { error, .. } | Self::Batch(error) => error,
            Self::AuditRewound => StoreError::Damaged("the audit log was rewound"),
            Self::TailTooLong => {
                StoreError::Unavailable("the audit log's tail was too long to check".into())
            }
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
