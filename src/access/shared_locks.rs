//! Lockouts and anomaly locks in force on every replica.
//!
//! A replica's [`Guard`](crate::access::limits::Guard) counts failed
//! authentications and spots anomalies itself, in memory, on the call path.
//! When it *locks* something (an API key id after `max_failed_auth`
//! failures, a principal's second factor, a principal for an anomaly) or an
//! admin unlocks it, the guard notes that in its [`Outbox`]; the change
//! feed's task writes the notes to the store's shared state
//! ([`LockSync::publish`]) and applies the other replicas' notes to this
//! guard ([`LockSync`] as a follower). So a lock taken on one replica holds
//! on every other within two poll intervals, and nothing on the call path
//! waits for the database.
//!
//! Failures are counted per replica: a failed authentication costs no
//! database write, so guessing keys cannot load the database. With N
//! replicas behind a balancer, a key id therefore takes at most N ×
//! `max_failed_auth` guesses before it locks everywhere; PCI DSS 8.3.4
//! allows 10, so set `max_failed_auth` to at most 10 / N (the README says
//! so). Locks are written only for credentials that name a principal and
//! for principals, never for made-up key ids (those are the network
//! limit's job), so the shared entries are bounded by the principals.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::shared::feed::Follower;
use crate::shared::{Shared, SharedError};
use crate::store::{Expect, StateChange, StateKind};

/// Most notes waiting to be written; past it the oldest give way (their
/// locks still hold on this replica).
const MAX_NOTES: usize = 4096;

/// What is locked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockTarget {
    /// A credential: an API key id, or `otp:NAME` for a second factor.
    Credential(String),
    /// A principal, for an anomaly.
    Principal(String),
}

impl LockTarget {
    /// The shared entry's key.
    fn key(&self) -> String {
        match self {
            Self::Credential(id) => format!("credential:{id}"),
            Self::Principal(name) => format!("principal:{name}"),
        }
    }

    /// The target of a shared entry's key.
    fn of_key(key: &str) -> Option<Self> {
        if let Some(id) = key.strip_prefix("credential:") {
            Some(Self::Credential(id.to_owned()))
        } else {
            key.strip_prefix("principal:")
                .map(|name| Self::Principal(name.to_owned()))
        }
    }
}

/// A lock as shared: until when, by the wall clock, or until unlocked; or
/// lifted. A lift is a sealed value too, never a deleted row: someone with
/// write access to the database cannot lift a lock without the state key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedLock {
    /// Milliseconds since the Unix epoch; `None`: until an admin unlocks.
    pub until_ms: Option<u64>,
    /// An admin lifted it.
    #[serde(default)]
    pub lifted: bool,
}

/// A lock taken or lifted on this replica, to be shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockNote {
    /// What.
    pub target: LockTarget,
    /// The lock; `None` when it was lifted.
    pub lock: Option<SharedLock>,
}

impl LockNote {
    /// What is written: the lock, or a lift.
    fn value(&self) -> SharedLock {
        self.lock.unwrap_or(SharedLock {
            until_ms: None,
            lifted: true,
        })
    }
}

/// Notes waiting to be written. Off (and empty) unless the vault has
/// replicas to tell.
#[derive(Debug, Default)]
pub struct Outbox {
    enabled: std::sync::atomic::AtomicBool,
    notes: Mutex<Vec<LockNote>>,
}

impl Outbox {
    /// Starts keeping notes.
    pub fn enable(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Notes a lock taken (until `until`, `None`: until unlocked).
    pub fn locked(&self, target: LockTarget, until: Option<Instant>) {
        let until_ms = until.map(wall_ms_of);
        self.push(LockNote {
            target,
            lock: Some(SharedLock {
                until_ms,
                lifted: false,
            }),
        });
    }

    /// Notes a lock lifted.
    pub fn unlocked(&self, target: LockTarget) {
        self.push(LockNote { target, lock: None });
    }

    fn push(&self, note: LockNote) {
        if !self.enabled.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut notes = self
            .notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One note per target, the newest: a lift never queues behind (and
        // so is never undone by) an older lock of the same target.
        notes.retain(|n| n.target != note.target);
        if notes.len() >= MAX_NOTES {
            // Only locks give way (they still hold on this replica).
            if let Some(oldest_lock) = notes.iter().position(|n| n.lock.is_some()) {
                notes.remove(oldest_lock);
            }
        }
        notes.push(note);
    }

    /// Takes the waiting notes.
    pub fn take(&self) -> Vec<LockNote> {
        std::mem::take(
            &mut *self
                .notes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts notes back (their write failed), behind newer notes of the
    /// same targets.
    fn restore(&self, failed: Vec<LockNote>) {
        let mut notes = self
            .notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let newer = std::mem::take(&mut *notes);
        let mut merged: Vec<LockNote> = failed
            .into_iter()
            .filter(|old| !newer.iter().any(|n| n.target == old.target))
            .collect();
        merged.extend(newer);
        *notes = merged;
    }
}

/// Wall-clock milliseconds: compared across processes.
fn now_ms() -> u64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}

/// The wall-clock time of `instant`.
fn wall_ms_of(instant: Instant) -> u64 {
    let now = Instant::now();
    let ahead = instant.saturating_duration_since(now);
    let ahead = u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX);
    now_ms().saturating_add(ahead)
}

/// The monotonic time of wall-clock `ms`; `None` once it has passed.
pub fn instant_of(ms: u64) -> Option<Instant> {
    let left = ms.checked_sub(now_ms()).filter(|left| *left > 0)?;
    Instant::now().checked_add(Duration::from_millis(left))
}

/// Where a replica applies other replicas' locks.
pub trait LockTaker: Send + Sync {
    /// Applies a lock shared by another replica (or this one, again).
    fn take_lock(&self, target: &LockTarget, lock: SharedLock);
    /// Lifts a lock another replica lifted.
    fn lift_lock(&self, target: &LockTarget);
}

/// Writes this replica's lock notes and applies the others'.
pub struct LockSync {
    outbox: Arc<Outbox>,
    taker: Arc<dyn LockTaker>,
    shared: Shared,
}

impl std::fmt::Debug for LockSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockSync")
    }
}

impl LockSync {
    /// Shares the locks `outbox` notes and applies others' to `taker`.
    pub fn new(outbox: Arc<Outbox>, taker: Arc<dyn LockTaker>, shared: Shared) -> Self {
        outbox.enable();
        Self {
            outbox,
            taker,
            shared,
        }
    }
}

#[async_trait]
impl Follower for LockSync {
    fn kinds(&self) -> &'static [StateKind] {
        &[StateKind::Lock]
    }

    async fn publish(&self) {
        let notes = self.outbox.take();
        for (n, note) in notes.iter().enumerate() {
            let written = self
                .shared
                .put(
                    StateKind::Lock,
                    &note.target.key(),
                    Some(&note.value()),
                    Expect::Any,
                )
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "a lock could not be shared yet; retrying");
                self.outbox.restore(notes[n..].to_vec());
                return;
            }
        }
    }

    async fn changed(&self, changes: &[StateChange]) -> Result<(), String> {
        for change in changes {
            let Some(target) = LockTarget::of_key(&change.key) else {
                continue;
            };
            // A deleted row or one that does not open lifts nothing: only
            // a sealed lift does.
            if change.deleted {
                tracing::warn!(
                    alert = "shared_state_unreadable",
                    "a shared lock was deleted in the store; ignored"
                );
                continue;
            }
            match self
                .shared
                .get::<SharedLock>(StateKind::Lock, &change.key)
                .await
            {
                Ok(Some((_, lock))) if lock.lifted => self.taker.lift_lock(&target),
                Ok(Some((_, lock))) => self.taker.take_lock(&target, lock),
                Ok(None) => {}
                Err(SharedError::Store(e)) if e.is_retryable() => {
                    return Err(format!("a shared lock could not be read: {e}"));
                }
                Err(e) => tracing::error!(
                    alert = "shared_state_unreadable",
                    error = %e,
                    "a shared lock does not open; ignored"
                ),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::limits::{Guard, LimitsConfig};
    use crate::secret::DataKey;
    use crate::shared::feed;
    use crate::shared::seal::StateSeal;
    use crate::store::memory::MemoryStore;
    use crate::store::{StateStore, Store};

    /// One replica: its guard, and the sync that shares its locks.
    fn replica(store: &Arc<MemoryStore>) -> (Arc<Guard>, Arc<LockSync>) {
        let config = LimitsConfig {
            max_failed_auth: 3,
            ..LimitsConfig::default()
        };
        let guard = Arc::new(Guard::new(config));
        let dyn_store: Arc<dyn Store> = store.clone();
        let shared = Shared::new(
            dyn_store,
            Arc::new(StateSeal::new(DataKey::from_bytes([8; 32]))),
        );
        let taker: Arc<dyn LockTaker> = guard.clone();
        let sync = Arc::new(LockSync::new(Arc::clone(guard.outbox()), taker, shared));
        (guard, sync)
    }

    /// What the change feed's task does each tick, for every replica.
    async fn tick(store: &Arc<MemoryStore>, replicas: &[&Arc<LockSync>]) {
        for sync in replicas {
            sync.publish().await;
        }
        let changes = store.state_changes(0, 1000).await.unwrap();
        for sync in replicas {
            let follower: Arc<dyn Follower> = (*sync).clone();
            feed::deliver(&[follower], &changes).await;
        }
    }

    /// A key locked on one replica after its failures is locked on the
    /// other after one tick; an admin's unlock on the other lifts it on
    /// both. An anomaly lock travels the same way.
    #[tokio::test]
    async fn locks_taken_on_one_replica_hold_on_the_other() {
        let store = Arc::new(MemoryStore::new());
        let (a, sync_a) = replica(&store);
        let (b, sync_b) = replica(&store);
        for _ in 0..3 {
            a.auth_failed("otp:alice");
        }
        assert!(a.key_locked("otp:alice"));
        // The authenticator notes credential locks that name a principal.
        a.outbox().locked(
            LockTarget::Credential("otp:alice".into()),
            Some(Instant::now() + a.lockout()),
        );
        assert!(!b.key_locked("otp:alice"));
        tick(&store, &[&sync_a, &sync_b]).await;
        assert!(b.key_locked("otp:alice"), "shared");
        assert!(b.unlock_principal("alice"));
        tick(&store, &[&sync_a, &sync_b]).await;
        assert!(!a.key_locked("otp:alice"), "unlocked on b, lifted on a");

        a.outbox()
            .locked(LockTarget::Principal("mallory".into()), None);
        tick(&store, &[&sync_a, &sync_b]).await;
        assert!(b.principal_locked("mallory"));
    }

    /// A lock whose end has passed is not taken again from the store.
    #[tokio::test]
    async fn an_expired_shared_lock_is_not_taken() {
        let store = Arc::new(MemoryStore::new());
        let (a, sync_a) = replica(&store);
        let (b, sync_b) = replica(&store);
        a.outbox().locked(
            LockTarget::Credential("k1".into()),
            Some(Instant::now() + Duration::from_millis(1)),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        tick(&store, &[&sync_a, &sync_b]).await;
        assert!(!b.key_locked("k1"));
    }
}
