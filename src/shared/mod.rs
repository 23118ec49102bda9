//! What the replicas of one vault share through the store: principals
//! added at run time, pending approvals, admin sessions, lockouts and
//! anomaly locks, and signals such as "keys rotated".
//!
//! [`Shared`] reads and writes typed entries of the store's
//! [`StateStore`](crate::store::StateStore), each value JSON sealed under
//! the state key ([`seal`]). [`feed`] polls the store's change feed and
//! tells each component which of its entries changed, so a change made on
//! one replica takes effect on the others within one poll interval
//! ([`feed::DEFAULT_POLL`], `[access] shared_poll_ms`) plus a round trip to
//! the database. Components that must be exact at once (approving a
//! request, spending a session) read the store itself, not a cache.
//!
//! On the embedded stores there is one replica; the same code runs, and
//! the feed is not started.

pub mod feed;
pub mod seal;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{Expect, StateKind, Store, StoreError};
use seal::{OpenError, SealKeyError, StateSeal};

/// Reading or writing shared state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedError {
    /// The store failed (or, `Conflict`, the entry changed since read).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An entry did not open under the state key: edited in the database,
    /// or written by a replica with another key.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An entry opened but did not decode (written by a newer version?).
    #[error("a shared state entry did not decode")]
    Decode,
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealKeyError),
}

impl SharedError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }
}

/// Typed, sealed access to the store's shared entries.
#[derive(Debug, Clone)]
pub struct Shared {
    store: Arc<dyn Store>,
    seal: Arc<StateSeal>,
}

impl Shared {
    /// Shared state in `store`, sealed with `seal`.
    pub fn new(store: Arc<dyn Store>, seal: Arc<StateSeal>) -> Self {
        Self { store, seal }
    }

    /// The store (for the change feed).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Opens and decodes a sealed value of entry `(kind, key)`.
    pub fn open<T: DeserializeOwned>(
        &self,
        kind: StateKind,
        key: &str,
        sealed: &[u8],
    ) -> Result<T, SharedError> {
        self.decode(kind, key, sealed)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        kind: StateKind,
        key: &str,
        sealed: &[u8],
    ) -> Result<T, SharedError> {
        let plain = self.seal.open(kind, key, sealed)?;
        serde_json::from_slice(&plain).map_err(|_| SharedError::Decode)
    }

    /// The live entry `(kind, key)` and its version.
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: StateKind,
        key: &str,
    ) -> Result<Option<(u64, T)>, SharedError> {
        match self.store.state(kind, key).await? {
            Some(entry) => Ok(Some((entry.version, self.decode(kind, key, &entry.value)?))),
            None => Ok(None),
        }
    }

    /// Every live entry of `kind`: key, version, value.
    pub async fn list<T: DeserializeOwned>(
        &self,
        kind: StateKind,
    ) -> Result<Vec<(String, u64, T)>, SharedError> {
        let mut out = Vec::new();
        for (key, entry) in self.store.states(kind).await? {
            let value = self.decode(kind, &key, &entry.value)?;
            out.push((key, entry.version, value));
        }
        Ok(out)
    }

    /// Writes `value` (or deletes the entry, `None`) if it is as `expect`;
    /// `StoreError::Conflict` otherwise. Returns the change's number.
    pub async fn put<T: Serialize>(
        &self,
        kind: StateKind,
        key: &str,
        value: Option<&T>,
        expect: Expect,
    ) -> Result<u64, SharedError> {
        let sealed = match value {
            Some(value) => {
                let plain = zeroize::Zeroizing::new(
                    serde_json::to_vec(value).map_err(|_| SharedError::Decode)?,
                );
                Some(self.seal.seal(kind, key, &plain)?)
            }
            None => None,
        };
        Ok(self.store.put_state(kind, key, sealed, expect).await?)
    }
}
