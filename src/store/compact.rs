//! Compaction: the one way anything leaves the record tables.
//!
//! Records, tombstones and seal versions are append-only; a compaction job
//! (`crate::vault::compact`) removes what no call can reach any more, in a
//! commit of the write pipeline like any other write, so the removal and
//! the audit event that names it land together or not at all. Two kinds:
//!
//! - [`Compaction::Purge`] removes a dead record for good: the record, its
//!   tombstone, every seal version and its fingerprint index entry (when it
//!   still points at it). Only a record whose tombstone is at or before the
//!   purge's `dead_by_ms` qualifies: the job's grace period is measured
//!   from the tombstone. **The token id stays reserved**: the embedded
//!   stores keep a one-byte marker ([`PURGED`]) under it, PostgreSQL a row
//!   of `purged_tokens`. A later record can never take a purged token's id,
//!   so a token a merchant still holds (for a refund, say) can never come
//!   to stand for another card.
//! - [`Compaction::DropSealVersions`] drops re-sealed versions older than
//!   a record's newest. The record's own bytes (seal version 0) stay: they
//!   are part of the append-only record, and once re-encryption has moved
//!   every record on, retiring the old data key destroys what they hold.
//!
//! Both are idempotent: purging a purged record, or dropping a version that
//! is gone, does nothing, so two replicas compacting at once do no harm.

use crate::domain::TokenId;
use crate::store::{StoreError, Tombstone};

/// One removal asked of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// Removes a record whose tombstone is at or before `dead_by_ms`.
    /// Refused with [`StoreError::NotFound`] when there is no such record
    /// and [`StoreError::Conflict`] when it is live or died later.
    Purge {
        /// The record.
        id: TokenId,
        /// The latest tombstone time that qualifies (ms since the epoch).
        dead_by_ms: u64,
    },
    /// Drops seal versions of a record, each older than its newest
    /// (otherwise [`StoreError::Conflict`]: the newest is never dropped).
    DropSealVersions {
        /// The record.
        id: TokenId,
        /// The versions to drop, each ≥ 1.
        versions: Vec<u32>,
    },
}

impl Compaction {
    /// The record it concerns.
    pub fn id(&self) -> &TokenId {
        match self {
            Self::Purge { id, .. } | Self::DropSealVersions { id, .. } => id,
        }
    }
}

/// What the embedded stores keep under a purged record's id: one byte no
/// record encoding starts with (theirs start with a layout version ≥ 1).
pub const PURGED: &[u8] = &[0];

/// Whether stored record bytes are a purged record's marker.
pub fn is_purged(bytes: &[u8]) -> bool {
    bytes == PURGED
}

/// What a store holds under a purge's id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Held {
    /// Nothing: never written.
    Nothing,
    /// Purged already.
    Purged,
    /// A record and its tombstone, if any.
    Record(Option<Tombstone>),
}

impl Held {
    /// Whether the record was purged.
    pub(crate) fn is_purged(self) -> bool {
        matches!(self, Self::Purged)
    }
}

/// Whether a purge removes the record now (`true`), has nothing left to do
/// (`false`: purged already), or is refused.
pub(crate) fn purge_now(held: Held, dead_by_ms: u64) -> Result<bool, StoreError> {
    match held {
        Held::Nothing => Err(StoreError::NotFound),
        Held::Purged => Ok(false),
        Held::Record(Some(tombstone)) if tombstone.at_ms <= dead_by_ms => Ok(true),
        Held::Record(_) => Err(StoreError::Conflict),
    }
}

/// Checks that every version to drop is older than the newest, `newest`
/// (0: the record has none).
pub(crate) fn check_drop(versions: &[u32], newest: u32) -> Result<(), StoreError> {
    if versions.iter().all(|v| *v >= 1 && *v < newest) {
        Ok(())
    } else {
        Err(StoreError::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TombstoneReason;

    fn dead_at(at_ms: u64) -> Held {
        Held::Record(Some(Tombstone {
            reason: TombstoneReason::Deleted,
            at_ms,
        }))
    }

    #[test]
    fn only_records_dead_by_the_cutoff_are_purged() {
        assert!(purge_now(dead_at(10), 10).unwrap());
        assert!(matches!(
            purge_now(dead_at(11), 10),
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            purge_now(Held::Record(None), u64::MAX),
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            purge_now(Held::Nothing, 10),
            Err(StoreError::NotFound)
        ));
        assert!(!purge_now(Held::Purged, 10).unwrap());
    }

    #[test]
    fn the_newest_seal_version_is_never_dropped() {
        check_drop(&[1, 2], 3).unwrap();
        for bad in [&[3][..], &[0], &[1, 4]] {
            assert!(matches!(check_drop(bad, 3), Err(StoreError::Conflict)));
        }
        assert!(matches!(check_drop(&[1], 0), Err(StoreError::Conflict)));
    }

    #[test]
    fn no_record_encoding_looks_purged() {
        let bytes = crate::store::record::tests::sample().encode();
        assert!(!is_purged(&bytes));
        assert!(crate::store::SealedRecord::decode(PURGED).is_err());
    }
}
