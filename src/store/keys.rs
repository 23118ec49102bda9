//! Wrapped keys, one per context (tenant, purpose, version).
//!
//! The key table is not card data, and it is the one table that changes in
//! place: a master-key rotation rewraps a key (no copy under a retired
//! master key lingers) and crypto-shredding destroys keys (PCI DSS 3.7.5).

use async_trait::async_trait;

use crate::domain::TenantId;
use crate::domain::key::KeyContext;
use crate::store::{StoreError, WrappedKeyRecord};

/// Wrapped data and index keys. Contract checked by
/// `tests/store_conformance/keys.rs`; every write is durable on return.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a wrapped key; [`StoreError::AlreadyExists`] if that context has one.
    async fn put_wrapped_key(&self, key: WrappedKeyRecord) -> Result<(), StoreError>;

    /// Reads the wrapped key of one context.
    async fn wrapped_key(&self, ctx: &KeyContext) -> Result<Option<WrappedKeyRecord>, StoreError>;

    /// Every wrapped key of a tenant, ordered by purpose then version.
    async fn wrapped_keys(&self, tenant: &TenantId) -> Result<Vec<WrappedKeyRecord>, StoreError>;

    /// Every wrapped key of every tenant (master key rotation rewraps them).
    async fn all_wrapped_keys(&self) -> Result<Vec<WrappedKeyRecord>, StoreError>;

    /// Replaces a wrapped key with the same key rewrapped, if it is still
    /// exactly `expected`; otherwise `AlreadyExists` (`NotFound` when it is
    /// gone) and nothing changes.
    async fn replace_wrapped_key(
        &self,
        expected: &WrappedKeyRecord,
        new: WrappedKeyRecord,
    ) -> Result<(), StoreError>;

    /// Destroys every wrapped key of a tenant and returns how many there
    /// were: crypto-shredding needs the keys gone, not tombstoned.
    async fn destroy_wrapped_keys(&self, tenant: &TenantId) -> Result<usize, StoreError>;

    /// Destroys one wrapped key; `NotFound` if absent.
    async fn destroy_wrapped_key(&self, ctx: &KeyContext) -> Result<(), StoreError>;
}
