//! The write pipeline: group commit of records, tombstones and audit events.
//!
//! Every state change of the data plane (a new record, a tombstone, an
//! audit event) is a [`Submission`] handed to one committer task per store.
//! The committer takes everything that queued while its previous commit
//! ran, chains the audit events in queue order, and writes it all as one
//! [`WriteBatch`] (on sled one transaction and one flush); only then does it
//! answer each submitter. So:
//! - nothing is acknowledged before it is durable, and a failed commit
//!   fails every submitter of that batch (never retried silently: the
//!   caller sees UNAVAILABLE and decides);
//! - a call's record and its audit event are one submission, hence one
//!   atomic write: fail-closed audit costs no second flush;
//! - a submission is all or nothing: when the store refuses it (a token id
//!   or live fingerprint taken, a token already tombstoned by a writer in
//!   the same batch or before), that submitter alone gets
//!   [`WriteError::Refused`] and the rest of the batch commits without it;
//! - the store chains a batch's events after its last event under its
//!   commit lock (a [`ChainStep`] made by the `chain` module), so positions
//!   never fork, also when replicas on one database each have a committer;
//!   a commit that fails leaves the chain's end to be read again (and
//!   checked against the signed head).
//!
//! Under load one flush acknowledges every call in flight: throughput
//! follows the concurrency instead of the disk's flush latency.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::audit::chain::{ChainedEvent, SignedHead};
use crate::audit::verify::{self, VerifyReport};
use crate::audit::{self, AuditError, AuditEvent, RECOVERY_ACTION};
use crate::secret::DataKey;
use crate::store::{
    AuditAppend, AuditWrite, ChainStep, CommitError, MAX_TAIL_EVENTS, Store, StoreError,
    WrappedKeyRecord, WriteBatch, WriteUnit,
};
use crate::telemetry::{self, names};
use chain::{BatchChain, Part, TailCheck, Tip};

mod chain;

/// Most records and events one commit takes; a larger queue waits for the
/// next commit. Bounds a transaction's size and one batch's latency.
pub const MAX_BATCH_WRITES: usize = 16_384;

/// How long a committer waits idle before it checks its way forward to the
/// log's end (other replicas' events), outside the commit lock, so its next
/// commit checks only a short tail under the lock.
pub const KNOWN_END_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// How often one batch walks forward past a tail too long to check under
/// the commit lock before it fails (UNAVAILABLE).
const TAIL_WALKS: usize = 8;

/// Most pages one walk checks before it gives way (UNAVAILABLE for the
/// batch waiting on it): the walk runs in the committer, so nothing else
/// commits meanwhile.
const WALK_PAGES: usize = 64;

/// Most submissions waiting for the committer. Past it, writers are told
/// UNAVAILABLE at once (overload), instead of queueing without bound.
pub const MAX_QUEUED: usize = 65_536;

/// One caller's writes, committed together or not at all.
#[derive(Debug, Default)]
pub struct Submission {
    /// Records and tombstones.
    pub unit: WriteUnit,
    /// Audit events, chained in this order after the events of earlier
    /// submissions.
    pub events: Vec<AuditEvent>,
    /// Signs the chain head after these events (the audit key, present
    /// while the vault is unsealed). Events without one are chained and
    /// covered by the next signed head.
    pub signer: Option<Arc<DataKey>>,
    /// The signer is new: its root is stored by this submission's unit
    /// ([`WriteUnit::keys`]). A head already in the log was not signed
    /// with it (another replica stored its key first, and this unit will
    /// be refused), so the tail check does not test that head against it.
    pub new_signer: bool,
}

impl Submission {
    fn writes(&self) -> usize {
        self.unit.records.len()
            + self.unit.tombstones.len()
            + self.unit.keys.len()
            + self.events.len()
    }
}

/// A submission was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The store refused this submission (`AlreadyExists`,
    /// `FingerprintTaken`, `NotFound`); nothing of it was written.
    #[error("refused: {0}")]
    Refused(StoreError),
    /// The commit of its batch failed; nothing of the batch was written.
    #[error(transparent)]
    Store(StoreError),
    /// The audit log refuses appends (found tampered or corrupt); nothing
    /// of this submission was written.
    #[error(transparent)]
    Audit(AuditError),
    /// The committer is gone (the process is shutting down).
    #[error("the write pipeline has stopped")]
    Stopped,
    /// [`MAX_QUEUED`] submissions are waiting already.
    #[error("the write queue is full")]
    Overloaded,
}

/// Where a submitter waits for the positions of its events.
type Reply = oneshot::Sender<Result<Vec<u64>, WriteError>>;

enum Job {
    Write {
        submission: Submission,
        reply: Reply,
    },
    Recover {
        event: AuditEvent,
        key: Arc<DataKey>,
        /// The audit key's root, when the recovery makes it (stored in the
        /// same commit as the recovery event and its signed head).
        root: Option<WrappedKeyRecord>,
        reply: oneshot::Sender<Result<(u64, VerifyReport), AuditError>>,
    },
}

/// The handle writers submit through. The committer task starts with the
/// first submission (on the caller's runtime) and ends when the handle is
/// dropped.
#[derive(Debug)]
pub struct Pipeline {
    jobs: mpsc::Sender<Job>,
    idle: Mutex<Option<Committer>>,
    /// Set while the committer refuses appends because the log no longer
    /// continues the end it knows (see [`Self::is_refusing_appends`]).
    latched: Arc<std::sync::atomic::AtomicBool>,
}

impl Pipeline {
    /// A pipeline writing to `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (jobs, queue) = mpsc::channel(MAX_QUEUED);
        let latched = Arc::new(std::sync::atomic::AtomicBool::new(false));
        Self {
            jobs,
            idle: Mutex::new(Some(Committer {
                store,
                queue,
                tip: None,
                deferred: None,
                latched: Arc::clone(&latched),
            })),
            latched,
        }
    }

    fn send(&self, job: Job) -> Result<(), WriteError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(committer) = idle {
            tokio::spawn(committer.run());
        }
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => WriteError::Stopped,
        })
    }

    /// Whether the committer refuses audit appends because the log was cut
    /// or rewritten behind it; health reports it, and `recover` ends it.
    pub fn is_refusing_appends(&self) -> bool {
        self.latched.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the committer still runs (or has not been needed yet): a
    /// committer that died makes every write fail, which health reports.
    pub fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Commits `submission` with whatever else is queued; returns the
    /// positions of its audit events once durable.
    pub async fn submit(&self, submission: Submission) -> Result<Vec<u64>, WriteError> {
        let audited = !submission.events.is_empty();
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.send(Job::Write { submission, reply })?;
        let result = answer.await.map_err(|_| WriteError::Stopped)?;
        if audited && result.is_ok() {
            metrics::histogram!(names::AUDIT_APPEND_SECONDS)
                .record(started.elapsed().as_secs_f64());
        }
        result
    }

    /// The audited way out of a log found tampered; see
    /// [`crate::audit::AuditLog::recover`]. Runs in the committer, between
    /// batches, so no append races it.
    pub async fn recover(
        &self,
        event: AuditEvent,
        key: Arc<DataKey>,
        root: Option<WrappedKeyRecord>,
    ) -> Result<(u64, VerifyReport), AuditError> {
        let (reply, answer) = oneshot::channel();
        let stopped =
            || AuditError::Store(StoreError::Unavailable("write pipeline stopped".into()));
        self.send(Job::Recover {
            event,
            key,
            root,
            reply,
        })
        .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[derive(Debug)]
struct Committer {
    store: Arc<dyn Store>,
    queue: mpsc::Receiver<Job>,
    /// The chain's end when known; `None` after a failed commit or before
    /// the first event, so it is read (and the head checked) again.
    tip: Option<Tip>,
    /// A job taken from the queue that belongs to the next round.
    deferred: Option<Job>,
    /// See [`Pipeline::is_refusing_appends`].
    latched: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Write { .. } => "Job::Write",
            Self::Recover { .. } => "Job::Recover",
        })
    }
}

impl Committer {
    async fn run(mut self) {
        loop {
            let first = match self.deferred.take() {
                Some(job) => job,
                None => match tokio::time::timeout(KNOWN_END_REFRESH, self.queue.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) => return,
                    Err(_) => {
                        self.refresh_known_end().await;
                        continue;
                    }
                },
            };
            match first {
                Job::Recover {
                    event,
                    key,
                    root,
                    reply,
                } => {
                    let _ = reply.send(self.recover(event, &key, root).await);
                }
                Job::Write { submission, reply } => {
                    let batch = self.gather(submission, reply);
                    self.commit(batch).await;
                }
            }
        }
    }

    /// The first submission plus everything queued behind it, up to
    /// [`MAX_BATCH_WRITES`] or a recovery.
    fn gather(&mut self, first: Submission, reply: Reply) -> Vec<(Submission, Reply)> {
        let mut writes = first.writes();
        let mut batch = vec![(first, reply)];
        while writes < MAX_BATCH_WRITES {
            match self.queue.try_recv() {
                Ok(Job::Write { submission, reply }) => {
                    writes += submission.writes();
                    batch.push((submission, reply));
                }
                Ok(recover) => {
                    self.deferred = Some(recover);
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// The chain's end, read from the store (and the head checked) when
    /// not known.
    async fn tip(&mut self) -> Result<Tip, AuditError> {
        if let Some(tip) = self.tip {
            return Ok(tip);
        }
        let (next_seq, hash) = audit::checked_end(self.store.as_ref()).await?;
        let tip = Tip { next_seq, hash };
        self.tip = Some(tip);
        Ok(tip)
    }

    async fn commit(&mut self, submissions: Vec<(Submission, Reply)>) {
        let has_events = submissions.iter().any(|(s, _)| !s.events.is_empty());
        let tip = if has_events {
            match self.tip().await {
                Ok(tip) => Some(tip),
                Err(e) => {
                    // Appends are refused; writes without events go on.
                    let mut rest = Vec::new();
                    for (submission, reply) in submissions {
                        if submission.events.is_empty() {
                            rest.push((submission, reply));
                        } else {
                            let _ = reply.send(Err(WriteError::Audit(e.clone())));
                        }
                    }
                    return Box::pin(self.commit(rest)).await;
                }
            }
        } else {
            None
        };
        let mut units = Vec::with_capacity(submissions.len());
        let mut parts = Vec::with_capacity(submissions.len());
        let mut replies = Vec::with_capacity(submissions.len());
        for (submission, reply) in submissions {
            units.push(submission.unit);
            parts.push(Part {
                events: submission.events,
                signer: submission.signer,
                new_signer: submission.new_signer,
            });
            replies.push(reply);
        }
        let mut refused = Vec::new();
        self.write(tip, units, parts, replies, &mut refused).await;
        // Refused writers hear last, once the rest of their batch is
        // committed (or failed): a refused writer then reads the record
        // that beat it. Told first, it read the store before that record
        // was written and found nothing it had lost to.
        for (reply, error) in refused {
            let _ = reply.send(Err(WriteError::Refused(error)));
        }
    }

    /// Commits `units` with their events (`parts`, chained by the store
    /// after the end `tip` or, when replicas wrote since, after theirs); a
    /// refused unit leaves the batch (its answer goes to `refused`) and the
    /// rest is committed again.
    async fn write(
        &mut self,
        mut tip: Option<Tip>,
        mut units: Vec<WriteUnit>,
        mut parts: Vec<Part>,
        mut replies: Vec<Reply>,
        refused: &mut Vec<(Reply, StoreError)>,
    ) {
        let mut walks = 0;
        loop {
            if replies.is_empty() {
                return;
            }
            let chain =
                tip.map(|known| Arc::new(BatchChain::new(std::mem::take(&mut parts), known)));
            let audit = match &chain {
                Some(chain) => {
                    let step: Arc<dyn ChainStep> = chain.clone();
                    AuditWrite::Chained(step)
                }
                None => AuditWrite::Nothing,
            };
            let writes = units.len();
            let batch = Arc::new(WriteBatch { units, audit });
            let started = Instant::now();
            let outcome = self.store.commit(Arc::clone(&batch)).await;
            metrics::histogram!(names::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::histogram!(names::COMMIT_ITEMS).record(telemetry::count(writes));
            // The commit returned, so the store holds no copy.
            let Ok(batch) = Arc::try_unwrap(batch) else {
                return fail_all(replies, &StoreError::Damaged("batch still shared"));
            };
            units = batch.units;
            let placed = chain.as_ref().and_then(|c| c.placed());
            match outcome {
                Ok(()) => {
                    let positions = match (&chain, placed) {
                        (Some(chain), Some(placed)) => {
                            self.tip = Some(placed.end);
                            chain.positions(placed.from)
                        }
                        (Some(_), None) => {
                            // Committed without chaining: the store broke
                            // its contract; read the end again.
                            self.tip = None;
                            return fail_all(
                                replies,
                                &StoreError::Damaged("audit events not chained"),
                            );
                        }
                        (None, _) => vec![Vec::new(); replies.len()],
                    };
                    for (reply, positions) in replies.into_iter().zip(positions) {
                        let _ = reply.send(Ok(positions));
                    }
                    return;
                }
                Err(CommitError::Refused { unit, error }) if unit < replies.len() => {
                    refused.push((replies.remove(unit), error));
                    units.remove(unit);
                    if let Some(chain) = &chain {
                        parts = chain.parts().to_vec();
                    }
                    if unit < parts.len() {
                        parts.remove(unit);
                    }
                    if parts.iter().all(|p| p.events.is_empty()) {
                        tip = None;
                    }
                }
                Err(CommitError::AuditRewound) => return self.latch(tip, replies),
                Err(CommitError::TailTooLong) if walks < TAIL_WALKS => {
                    walks += 1;
                    if let Some(chain) = &chain {
                        parts = chain.parts().to_vec();
                    }
                    let Some(known) = tip else {
                        return fail_all(replies, &StoreError::Damaged("a tail without events"));
                    };
                    match self.walk(known).await {
                        Ok(end) => {
                            tip = Some(end);
                            self.tip = Some(end);
                        }
                        Err(CommitError::AuditRewound) => return self.latch(tip, replies),
                        // Only read: the known end still holds.
                        Err(e) => return fail_all(replies, &e.into_store()),
                    }
                }
                // Nothing written, and the known end still holds.
                Err(CommitError::TailTooLong) => {
                    return fail_all(replies, &CommitError::TailTooLong.into_store());
                }
                Err(e) => {
                    // The store failed: read the end again next time.
                    metrics::counter!(names::COMMIT_FAILURES).increment(1);
                    self.tip = None;
                    return fail_all(replies, &e.into_store());
                }
            }
        }
    }

    /// Refuses `replies` and every later append: the log no longer
    /// continues the end this committer knows (`known`): cut or rewritten
    /// behind its back (an older head copied back can make that look
    /// intact to a fresh read). The known end stays until an operator
    /// recovers the log (`recover`, which runs here).
    fn latch(&mut self, known: Option<Tip>, replies: Vec<Reply>) {
        tracing::error!(
            alert = "audit_tampered",
            "the audit log does not continue the end this replica wrote or read; \
             appends refused until `tessera audit recover` on this replica"
        );
        self.tip = known;
        self.latched
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for reply in replies {
            let _ = reply.send(Err(WriteError::Audit(AuditError::Tampered)));
        }
    }

    /// Checks the log forward from `known`, outside the commit lock, a page
    /// at a time, to its current end; returns that end. The head is read
    /// first: another replica committing meanwhile only moves the end past
    /// it.
    async fn walk(&self, mut known: Tip) -> Result<Tip, CommitError> {
        let head = self.store.audit_head().await?;
        for _ in 0..WALK_PAGES {
            let from = known.next_seq.saturating_sub(1);
            let tail = self.store.audit_records(from, MAX_TAIL_EVENTS).await?;
            let full = tail.len() >= MAX_TAIL_EVENTS;
            let check = TailCheck {
                head: head.as_deref(),
                key: None,
                last_page: !full,
            };
            known = chain::check_tail(known, &tail, check)?;
            if !full {
                return Ok(known);
            }
        }
        // Other replicas write faster than this one reads: give way.
        Err(CommitError::TailTooLong)
    }

    /// While idle: moves the known end forward past other replicas'
    /// events, checked, so the next commit's tail is short.
    async fn refresh_known_end(&mut self) {
        let Some(known) = self.tip else {
            return;
        };
        if self.latched.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match self.walk(known).await {
            Ok(end) => self.tip = Some(end),
            Err(CommitError::AuditRewound) => self.latch(Some(known), Vec::new()),
            // The store did not answer: the known end still holds (the walk
            // only reads), and a fresh read could be fooled by an older
            // head copied back.
            Err(e) => tracing::warn!(error = %e, "audit log end not refreshed; retrying"),
        }
    }

    /// Appends a recovery event after a log that does not verify, signed,
    /// so appends resume after it; see [`crate::audit::AuditLog::recover`].
    async fn recover(
        &mut self,
        mut event: AuditEvent,
        key: &DataKey,
        root: Option<WrappedKeyRecord>,
    ) -> Result<(u64, VerifyReport), AuditError> {
        let report = verify::verify(self.store.as_ref(), Some(key)).await?;
        let latched = self.latched.load(std::sync::atomic::Ordering::SeqCst);
        // A log that verifies is recovered only on a replica that refuses
        // appends: its events were cut or rewritten behind it (or the
        // database lost commits), which the log itself may not show.
        if report.ok() && !latched {
            return Err(AuditError::NothingToRecover);
        }
        event.action = RECOVERY_ACTION.to_owned();
        let problem = if report.ok() {
            "events this replica wrote or read are gone or changed"
        } else {
            report.problem.as_str()
        };
        event.resource = format!(
            "{} first_bad:{} problem:{}",
            event.resource,
            report.first_bad.unwrap_or(report.events),
            problem
        )
        .trim_start()
        .to_owned();
        // After the last stored record, even one that no longer decodes
        // (its hash is then unknown: the recovery links to zeros, and
        // verification keeps reporting the damage before it).
        let (next_seq, last_hash) = match self.store.last_audit_record().await? {
            Some((seq, bytes)) => (
                seq.saturating_add(1),
                ChainedEvent::decode(&bytes).map_or([0; 32], |last| last.hash),
            ),
            None => (0, [0; 32]),
        };
        let chained = ChainedEvent::new(next_seq, last_hash, event);
        let head = SignedHead::sign(key, chained.seq, chained.hash).encode();
        let batch = WriteBatch {
            units: vec![WriteUnit {
                keys: root.into_iter().collect(),
                ..WriteUnit::default()
            }],
            audit: AuditAppend {
                from: chained.seq,
                events: vec![chained.encode()],
                head: Some(head),
            }
            .into(),
        };
        self.store
            .commit(Arc::new(batch))
            .await
            .map_err(CommitError::into_store)?;
        self.tip = Some(Tip {
            next_seq: chained.seq.saturating_add(1),
            hash: chained.hash,
        });
        self.latched
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok((chained.seq, report))
    }
}

fn fail_all(replies: Vec<Reply>, error: &StoreError) {
    for reply in replies {
        let _ = reply.send(Err(WriteError::Store(error.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fjall::FjallStore;
    use crate::store::record::tests::sample;

    fn writing(record: &crate::store::SealedRecord) -> Submission {
        Submission {
            unit: WriteUnit {
                records: vec![record.clone()],
                ..WriteUnit::default()
            },
            ..Submission::default()
        }
    }

    /// Two writers of one token id in one commit: the second is refused,
    /// and when it hears so, the first one's record is in the store. Told
    /// before the first was written (fjall commits on another thread), a
    /// refused batch found nothing it had lost and retried in vain.
    #[tokio::test]
    async fn a_refused_writer_hears_after_the_writer_that_beat_it_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FjallStore::open(dir.path(), 8 << 20).unwrap());
        let pipeline = Pipeline::new(Arc::clone(&store));
        let record = sample();
        let (first, (second, seen)) = tokio::join!(pipeline.submit(writing(&record)), async {
            let refused = pipeline.submit(writing(&record)).await;
            let seen = store.get(&record.token_id).await.unwrap().is_some();
            (refused, seen)
        });
        first.unwrap();
        assert!(
            matches!(second, Err(WriteError::Refused(StoreError::AlreadyExists))),
            "{second:?}"
        );
        assert!(seen, "refused before the winner was stored");
    }
}
