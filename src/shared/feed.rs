//! Polls the store's change feed and hands each component the changes of
//! the kinds it follows.
//!
//! Polling, not LISTEN/NOTIFY: it works the same on every backend and
//! through any pooler, and its bound is simple to state. A change made on
//! one replica is acted on by another within one poll interval plus one
//! round trip to the database. The feed starts at change 0, so the first
//! poll hands every follower what exists already; following is idempotent.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{StateChange, StateKind, Store};

/// How often the feed is polled unless configured.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// Most changes read per poll; a longer backlog takes several polls.
const PAGE: usize = 1024;

/// A component that keeps a view of shared entries.
#[async_trait]
pub trait Follower: Send + Sync {
    /// The kinds it keeps a view of.
    fn kinds(&self) -> &'static [StateKind];

    /// Entries of those kinds changed (in change order): refresh the view.
    /// An error hands the same changes again at the next poll.
    async fn changed(&self, changes: &[StateChange]) -> Result<(), String>;

    /// Writes what this replica has to share, before each poll (locks are
    /// taken on the call path and written here, off it).
    async fn publish(&self) {}
}

/// Polls `store` every `poll` and hands `followers` their changes, until
/// the returned task is aborted.
pub fn spawn(
    store: Arc<dyn Store>,
    followers: Vec<Arc<dyn Follower>>,
    poll: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Each follower reads from its own position: one that cannot apply
        // a change yet (the database did not answer) gets it again at the
        // next poll, without holding the others back.
        let mut cursors = vec![0u64; followers.len()];
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for follower in &followers {
                follower.publish().await;
            }
            for (follower, cursor) in followers.iter().zip(cursors.iter_mut()) {
                follow(store.as_ref(), follower.as_ref(), cursor).await;
            }
        }
    })
}

/// Hands `follower` the changes after `cursor`, a page at a time, moving
/// the cursor past those it took.
async fn follow(store: &dyn Store, follower: &dyn Follower, cursor: &mut u64) {
    loop {
        let changes = match store.state_changes(*cursor, PAGE).await {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!(error = %e, "shared state: change feed unreadable; retrying");
                return;
            }
        };
        let Some(last) = changes.last().map(|c| c.version) else {
            return;
        };
        let changes: Vec<&StateChange> = changes.iter().collect();
        if !deliver_one(follower, &changes).await {
            return;
        }
        *cursor = last;
        if changes.len() < PAGE {
            return;
        }
    }
}

/// Hands `follower` the changes of its kinds among `changes`; whether it
/// took them.
async fn deliver_one(follower: &dyn Follower, changes: &[&StateChange]) -> bool {
    let kinds = follower.kinds();
    let mine: Vec<StateChange> = changes
        .iter()
        .filter(|c| kinds.contains(&c.kind))
        .map(|c| (*c).clone())
        .collect();
    if mine.is_empty() {
        return true;
    }
    match follower.changed(&mine).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "shared state: a change could not be applied; retrying");
            false
        }
    }
}

/// Hands each follower the changes of its kinds; whether all took them.
pub async fn deliver(followers: &[Arc<dyn Follower>], changes: &[StateChange]) -> bool {
    let changes: Vec<&StateChange> = changes.iter().collect();
    let mut all = true;
    for follower in followers {
        all &= deliver_one(follower.as_ref(), &changes).await;
    }
    all
}
