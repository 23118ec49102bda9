//! The append-only store of sealed records, tombstones, wrapped keys, audit
//! events and job checkpoints.
//!
//! Capabilities are split the way tikv splits `KvEngine` into small traits,
//! one file each, so a use case names only what it needs and a new backend
//! (PostgreSQL) implements them one at a time:
//! - [`RecordStore`] ([`records`]): sealed records, tombstones, seal versions;
//!   removed only by compaction ([`compact`]).
//! - [`KeyStore`] ([`keys`]): wrapped keys per context.
//! - [`AuditStore`] ([`audit`]): the chained audit events and the signed head.
//! - [`JobStore`] ([`jobs`]): checkpoints of background jobs.
//! - [`StateStore`] ([`state`]): what replicas share (principals added at
//!   run time, approvals, sessions, locks), with a change feed.
//! - [`Engine`] ([`batch`]): one atomic, durable commit of a [`WriteBatch`]
//!   (records, tombstones and audit events of many writers), the write
//!   pipeline's seam; a durability barrier; a liveness probe.
//!
//! [`Store`] is their sum. This module names no vendor type and no KMS type:
//! it sees sealed bytes, ids, fingerprints and public facts only, never a PAN
//! and never an unwrapped key. Backends:
//! - [`sled::SledStore`]: embedded, one node, the default.
//! - [`fjall::FjallStore`]: embedded LSM tree, one node (`backend = "fjall"`).
//! - [`postgres::PgStore`]: PostgreSQL, shared by many replicas
//!   (`backend = "postgres"`).
//! - [`memory::MemoryStore`]: in process, for unit tests only.
//!
//! Business rules (TTL, single use, tenancy) live in `vault`; the store
//! only guarantees the storage primitives below.

pub mod audit;
pub mod batch;
pub mod compact;
pub mod fjall;
pub mod jobs;
pub mod keys;
pub mod memory;
pub mod postgres;
mod prepared;
pub mod record;
pub mod records;
pub mod segment;
pub mod sled;
pub mod snapshot;
pub mod state;

use std::fmt;

pub use audit::AuditStore;
pub use batch::{
    AuditAppend, AuditWrite, ChainStep, CommitError, Engine, MAX_TAIL_EVENTS, WriteBatch, WriteUnit,
};
pub use compact::Compaction;
pub use jobs::JobStore;
pub use keys::KeyStore;
pub use record::{
    PublicFacts, SealedRecord, StoredRecord, Tombstone, TombstoneReason, WrappedKeyRecord,
};
pub use records::{RecordStore, SealedVersion};
pub use state::{Expect, StateChange, StateEntry, StateKind, StateStore};

use crate::codec::DecodeError;
use crate::domain::TokenId;

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// Stored bytes did not decode. Never retryable: a retry reads the same
    /// bytes.
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[from] DecodeError),
    /// An index or the backend itself reports damage. Like `Corrupt`, never
    /// retryable.
    #[error("stored data is corrupt: {0}")]
    Damaged(&'static str),
    /// The backend is unreachable or failed in a way a retry may fix.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A conditional write found the entry changed since it was read (or
    /// present when it was expected absent); nothing was written.
    #[error("the entry changed since it was read")]
    Conflict,
}

impl StoreError {
    /// Whether retrying later may succeed (maps to gRPC UNAVAILABLE).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Every capability together: what a backend is. Implemented for every
/// type that implements the parts; held as `Arc<dyn Store>`, picked once
/// at start-up.
///
/// The shared contract, checked by `tests/store_conformance/` for every
/// backend: every method that returns `Ok` after a write has made it
/// durable (it survives a crash or `kill -9`); corrupt stored bytes are
/// [`StoreError::Corrupt`] or [`StoreError::Damaged`], never retryable.
pub trait Store:
    RecordStore
    + KeyStore
    + AuditStore
    + JobStore
    + StateStore
    + Engine
    + Send
    + Sync
    + fmt::Debug
    + 'static
{
}

impl<T> Store for T where
    T: RecordStore
        + KeyStore
        + AuditStore
        + JobStore
        + StateStore
        + Engine
        + Send
        + Sync
        + fmt::Debug
        + 'static
{
}
