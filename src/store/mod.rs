//! The append-only store of sealed records, tombstones and wrapped keys.
//!
//! This module names no vendor type. Backends:
//! - [`sled::SledStore`]: embedded, one node, the default.
//! - [`memory::MemoryStore`]: in process, for unit tests only.
//!
//! Business rules (TTL, single use, tenancy) live in `vault.rs`; the store
//! only guarantees the storage primitives below.

pub mod memory;
pub mod record;
pub mod sled;

use std::fmt;

use async_trait::async_trait;

pub use record::{
    PublicFacts, SealedRecord, StoredRecord, Tombstone, TombstoneReason, WrappedKeyRecord,
};

use crate::codec::DecodeError;
use crate::domain::{Fingerprint, TenantId, TokenId};
use crate::kms::KeyContext;

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

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The id (or key version, or tombstone) is already present; nothing
    /// was written. The store never overwrites.
    #[error("already exists")]
    AlreadyExists,
    /// A live record of the tenant already holds this fingerprint; nothing
    /// was written. Carries the holder so the caller can return it.
    #[error("fingerprint already held by a live record")]
    FingerprintTaken(TokenId),
    /// A tombstone was appended for a record that does not exist.
    #[error("no such record")]
    NotFound,
    /// Stored bytes did not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[from] DecodeError),
    /// An index or the backend itself reports damage. Like `Corrupt`, never
    /// retryable: a retry reads the same bytes.
    #[error("stored data is corrupt: {0}")]
    Damaged(&'static str),
    /// The backend is unreachable or failed in a way a retry may fix.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether retrying later may succeed (maps to gRPC UNAVAILABLE).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Append-only storage.
///
/// Contract, checked by `tests/store_conformance/suite.rs` for every backend:
/// - Every method that returns `Ok` after a write has made it durable: it
///   survives a crash or `kill -9` of the process.
/// - [`Store::append`] never overwrites: an existing token id is
///   [`StoreError::AlreadyExists`]; a fingerprint held by a live (untombstoned)
///   record of the same tenant is [`StoreError::FingerprintTaken`]. The check
///   and the write are atomic; a failed append writes nothing.
/// - [`Store::append_tombstone`] succeeds at most once per record, atomically:
///   of N concurrent calls exactly one returns `Ok`.
/// - Fingerprints are scoped to their tenant.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Appends a new record.
    async fn append(&self, record: SealedRecord) -> Result<(), StoreError>;

    /// Reads a record and its tombstone.
    async fn get(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError>;

    /// The record currently indexed under a tenant's fingerprint, if any
    /// (possibly tombstoned since).
    async fn find_by_fingerprint(
        &self,
        tenant: &TenantId,
        fingerprint: &Fingerprint,
    ) -> Result<Option<StoredRecord>, StoreError>;

    /// Marks a record dead; [`StoreError::AlreadyExists`] if it already is.
    async fn append_tombstone(&self, id: &TokenId, tombstone: Tombstone) -> Result<(), StoreError>;

    /// Stores a wrapped key; [`StoreError::AlreadyExists`] if that context has one.
    async fn put_wrapped_key(&self, key: WrappedKeyRecord) -> Result<(), StoreError>;

    /// Reads the wrapped key of one context.
    async fn wrapped_key(&self, ctx: &KeyContext) -> Result<Option<WrappedKeyRecord>, StoreError>;

    /// Every wrapped key of a tenant, ordered by purpose then version.
    async fn wrapped_keys(&self, tenant: &TenantId) -> Result<Vec<WrappedKeyRecord>, StoreError>;

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

    /// Writes a job checkpoint (the one overwritable table: progress of
    /// background jobs, never card data).
    async fn put_checkpoint(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError>;

    /// Reads a job checkpoint.
    async fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Names of the checkpoints starting with `prefix`.
    async fn checkpoints(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Removes a job checkpoint (the job finished).
    async fn delete_checkpoint(&self, name: &str) -> Result<(), StoreError>;

    /// Every wrapped key of every tenant (master key rotation rewraps them).
    async fn all_wrapped_keys(&self) -> Result<Vec<WrappedKeyRecord>, StoreError>;

    /// Replaces a wrapped key with the same key rewrapped, if it is still
    /// exactly `expected`; otherwise `AlreadyExists` and nothing changes.
    /// The key table is not card data: a rewrap replaces the old wrap so no
    /// copy under a retired master key lingers.
    async fn replace_wrapped_key(
        &self,
        expected: &WrappedKeyRecord,
        new: WrappedKeyRecord,
    ) -> Result<(), StoreError>;

    /// Destroys every wrapped key of a tenant and returns how many there
    /// were. The one deletion the store performs: crypto-shredding needs the
    /// keys gone, not tombstoned (PCI DSS 3.7.5, DESIGN.md §3).
    async fn destroy_wrapped_keys(&self, tenant: &TenantId) -> Result<usize, StoreError>;

    /// Destroys one wrapped key; `NotFound` if absent.
    async fn destroy_wrapped_key(&self, ctx: &KeyContext) -> Result<(), StoreError>;

    /// Up to `limit` records of a tenant in token-id order, starting after
    /// `after`. Pages through a tenant for re-encryption and key statistics.
    async fn scan_tenant(
        &self,
        tenant: &TenantId,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Appends audit record `seq`, which must be the next position (the
    /// log's length); otherwise `AlreadyExists` and nothing is written.
    /// With `head`, the signed chain head is replaced in the same atomic
    /// write. Durable on return.
    async fn append_audit(
        &self,
        seq: u64,
        record: Vec<u8>,
        head: Option<Vec<u8>>,
    ) -> Result<(), StoreError>;

    /// Audit records from position `from`, at most `limit`, in order.
    async fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// The newest audit record, to continue the chain after a restart.
    async fn last_audit_record(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// The signed chain head, if one was written.
    async fn audit_head(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Returns once everything written to the store so far, by any writer,
    /// is durable. A reader that found another writer's record may be
    /// ahead of that writer's flush; it calls this before acting on the
    /// record as acknowledged (deterministic reuse returns such a token).
    async fn sync(&self) -> Result<(), StoreError>;
}
