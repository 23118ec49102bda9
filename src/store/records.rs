//! Sealed records: append, read, find by fingerprint, tombstone, re-seal.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{Fingerprint, TenantId, TokenId};
use crate::store::{
    Engine, SealedRecord, StoreError, StoredRecord, Tombstone, WriteBatch, WriteUnit,
};

/// A re-sealed PAN for an existing record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedVersion {
    /// The record.
    pub id: TokenId,
    /// The new seal version: current + 1.
    pub version: u32,
    /// The re-sealed bytes.
    pub sealed_pan: Vec<u8>,
}

/// Append-only records.
///
/// Contract, checked by `tests/store_conformance/records.rs`:
/// - [`RecordStore::append`] never overwrites: an existing token id is
///   [`StoreError::AlreadyExists`]; a fingerprint held by a live
///   (untombstoned) record of the same tenant is
///   [`StoreError::FingerprintTaken`]. The check and the write are atomic
///   across every writer in flight; a failed append writes nothing.
/// - [`RecordStore::append_tombstone`] succeeds at most once per record: of
///   N concurrent calls exactly one returns `Ok`.
/// - Fingerprints are scoped to their tenant.
/// - Nothing is removed but by a [`crate::store::Compaction`] in a commit;
///   a purged record reads as absent and its id stays taken.
#[async_trait]
pub trait RecordStore: Engine {
    /// Reads a record and its tombstone.
    async fn get(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError>;

    /// The record currently indexed under a tenant's fingerprint, if any
    /// (possibly tombstoned since).
    async fn find_by_fingerprint(
        &self,
        tenant: &TenantId,
        fingerprint: &Fingerprint,
    ) -> Result<Option<StoredRecord>, StoreError>;

    /// Up to `limit` records of a tenant in token-id order, starting after
    /// `after`. Pages through a tenant for re-encryption and key statistics.
    async fn scan_tenant(
        &self,
        tenant: &TenantId,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Up to `limit` records of every tenant in token-id order, starting
    /// after `after`; purged records are not returned. The compaction job
    /// pages the whole store with it.
    async fn scan_all(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// The seal versions (≥ 1) stored for each of `ids`, ascending; records
    /// with none are left out.
    async fn seal_versions(&self, ids: &[TokenId]) -> Result<Vec<(TokenId, Vec<u32>)>, StoreError>;

    /// Whether `id` is taken: a record holds it, or held it until it was
    /// purged (a purged id is never issued again). Token generators probe
    /// with this, not [`Self::get`], which reads a purged record as absent.
    async fn is_taken(&self, id: &TokenId) -> Result<bool, StoreError>;

    /// Of `ids`, those the store's own floor holds back from compaction:
    /// records whose tombstone or newest seal version it stored too
    /// recently (PostgreSQL: younger than `compaction_policy.min_grace`, by
    /// the database's clock). A commit would refuse their removal; the job
    /// leaves them for a later run. The embedded stores have no floor.
    async fn held_back(&self, ids: &[TokenId]) -> Result<HashSet<TokenId>, StoreError> {
        let _ = ids;
        Ok(HashSet::new())
    }

    /// Appends re-sealed PAN bytes for many records, each as seal version
    /// `version`, which must be that record's current seal version + 1;
    /// otherwise (a concurrent re-encryption won) that item is
    /// `AlreadyExists`, and `NotFound` when its record does not exist.
    /// Earlier versions stay until an explicit compaction. One durable flush
    /// covers the whole batch; per-item outcomes come back in order.
    async fn append_sealed_versions(
        &self,
        items: Vec<SealedVersion>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;

    /// Appends one record: a commit of one unit.
    async fn append(&self, record: SealedRecord) -> Result<(), StoreError> {
        let unit = WriteUnit {
            records: vec![record],
            ..WriteUnit::default()
        };
        self.commit(Arc::new(WriteBatch::of_unit(unit)))
            .await
            .map_err(|e| e.into_store())
    }

    /// Marks a record dead; [`StoreError::AlreadyExists`] if it already is,
    /// [`StoreError::NotFound`] if there is no such record.
    async fn append_tombstone(&self, id: &TokenId, tombstone: Tombstone) -> Result<(), StoreError> {
        let unit = WriteUnit {
            tombstones: vec![(*id, tombstone)],
            ..WriteUnit::default()
        };
        self.commit(Arc::new(WriteBatch::of_unit(unit)))
            .await
            .map_err(|e| e.into_store())
    }
}
