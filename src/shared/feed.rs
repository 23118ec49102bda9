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
    async fn changed(&self, changes: &[StateChange]);
}

/// Polls `store` every `poll` and hands `followers` their changes, until
/// the returned task is aborted.
pub fn spawn(
    store: Arc<dyn Store>,
    followers: Vec<Arc<dyn Follower>>,
    poll: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut since = 0;
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            loop {
                let changes = match store.state_changes(since, PAGE).await {
                    Ok(changes) => changes,
                    Err(e) => {
                        tracing::warn!(error = %e, "shared state: change feed unreadable; retrying");
                        break;
                    }
                };
                let Some(last) = changes.last() else {
                    break;
                };
                since = last.version;
                deliver(&followers, &changes).await;
                if changes.len() < PAGE {
                    break;
                }
            }
        }
    })
}

/// Hands each follower the changes of its kinds.
pub async fn deliver(followers: &[Arc<dyn Follower>], changes: &[StateChange]) {
    for follower in followers {
        let kinds = follower.kinds();
        let mine: Vec<StateChange> = changes
            .iter()
            .filter(|c| kinds.contains(&c.kind))
            .cloned()
            .collect();
        if !mine.is_empty() {
            follower.changed(&mine).await;
        }
    }
}
