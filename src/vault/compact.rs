//! Compaction: purge what no call can reach any more, page by page,
//! audited and resumable.
//!
//! One run pages through every record of every tenant in token-id order
//! ([`crate::store::RecordStore::scan_all`]) and, per page, in one commit
//! of the write pipeline together with an audit event that counts them:
//! - marks records whose TTL has passed dead (an `Expired` tombstone at
//!   the run's time, as a detokenize would when it meets one);
//! - purges records whose tombstone is older than the grace period
//!   (`tokens.purge_grace_s`, default a week), fixed when the run starts:
//!   expired, deleted and consumed tokens alike. An expired record is
//!   therefore purged by the first run at least a grace period after the
//!   run that marked it: the grace always counts from the tombstone;
//! - drops seal versions older than each record's newest, left behind by
//!   re-encryption.
//!
//! The rules of what may go are the store's ([`crate::store::compact`]):
//! a purged token's id stays taken, the newest seal version always stays,
//! and on PostgreSQL the database itself refuses a purge younger than its
//! owner's floor. After each page the run writes a checkpoint (cutoff,
//! counters, last token id); a run that stops (a crash, `kill -9`, a seal)
//! continues from it when started again, with its original cutoff, and a
//! finished run removes it. Pages with nothing to remove write nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::audit::AuditEvent;
use crate::codec::{Reader, Writer};
use crate::domain::TokenId;
use crate::domain::token::TOKEN_ID_LEN;
use crate::pipeline::WriteError;
use crate::store::{Compaction, StoreError, StoredRecord, Tombstone, TombstoneReason, WriteUnit};
use crate::vault::{Vault, VaultError};

/// Records examined per page (one commit and one checkpoint each).
pub const PAGE: usize = 500;
/// The action of each page's audit event.
pub const COMPACTED_ACTION: &str = "Compacted";
const CHECKPOINT: &str = "compact/run";
/// How often a page is read again when its commit was refused (another
/// replica compacting, or a call writing a tombstone meanwhile).
const PAGE_ATTEMPTS: usize = 3;

/// What a run has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactProgress {
    /// Records examined.
    pub examined: u64,
    /// Records found expired and marked dead.
    pub expired: u64,
    /// Dead records purged.
    pub purged: u64,
    /// Superseded seal versions dropped.
    pub seal_versions_dropped: u64,
    /// Dead records not purged yet: their tombstone is later than the
    /// cutoff, or younger than the store's own floor (PostgreSQL).
    pub dead_in_grace: u64,
    /// Re-sealed records whose newest seal version did not open (a data
    /// key gone, the bytes damaged or forged): their older versions stay,
    /// and an alert is logged for each.
    pub unopenable: u64,
    /// The cutoff: records dead at or before it (ms since the epoch) are
    /// purged.
    pub dead_by_ms: u64,
    /// The run has finished.
    pub finished: bool,
}

/// One process runs at most one compaction at a time.
#[derive(Debug, Default)]
pub struct CompactionLatch(AtomicBool);

struct LatchGuard<'a>(&'a CompactionLatch);

impl Drop for LatchGuard<'_> {
    fn drop(&mut self) {
        self.0.0.store(false, Ordering::SeqCst);
    }
}

impl CompactionLatch {
    fn take(&self) -> Option<LatchGuard<'_>> {
        self.0
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            .then_some(LatchGuard(self))
    }
}

/// A run's checkpoint: its progress and the last token id examined.
struct Checkpoint {
    progress: CompactProgress,
    after: Option<TokenId>,
}

const CHECKPOINT_V1: u8 = 1;

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let p = &self.progress;
        let mut w = Writer::new();
        w.u8(CHECKPOINT_V1)
            .u64(p.dead_by_ms)
            .u64(p.examined)
            .u64(p.expired)
            .u64(p.purged)
            .u64(p.seal_versions_dropped)
            .u64(p.dead_in_grace)
            .u64(p.unopenable);
        match &self.after {
            Some(id) => w.u8(1).fixed(id.as_bytes()),
            None => w.u8(0),
        };
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.u8().ok()? != CHECKPOINT_V1 {
            return None;
        }
        let progress = CompactProgress {
            dead_by_ms: r.u64().ok()?,
            examined: r.u64().ok()?,
            expired: r.u64().ok()?,
            purged: r.u64().ok()?,
            seal_versions_dropped: r.u64().ok()?,
            dead_in_grace: r.u64().ok()?,
            unopenable: r.u64().ok()?,
            finished: false,
        };
        let after = if r.bool().ok()? {
            Some(TokenId::from_slice(r.fixed(TOKEN_ID_LEN).ok()?)?)
        } else {
            None
        };
        r.end().ok()?;
        Some(Self { progress, after })
    }
}

/// What one page removed.
#[derive(Debug, Default, Clone, Copy)]
struct PageCounts {
    expired: u64,
    purged: u64,
    dropped: u64,
    dead_in_grace: u64,
    unopenable: u64,
}

/// What one page asks of the store.
#[derive(Default)]
struct PagePlan {
    unit: WriteUnit,
    counts: PageCounts,
}

/// A page done: its last token id, its size, and what it removed.
struct PageDone {
    last: TokenId,
    examined: u64,
    counts: PageCounts,
}

impl Vault {
    /// Runs (or continues) a compaction, calling `report` after each page
    /// and once at the end. `event` names who asked (principal, request id,
    /// origin): each page's audit event is a copy of it.
    pub async fn compact(
        &self,
        event: &AuditEvent,
        mut report: impl FnMut(CompactProgress) + Send,
    ) -> Result<CompactProgress, VaultError> {
        self.ensure_unsealed()?;
        let _guard = self
            .compacting
            .take()
            .ok_or_else(|| VaultError::Precondition("a compaction is already running".into()))?;
        let grace = u64::try_from(self.policy.purge_grace.as_millis()).unwrap_or(u64::MAX);
        let mut cp = match self
            .store
            .checkpoint(CHECKPOINT)
            .await?
            .and_then(|b| Checkpoint::decode(&b))
        {
            Some(mut cp) => {
                // Never a shorter grace than today's policy (it may have
                // been raised since: a legal hold, an incident).
                let today = self.clock.now_ms().saturating_sub(grace);
                cp.progress.dead_by_ms = cp.progress.dead_by_ms.min(today);
                tracing::info!(
                    examined = cp.progress.examined,
                    // Seconds: a 13-digit millisecond time can pass the
                    // Luhn check, and log scans would take it for a PAN.
                    dead_by_s = cp.progress.dead_by_ms / 1000,
                    "resuming compaction from checkpoint"
                );
                cp
            }
            None => Checkpoint {
                progress: CompactProgress {
                    dead_by_ms: self.clock.now_ms().saturating_sub(grace),
                    ..CompactProgress::default()
                },
                after: None,
            },
        };
        loop {
            let page_started = tokio::time::Instant::now();
            self.ensure_unsealed()?;
            let Some(page) = self.compact_page(&cp, event).await? else {
                break;
            };
            let p = &mut cp.progress;
            p.examined += page.examined;
            p.expired += page.counts.expired;
            p.purged += page.counts.purged;
            p.seal_versions_dropped += page.counts.dropped;
            p.dead_in_grace += page.counts.dead_in_grace;
            p.unopenable += page.counts.unopenable;
            cp.after = Some(page.last);
            self.store.put_checkpoint(CHECKPOINT, cp.encode()).await?;
            report(cp.progress);
            super::pace(
                page_started,
                page.examined,
                self.policy.compact_records_per_second,
            )
            .await;
        }
        self.store.delete_checkpoint(CHECKPOINT).await?;
        let done = CompactProgress {
            finished: true,
            ..cp.progress
        };
        tracing::warn!(
            event = "compacted",
            examined = done.examined,
            expired = done.expired,
            purged = done.purged,
            seal_versions_dropped = done.seal_versions_dropped,
            "compaction finished"
        );
        report(done);
        Ok(done)
    }

    /// Compacts the page after the checkpoint; `None` past the last
    /// record. A refused commit (the page changed under it: another
    /// replica compacting, a call writing a tombstone) reads it again; a
    /// page that keeps changing stops the run (ABORTED: run it again).
    async fn compact_page(
        &self,
        cp: &Checkpoint,
        event: &AuditEvent,
    ) -> Result<Option<PageDone>, VaultError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let page = self.store.scan_all(cp.after, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            let done = |counts| PageDone {
                last: last.record.token_id,
                examined: u64::try_from(page.len()).unwrap_or(u64::MAX),
                counts,
            };
            let PagePlan { unit, counts } = self.plan_page(&page, cp.progress.dead_by_ms).await?;
            if unit.is_empty() {
                return Ok(Some(done(counts)));
            }
            let mut page_event = event.clone();
            page_event.action = COMPACTED_ACTION.to_owned();
            // The page's first and last keyed ids: whether a given token
            // was purged, and by whom, is the event whose range holds it.
            let first = page.first().map_or(last, |f| f).record.token_id.short();
            page_event.resource = format!(
                "records:{} expired:{} purged:{} seal_versions_dropped:{} dead_by_s:{} from:{} through:{}",
                page.len(),
                counts.expired,
                counts.purged,
                counts.dropped,
                // Seconds, not milliseconds: see above.
                cp.progress.dead_by_ms / 1000,
                first,
                last.record.token_id.short()
            );
            page_event.outcome = "OK".to_owned();
            match self.commit_write(unit, Some(page_event)).await {
                Ok(_) => return Ok(Some(done(counts))),
                Err(WriteError::Refused(
                    StoreError::Conflict | StoreError::AlreadyExists | StoreError::NotFound,
                )) if attempt < PAGE_ATTEMPTS => {
                    tracing::info!(
                        attempt,
                        "compaction page changed under it; reading it again"
                    );
                }
                Err(WriteError::Refused(_)) => {
                    tracing::warn!(
                        attempts = attempt,
                        "a compaction page kept changing under the run; stopping it"
                    );
                    return Err(VaultError::Contended);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What to remove from one page. Records the store's own floor holds
    /// back (PostgreSQL) wait for a later run; superseded seal versions go
    /// only when the newest opens, so a forged or damaged newest version
    /// never takes the good ones with it.
    async fn plan_page(
        &self,
        page: &[StoredRecord],
        dead_by_ms: u64,
    ) -> Result<PagePlan, VaultError> {
        let now = self.clock.now_ms();
        let ids: Vec<TokenId> = page.iter().map(|r| r.record.token_id).collect();
        let held_back = self.store.held_back(&ids).await?;
        let mut plan = PagePlan::default();
        let mut resealed = Vec::new();
        for stored in page {
            let id = stored.record.token_id;
            match stored.tombstone {
                Some(tombstone) if tombstone.at_ms <= dead_by_ms && !held_back.contains(&id) => {
                    plan.unit
                        .compactions
                        .push(Compaction::Purge { id, dead_by_ms });
                    plan.counts.purged += 1;
                    continue;
                }
                Some(_) => {
                    plan.counts.dead_in_grace += 1;
                    continue;
                }
                None if !self.is_live(stored, now) => {
                    let tombstone = Tombstone {
                        reason: TombstoneReason::Expired,
                        at_ms: now,
                    };
                    plan.unit.tombstones.push((id, tombstone));
                    plan.counts.expired += 1;
                    continue;
                }
                None => {}
            }
            if stored.seal_version >= 2 && !held_back.contains(&id) {
                resealed.push(stored);
            }
        }
        if resealed.is_empty() {
            return Ok(plan);
        }
        let ids: Vec<TokenId> = resealed.iter().map(|r| r.record.token_id).collect();
        let stored_versions: HashMap<TokenId, Vec<u32>> =
            self.store.seal_versions(&ids).await?.into_iter().collect();
        for stored in resealed {
            let id = stored.record.token_id;
            let Some(versions) = stored_versions.get(&id) else {
                continue;
            };
            let superseded: Vec<u32> = versions
                .iter()
                .copied()
                .filter(|v| *v < stored.seal_version)
                .collect();
            if superseded.is_empty() {
                continue;
            }
            match self.open(&stored.record.tenant, stored).await {
                Ok(_) => {}
                // Its data key is gone (a shred, or a version that never
                // existed): kept, counted, and logged without an alert.
                Err(VaultError::MissingKey) => {
                    tracing::info!(
                        token = %id.short(),
                        seal_version = stored.seal_version,
                        "the newest seal version's data key is gone; keeping the older ones"
                    );
                    plan.counts.unopenable += 1;
                    continue;
                }
                // The bytes do not open under their key: forged or damaged.
                Err(e @ (VaultError::Envelope(_) | VaultError::Store(StoreError::Corrupt(_)))) => {
                    tracing::warn!(
                        token = %id.short(),
                        seal_version = stored.seal_version,
                        error = %e,
                        alert = "compaction_unopenable",
                        "the newest seal version does not open; keeping the older ones"
                    );
                    plan.counts.unopenable += 1;
                    continue;
                }
                // The KMS or the store did not answer: the run stops, and
                // continues from its checkpoint when run again.
                Err(e) => return Err(e),
            }
            plan.counts.dropped += u64::try_from(superseded.len()).unwrap_or(u64::MAX);
            plan.unit.compactions.push(Compaction::DropSealVersions {
                id,
                versions: superseded,
            });
        }
        Ok(plan)
    }

    /// Whether a compaction stopped before finishing (it continues when
    /// started again).
    pub async fn compaction_pending(&self) -> Result<bool, VaultError> {
        Ok(self.store.checkpoint(CHECKPOINT).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip() {
        let cp = Checkpoint {
            progress: CompactProgress {
                examined: 1,
                expired: 2,
                purged: 3,
                seal_versions_dropped: 4,
                dead_in_grace: 5,
                unopenable: 8,
                dead_by_ms: 6,
                finished: false,
            },
            after: Some(TokenId::from_bytes([7; 32])),
        };
        let back = Checkpoint::decode(&cp.encode()).unwrap();
        assert_eq!(back.progress, cp.progress);
        assert_eq!(back.after, cp.after);
        assert!(Checkpoint::decode(&cp.encode()[..10]).is_none());
    }
}
