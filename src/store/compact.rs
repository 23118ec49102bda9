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
//! Neither repeats: purging a purged record, or dropping a version that is
//! gone, is refused ([`StoreError::Conflict`]) like any change under a
//! stale read, and the job reads its page again. So each removal is counted
//! once in the audit log, also when two replicas compact at once.

use crate::domain::TokenId;
use crate::store::{StoreError, Tombstone};

/// One removal asked of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// Removes a record whose tombstone is at or before `dead_by_ms`.
    /// Refused with [`StoreError::NotFound`] when there is no such record
    /// and [`StoreError::Conflict`] when it is live, died later, or was
    /// purged already.
    Purge {
        /// The record.
        id: TokenId,
        /// The latest tombstone time that qualifies (ms since the epoch).
        dead_by_ms: u64,
    },
    /// Drops seal versions of a record, each stored and older than its
    /// newest (otherwise [`StoreError::Conflict`]: the newest is never
    /// dropped, and a version dropped already is a stale read).
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

/// Checks that a purge may remove what the store holds.
pub(crate) fn check_purge(held: Held, dead_by_ms: u64) -> Result<(), StoreError> {
    match held {
        Held::Nothing => Err(StoreError::NotFound),
        Held::Record(Some(tombstone)) if tombstone.at_ms <= dead_by_ms => Ok(()),
        Held::Purged | Held::Record(_) => Err(StoreError::Conflict),
    }
}

/// Checks a drop of seal `versions` from a record held as `held`, whose
/// newest version is `newest` (0: none), given which of them are stored.
pub(crate) fn check_drop(
    held: Held,
    versions: &[u32],
    newest: u32,
    stored: impl Fn(u32) -> bool,
) -> Result<(), StoreError> {
    match held {
        Held::Nothing => Err(StoreError::NotFound),
        Held::Purged => Err(StoreError::Conflict),
        Held::Record(_)
            if versions
                .iter()
                .all(|v| *v >= 1 && *v < newest && stored(*v)) =>
        {
            Ok(())
        }
        Held::Record(_) => Err(StoreError::Conflict),
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
    fn only_records_dead_by_the_cutoff_are_purged_once() {
        check_purge(dead_at(10), 10).unwrap();
        for (held, cutoff) in [
            (dead_at(11), 10),
            (Held::Record(None), u64::MAX),
            (Held::Purged, u64::MAX),
        ] {
            assert!(matches!(
                check_purge(held, cutoff),
                Err(StoreError::Conflict)
            ));
        }
        assert!(matches!(
            check_purge(Held::Nothing, 10),
            Err(StoreError::NotFound)
        ));
    }

    #[test]
    fn the_newest_seal_version_is_never_dropped_nor_a_version_twice() {
        let live = Held::Record(None);
        let all = |_| true;
        check_drop(live, &[1, 2], 3, all).unwrap();
        for bad in [&[3][..], &[0], &[1, 4]] {
            assert!(matches!(
                check_drop(live, bad, 3, all),
                Err(StoreError::Conflict)
            ));
        }
        assert!(matches!(
            check_drop(live, &[1], 3, |v| v != 1),
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            check_drop(Held::Purged, &[1], 3, all),
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            check_drop(Held::Nothing, &[1], 3, all),
            Err(StoreError::NotFound)
        ));
    }

    #[test]
    fn no_record_encoding_looks_purged() {
        let bytes = crate::store::record::tests::sample().encode();
        assert!(!is_purged(&bytes));
        assert!(crate::store::SealedRecord::decode(PURGED).is_err());
    }
}
