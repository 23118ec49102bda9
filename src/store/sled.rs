//! The embedded store: sled, one node, the default for `serve --dev`.
//!
//! Trees: `records` (token id → record), `tombstones` (token id →
//! tombstone), `fingerprints` (tenant ‖ 0 ‖ fingerprint → token id),
//! `tenant_records` (tenant ‖ 0 ‖ token id → empty, for paging a tenant),
//! `sealed_versions` (token id ‖ seal version → re-sealed PAN),
//! `latest_seal` (token id → newest seal version), `checkpoints` (job name →
//! progress), `keys` (tenant ‖ 0 ‖ purpose ‖ version → wrapped key), `audit`
//! (first position → the commit's chained events, a [`segment`]) and
//! `audit_meta` (the signed head).
//!
//! A [`WriteBatch`] is one sled transaction over the record and audit trees
//! followed by one flush, both on tokio's blocking pool: the write
//! pipeline's committer is the only caller under load, so one fsync
//! acknowledges every writer of the batch (group commit). Reads are short
//! in-memory page lookups and run on the caller's task.
//!
//! **sled's flush is not durable on its own.** sled 0.34 makes its log
//! "stable" with `sync_file_range`, which writes the data pages but neither
//! the file's size and block map (the journal) nor the disk's cache, and it
//! writes values too large for a log segment to `blobs/` without any sync;
//! only its background thread fsyncs, every 500 ms. A disk that failed
//! (turned read-only by an ext4 error) lost writes acknowledged up to
//! 30 ms before (`tests/disk_faults.rs`): a process crash cannot show it,
//! the page cache survives that, but a power cut or kernel crash would.
//! So every flush ends with `fdatasync` of the log, `syncfs` of the store's
//! file system (the blobs) and a check that it is still writable
//! (`Durable`), paid once per group commit (BENCHMARKS.md, History).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::domain::key::KeyContext;
use crate::domain::{Fingerprint, TenantId, TokenId};
use crate::store::compact::{self, Held};
use crate::store::prepared::PreparedUnit;
use crate::store::record::{decode_u32, fingerprint_key, tenant_prefix, version_key};
use crate::store::segment;
use crate::store::state::{self, Expect, StateChange, StateEntry, StateKind, StateStore, layout};
use crate::store::{
    AuditAppend, AuditStore, CommitError, Compaction, Engine, JobStore, KeyStore, MAX_TAIL_EVENTS,
    RecordStore, SealedRecord, SealedVersion, StoreError, StoredRecord, Tombstone,
    WrappedKeyRecord, WriteBatch,
};

/// Makes the writes sled has flushed durable: `syncfs` of the file system
/// holding the store (see the module docs), through a handle on its
/// directory.
#[derive(Debug)]
struct Durable {
    dir: std::fs::File,
    /// sled's log file (`db` in its directory).
    log: std::fs::File,
}

impl Durable {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let open = |path: &Path| {
            std::fs::File::open(path).map_err(|e| StoreError::Unavailable(e.to_string()))
        };
        Ok(Self {
            dir: open(dir)?,
            log: open(&dir.join("db"))?,
        })
    }

    /// `fdatasync` of the log, `syncfs` for the blobs, then a check that
    /// the file system is still writable. The log's own sync is the one
    /// that reports a write the disk lost (an aborted ext4 journal) as an
    /// error; `syncfs` of a file system already turned read-only does
    /// nothing and reports success, so a commit written just before an
    /// ext4 error would be acknowledged without being durable.
    #[cfg(target_os = "linux")]
    fn sync(&self) -> std::io::Result<()> {
        self.log.sync_data()?;
        rustix::fs::syncfs(&self.dir)?;
        let fs = rustix::fs::fstatvfs(&self.dir)?;
        if fs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(std::io::Error::from(rustix::io::Errno::ROFS));
        }
        Ok(())
    }

    /// Elsewhere: the log and the store's directory only; Tessera is
    /// built and tested for Linux.
    #[cfg(not(target_os = "linux"))]
    fn sync(&self) -> std::io::Result<()> {
        self.log.sync_data()?;
        self.dir.sync_all()
    }
}

/// A sled-backed store.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    records: sled::Tree,
    tombstones: sled::Tree,
    fingerprints: sled::Tree,
    tenant_records: sled::Tree,
    sealed_versions: sled::Tree,
    latest_seal: sled::Tree,
    checkpoints: sled::Tree,
    keys: sled::Tree,
    audit: sled::Tree,
    audit_meta: sled::Tree,
    /// Shared entries and the change counter ([`state::layout`]).
    state: sled::Tree,
    /// Change number → entry key.
    state_log: sled::Tree,
    /// Makes what sled wrote durable.
    durable: Arc<Durable>,
    /// A benchmark aid: added after every commit's flush, as a slow disk
    /// would (`store.simulated_flush_delay_us`, dev only).
    flush_delay: Option<std::time::Duration>,
    /// Set when a flush failed: writes it was to make durable may already
    /// be visible in memory, and may or may not reach the disk. Like
    /// PostgreSQL after a failed fsync, the store then refuses every call
    /// until the process restarts and recovers from what the disk holds.
    poisoned: Arc<std::sync::atomic::AtomicBool>,
    /// Held from reading the audit log's end to writing after it, so
    /// commits never race for a position (one committer per process is the
    /// usual case; the lock makes it a rule).
    audit_lock: Arc<std::sync::Mutex<()>>,
}

/// Maps a sled error: corruption sled itself detects (checksums) is
/// `Damaged`, never retryable; I/O and the rest may pass (`Unavailable`).
fn unavailable(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Damaged("sled reported corruption"),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn flatten(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => unavailable(e),
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with sled's default cache.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store in `dir`, keeping at most `cache_bytes`
    /// of pages in memory.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(unavailable)?;
        let tree = |name: &str| db.open_tree(name).map_err(unavailable);
        let durable = Arc::new(Durable::open(dir)?);
        Ok(Self {
            durable,
            records: tree("records")?,
            tombstones: tree("tombstones")?,
            fingerprints: tree("fingerprints")?,
            tenant_records: tree("tenant_records")?,
            sealed_versions: tree("sealed_versions")?,
            latest_seal: tree("latest_seal")?,
            checkpoints: tree("checkpoints")?,
            audit: tree("audit")?,
            audit_meta: tree("audit_meta")?,
            state: tree("state")?,
            state_log: tree("state_log")?,
            keys: tree("keys")?,
            flush_delay: None,
            poisoned: Arc::default(),
            audit_lock: Arc::default(),
            db,
        })
    }

    /// The same store, with every commit's flush taking `delay` longer:
    /// group commit on a slow disk, shown on a fast one.
    pub fn with_simulated_flush_delay(self, delay: Option<std::time::Duration>) -> Self {
        Self {
            flush_delay: delay,
            ..self
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Not `flush_async`: it runs on sled's own small thread pool, and
        // under concurrent transactions those threads all queued behind a
        // transaction's write lock while the flush holding the read lock
        // waited for a log write that needed a pool thread: a deadlock
        // (reproduced with `tessera bench`, 64 writes in flight). A
        // blocking flush on tokio's blocking pool leaves sled's pool free.
        self.healthy()?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Flushes; a failure poisons the store (see `poisoned`).
    fn flush_blocking(&self) -> Result<(), StoreError> {
        let flushed = self
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| e.to_string())
            .and_then(|()| self.durable.sync().map_err(|e| e.to_string()));
        flushed.map_err(|e| {
            self.poisoned
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::error!(error = %e, alert = "store_flush_failed", "a flush failed: the store refuses every call until the server restarts");
            StoreError::Unavailable(e)
        })
    }

    /// Refuses every call once a flush failed.
    fn healthy(&self) -> Result<(), StoreError> {
        if self.poisoned.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "a flush failed earlier; restart the server to recover the store".into(),
            ));
        }
        Ok(())
    }

    /// Checks and writes a batch in one transaction (see [`Engine::commit`]).
    /// Encoding happens before the transaction, whose closure sled may run
    /// more than once.
    fn apply(&self, batch: &WriteBatch) -> Result<(), CommitError> {
        let units: Vec<PreparedUnit> = batch.units.iter().map(PreparedUnit::new).collect();
        // The end read here stays the end until the transaction ends.
        let _audit = self
            .audit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let audit = match batch.audit.tail_from() {
            Some(from) => {
                let tail = self
                    .records_from(from, MAX_TAIL_EVENTS)
                    .map_err(CommitError::Batch)?;
                let head = self.head().map_err(CommitError::Batch)?;
                batch.audit.place(&tail, head.as_deref())?.into_owned()
            }
            None => AuditAppend::default(),
        };
        let segment = segment::encode(&audit.events);
        (
            &self.records,
            &self.tombstones,
            &self.fingerprints,
            &self.tenant_records,
            &self.audit,
            &self.audit_meta,
            &self.keys,
            &self.sealed_versions,
            &self.latest_seal,
        )
            .transaction(
                |(
                    records,
                    tombstones,
                    fingerprints,
                    tenant_records,
                    events,
                    meta,
                    keys,
                    versions,
                    latest,
                )| {
                    for (index, (unit, raw)) in units.iter().zip(&batch.units).enumerate() {
                        let refuse = |error| {
                            ConflictableTransactionError::Abort(CommitError::Refused {
                                unit: index,
                                error,
                            })
                        };
                        for (k, bytes) in &unit.keys {
                            if keys.get(k)?.is_some() {
                                return Err(refuse(StoreError::AlreadyExists));
                            }
                            keys.insert(k.as_slice(), bytes.as_slice())?;
                        }
                        for record in &unit.records {
                            if records.get(record.id.as_bytes())?.is_some() {
                                return Err(refuse(StoreError::AlreadyExists));
                            }
                            if let Some(key) = &record.fingerprint_key {
                                if let Some(holder) = fingerprints.get(key)?
                                    && tombstones.get(&holder)?.is_none()
                                {
                                    let holder = TokenId::from_slice(&holder)
                                        .ok_or(StoreError::Damaged("corrupt fingerprint index"))
                                        .map_err(batch_abort)?;
                                    return Err(refuse(StoreError::FingerprintTaken(holder)));
                                }
                                fingerprints.insert(key.as_slice(), record.id.as_bytes())?;
                            }
                            records.insert(record.id.as_bytes(), record.bytes.as_slice())?;
                            tenant_records.insert(record.tenant_key.as_slice(), b"".as_slice())?;
                        }
                        for (id, tombstone) in &unit.tombstones {
                            match records.get(id.as_bytes())? {
                                None => return Err(refuse(StoreError::NotFound)),
                                Some(bytes) if compact::is_purged(&bytes) => {
                                    return Err(refuse(StoreError::AlreadyExists));
                                }
                                Some(_) => {}
                            }
                            if tombstones.get(id.as_bytes())?.is_some() {
                                return Err(refuse(StoreError::AlreadyExists));
                            }
                            tombstones.insert(id.as_bytes(), tombstone.as_slice())?;
                        }
                        let trees = RecordTrees {
                            records,
                            tombstones,
                            fingerprints,
                            tenant_records,
                            versions,
                            latest,
                        };
                        for compaction in &raw.compactions {
                            trees.compact(compaction).map_err(|e| match e {
                                Compacted::Refused(error) => refuse(error),
                                Compacted::Abort(e) => e,
                            })?;
                        }
                    }
                    if !audit.events.is_empty() {
                        // Never over another commit's segment.
                        if events.get(audit.from.to_be_bytes())?.is_some() {
                            return Err(batch_abort(StoreError::AlreadyExists));
                        }
                        events.insert(&audit.from.to_be_bytes(), segment.as_slice())?;
                    }
                    if let Some(head) = &audit.head {
                        meta.insert(AUDIT_HEAD, head.as_slice())?;
                    }
                    Ok(())
                },
            )
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => CommitError::Batch(unavailable(e)),
            })
    }

    /// The last stored audit event and its position.
    fn last_event(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.healthy()?;
        let Some((key, value)) = self.audit.last().map_err(unavailable)? else {
            return Ok(None);
        };
        Ok(segment::events_at(segment::position(&key)?, &value).pop())
    }

    fn stored(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError> {
        self.healthy()?;
        match self.records.get(id.as_bytes()).map_err(unavailable)? {
            Some(bytes) => self.stored_with(id, &bytes),
            None => Ok(None),
        }
    }

    /// The record whose stored bytes are `bytes`, with its newest seal
    /// version and tombstone; `None` for a purged record's marker.
    fn stored_with(&self, id: &TokenId, bytes: &[u8]) -> Result<Option<StoredRecord>, StoreError> {
        if compact::is_purged(bytes) {
            return Ok(None);
        }
        let mut record = SealedRecord::decode(bytes)?;
        let seal_version = match self.latest_seal.get(id.as_bytes()).map_err(unavailable)? {
            Some(v) => {
                let version = decode_u32(&v)?;
                let sealed = self
                    .sealed_versions
                    .get(version_key(id, version))
                    .map_err(unavailable)?
                    .ok_or(StoreError::Damaged("missing sealed version"))?;
                record.sealed_pan = sealed.to_vec();
                version
            }
            None => 0,
        };
        let tombstone = self
            .tombstones
            .get(id.as_bytes())
            .map_err(unavailable)?
            .map(|t| Tombstone::decode(&t))
            .transpose()?;
        Ok(Some(StoredRecord {
            record,
            tombstone,
            seal_version,
        }))
    }
}

/// The record trees of a commit's transaction, for its compactions.
struct RecordTrees<'a> {
    records: &'a TransactionalTree,
    tombstones: &'a TransactionalTree,
    fingerprints: &'a TransactionalTree,
    tenant_records: &'a TransactionalTree,
    versions: &'a TransactionalTree,
    latest: &'a TransactionalTree,
}

/// Why a compaction stopped its commit.
enum Compacted {
    /// Its unit broke a rule.
    Refused(StoreError),
    /// The transaction failed (or must retry, sled's conflict).
    Abort(ConflictableTransactionError<CommitError>),
}

impl From<sled::transaction::UnabortableTransactionError> for Compacted {
    fn from(e: sled::transaction::UnabortableTransactionError) -> Self {
        Self::Abort(e.into())
    }
}

impl From<StoreError> for Compacted {
    fn from(e: StoreError) -> Self {
        Self::Abort(batch_abort(e))
    }
}

impl RecordTrees<'_> {
    /// Applies one compaction inside the commit's transaction (rules in
    /// [`compact`]).
    fn compact(&self, compaction: &Compaction) -> Result<(), Compacted> {
        match compaction {
            Compaction::Purge { id, dead_by_ms } => {
                let bytes = self.records.get(id.as_bytes())?;
                let held = match &bytes {
                    None => Held::Nothing,
                    Some(bytes) if compact::is_purged(bytes) => Held::Purged,
                    Some(_) => Held::Record(
                        self.tombstones
                            .get(id.as_bytes())?
                            .map(|t| Tombstone::decode(&t))
                            .transpose()
                            .map_err(StoreError::from)?,
                    ),
                };
                compact::check_purge(held, *dead_by_ms).map_err(Compacted::Refused)?;
                let record = SealedRecord::decode(bytes.as_deref().unwrap_or_default())
                    .map_err(StoreError::from)?;
                if let Some(fp) = &record.fingerprint {
                    let key = fingerprint_key(&record.tenant, fp);
                    if self.fingerprints.get(key.as_slice())?.as_deref() == Some(id.as_bytes()) {
                        self.fingerprints.remove(key.as_slice())?;
                    }
                }
                let mut tenant_key = tenant_prefix(&record.tenant);
                tenant_key.extend_from_slice(id.as_bytes());
                self.tenant_records.remove(tenant_key)?;
                self.tombstones.remove(id.as_bytes())?;
                if let Some(newest) = self.latest.remove(id.as_bytes())? {
                    for version in 1..=decode_u32(&newest)? {
                        self.versions.remove(version_key(id, version))?;
                    }
                }
                self.records.insert(id.as_bytes(), compact::PURGED)?;
            }
            Compaction::DropSealVersions { id, versions } => {
                let held = match self.records.get(id.as_bytes())? {
                    Some(bytes) if compact::is_purged(&bytes) => Held::Purged,
                    None => Held::Nothing,
                    Some(_) => Held::Record(None),
                };
                let newest = match self.latest.get(id.as_bytes())? {
                    Some(v) => decode_u32(&v)?,
                    None => 0,
                };
                let mut stored = std::collections::HashSet::new();
                for version in versions {
                    if self.versions.get(version_key(id, *version))?.is_some() {
                        stored.insert(*version);
                    }
                }
                compact::check_drop(held, versions, newest, |v| stored.contains(&v))
                    .map_err(Compacted::Refused)?;
                for version in versions {
                    self.versions.remove(version_key(id, *version))?;
                }
            }
        }
        Ok(())
    }
}

/// The page cache of [`SledStore::open`]: 64 MiB.
const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Key of the signed chain head in `audit_meta`.
const AUDIT_HEAD: &[u8] = b"head";

fn batch_abort(e: StoreError) -> ConflictableTransactionError<CommitError> {
    ConflictableTransactionError::Abort(CommitError::Batch(e))
}

#[async_trait]
impl RecordStore for SledStore {
    async fn get(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError> {
        self.stored(id)
    }

    async fn find_by_fingerprint(
        &self,
        tenant: &TenantId,
        fingerprint: &Fingerprint,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.healthy()?;
        let key = fingerprint_key(tenant, fingerprint);
        let Some(holder) = self.fingerprints.get(key).map_err(unavailable)? else {
            return Ok(None);
        };
        let id =
            TokenId::from_slice(&holder).ok_or(StoreError::Damaged("corrupt fingerprint index"))?;
        self.stored(&id)
    }

    async fn scan_tenant(
        &self,
        tenant: &TenantId,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.healthy()?;
        let prefix = tenant_prefix(tenant);
        let start = match after {
            Some(id) => {
                let mut k = prefix.clone();
                k.extend_from_slice(id.as_bytes());
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.tenant_records.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(unavailable)?;
            let Some(id_bytes) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let id =
                TokenId::from_slice(id_bytes).ok_or(StoreError::Damaged("corrupt tenant index"))?;
            if let Some(stored) = self.stored(&id)? {
                out.push(stored);
            }
        }
        Ok(out)
    }

    async fn scan_all(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.healthy()?;
        let mut out = Vec::new();
        let range = match after {
            Some(id) => self.records.range((
                std::ops::Bound::Excluded(id.as_bytes().to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => self.records.iter(),
        };
        for item in range {
            if out.len() >= limit {
                break;
            }
            let (key, bytes) = item.map_err(unavailable)?;
            let id = TokenId::from_slice(&key).ok_or(StoreError::Damaged("corrupt record key"))?;
            if let Some(stored) = self.stored_with(&id, &bytes)? {
                out.push(stored);
            }
        }
        Ok(out)
    }

    async fn is_taken(&self, id: &TokenId) -> Result<bool, StoreError> {
        self.healthy()?;
        // A purged record's marker holds its id.
        self.records
            .contains_key(id.as_bytes())
            .map_err(unavailable)
    }

    async fn seal_versions(&self, ids: &[TokenId]) -> Result<Vec<(TokenId, Vec<u32>)>, StoreError> {
        self.healthy()?;
        let mut out = Vec::new();
        for id in ids {
            let versions = self
                .sealed_versions
                .scan_prefix(id.as_bytes())
                .keys()
                .map(|key| {
                    let key = key.map_err(unavailable)?;
                    decode_u32(key.get(id.as_bytes().len()..).unwrap_or_default())
                })
                .collect::<Result<Vec<u32>, StoreError>>()?;
            if !versions.is_empty() {
                out.push((*id, versions));
            }
        }
        Ok(out)
    }

    async fn append_sealed_versions(
        &self,
        items: Vec<SealedVersion>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let key = version_key(&item.id, item.version);
            let outcome = (&self.records, &self.latest_seal, &self.sealed_versions)
                .transaction(|(records, latest, versions)| {
                    match records.get(item.id.as_bytes())? {
                        Some(bytes) if !compact::is_purged(&bytes) => {}
                        _ => return Err(abort(StoreError::NotFound)),
                    }
                    let current = match latest.get(item.id.as_bytes())? {
                        Some(v) => decode_u32(&v).map_err(abort)?,
                        None => 0,
                    };
                    if current.checked_add(1) != Some(item.version) {
                        return Err(abort(StoreError::AlreadyExists));
                    }
                    versions.insert(key.as_slice(), item.sealed_pan.as_slice())?;
                    latest.insert(item.id.as_bytes(), &item.version.to_be_bytes())?;
                    Ok(())
                })
                .map_err(flatten);
            match outcome {
                Err(e @ StoreError::Unavailable(_)) => return Err(e),
                other => outcomes.push(other),
            }
        }
        self.flush().await?;
        Ok(outcomes)
    }
}

#[async_trait]
impl KeyStore for SledStore {
    async fn put_wrapped_key(&self, key: WrappedKeyRecord) -> Result<(), StoreError> {
        let k = WrappedKeyRecord::store_key(&key.context);
        let swapped = self
            .keys
            .compare_and_swap(k, Option::<&[u8]>::None, Some(key.encode()))
            .map_err(unavailable)?;
        if swapped.is_err() {
            return Err(StoreError::AlreadyExists);
        }
        self.flush().await
    }

    async fn wrapped_key(&self, ctx: &KeyContext) -> Result<Option<WrappedKeyRecord>, StoreError> {
        self.keys
            .get(WrappedKeyRecord::store_key(ctx))
            .map_err(unavailable)?
            .map(|b| WrappedKeyRecord::decode(&b).map_err(StoreError::from))
            .transpose()
    }

    async fn wrapped_keys(&self, tenant: &TenantId) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        self.keys
            .scan_prefix(tenant_prefix(tenant))
            .map(|item| {
                let (_, v) = item.map_err(unavailable)?;
                WrappedKeyRecord::decode(&v).map_err(StoreError::from)
            })
            .collect()
    }

    async fn all_wrapped_keys(&self) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        self.keys
            .iter()
            .values()
            .map(|v| WrappedKeyRecord::decode(&v.map_err(unavailable)?).map_err(StoreError::from))
            .collect()
    }

    async fn replace_wrapped_key(
        &self,
        expected: &WrappedKeyRecord,
        new: WrappedKeyRecord,
    ) -> Result<(), StoreError> {
        if new.context != expected.context {
            return Err(StoreError::AlreadyExists);
        }
        let swapped = self
            .keys
            .compare_and_swap(
                WrappedKeyRecord::store_key(&expected.context),
                Some(expected.encode()),
                Some(new.encode()),
            )
            .map_err(unavailable)?;
        match swapped {
            Ok(()) => self.flush().await,
            Err(cas) if cas.current.is_none() => Err(StoreError::NotFound),
            Err(_) => Err(StoreError::AlreadyExists),
        }
    }

    async fn destroy_wrapped_keys(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let mut destroyed = 0;
        for item in self.keys.scan_prefix(tenant_prefix(tenant)).keys() {
            let key = item.map_err(unavailable)?;
            if self.keys.remove(key).map_err(unavailable)?.is_some() {
                destroyed += 1;
            }
        }
        self.flush().await?;
        Ok(destroyed)
    }

    async fn destroy_wrapped_key(&self, ctx: &KeyContext) -> Result<(), StoreError> {
        let removed = self
            .keys
            .remove(WrappedKeyRecord::store_key(ctx))
            .map_err(unavailable)?;
        if removed.is_none() {
            return Err(StoreError::NotFound);
        }
        self.flush().await
    }
}

#[async_trait]
impl AuditStore for SledStore {
    async fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.records_from(from, limit)
    }

    async fn last_audit_record(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.last_event()
    }

    async fn audit_head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.head()
    }
}

impl SledStore {
    /// Audit records from position `from`, at most `limit`, in order.
    fn records_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.healthy()?;
        // The segment holding `from` starts at or before it.
        let start = match self
            .audit
            .range(..=from.to_be_bytes())
            .next_back()
            .transpose()
            .map_err(unavailable)?
        {
            Some((key, _)) => key.to_vec(),
            None => from.to_be_bytes().to_vec(),
        };
        let segments = self
            .audit
            .range(start..)
            .map(|item| item.map_err(unavailable));
        segment::collect_from(from, limit, segments)
    }

    /// The signed chain head.
    fn head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.healthy()?;
        Ok(self
            .audit_meta
            .get(AUDIT_HEAD)
            .map_err(unavailable)?
            .map(|v| v.to_vec()))
    }
}

#[async_trait]
impl JobStore for SledStore {
    async fn put_checkpoint(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.checkpoints.insert(name, value).map_err(unavailable)?;
        self.flush().await
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .checkpoints
            .get(name)
            .map_err(unavailable)?
            .map(|v| v.to_vec()))
    }

    async fn checkpoints(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.checkpoints
            .scan_prefix(prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(unavailable)?;
                String::from_utf8(k.to_vec())
                    .map_err(|_| StoreError::Damaged("corrupt checkpoint name"))
            })
            .collect()
    }

    async fn delete_checkpoint(&self, name: &str) -> Result<(), StoreError> {
        self.checkpoints.remove(name).map_err(unavailable)?;
        self.flush().await
    }
}

#[async_trait]
impl StateStore for SledStore {
    async fn state(&self, kind: StateKind, key: &str) -> Result<Option<StateEntry>, StoreError> {
        self.healthy()?;
        let Some(bytes) = self
            .state
            .get(layout::entry_key(kind, key))
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let (version, value) = layout::decode_value(&bytes)?;
        Ok(value.map(|value| StateEntry {
            version,
            value: value.to_vec(),
        }))
    }

    async fn states(&self, kind: StateKind) -> Result<Vec<(String, StateEntry)>, StoreError> {
        self.healthy()?;
        let mut out = Vec::new();
        for item in self.state.scan_prefix(layout::kind_prefix(kind)) {
            let (key, bytes) = item.map_err(unavailable)?;
            out.extend(layout::live(&key, &bytes)?);
        }
        Ok(out)
    }

    async fn put_state(
        &self,
        kind: StateKind,
        key: &str,
        value: Option<Vec<u8>>,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        state::check_key(key)?;
        self.healthy()?;
        let entry = layout::entry_key(kind, key);
        let version = (&self.state, &self.state_log)
            .transaction(|(state, log)| {
                let old = state.get(&entry)?;
                let counter = state.get(layout::COUNTER)?;
                let put =
                    layout::plan_put(old.as_deref(), counter.as_deref(), expect).map_err(abort)?;
                let version = put.version;
                if let Some(previous) = put.replaced {
                    log.remove(&previous.to_be_bytes())?;
                }
                state.insert(layout::COUNTER, &version.to_be_bytes())?;
                state.insert(
                    entry.as_slice(),
                    layout::encode_value(version, value.as_deref()),
                )?;
                log.insert(&version.to_be_bytes(), entry.as_slice())?;
                Ok(version)
            })
            .map_err(flatten)?;
        self.flush().await?;
        Ok(version)
    }

    async fn state_changes(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<StateChange>, StoreError> {
        self.healthy()?;
        let mut out = Vec::new();
        let from = since.saturating_add(1).to_be_bytes();
        for item in self.state_log.range(from..).take(limit) {
            let (number, entry) = item.map_err(unavailable)?;
            let current = self.state.get(&entry).map_err(unavailable)?;
            out.push(layout::change(&number, &entry, current.as_deref())?);
        }
        Ok(out)
    }
}

#[async_trait]
impl Engine for SledStore {
    async fn commit(&self, batch: Arc<WriteBatch>) -> Result<(), CommitError> {
        // The transaction and the flush may block on disk: both run on the
        // blocking pool, never on an async worker.
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.healthy()?;
            store.apply(&batch)?;
            store.flush_blocking()?;
            if let Some(delay) = store.flush_delay {
                std::thread::sleep(delay);
            }
            Ok(())
        })
        .await
        .map_err(|e| CommitError::Batch(StoreError::Unavailable(e.to_string())))?
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.flush().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.healthy()?;
        // A point read touches the page cache and the tree machinery without
        // scanning; it fails when the database is broken.
        self.keys.get(b"\xffping").map(|_| ()).map_err(unavailable)
    }
}

#[cfg(test)]
impl SledStore {
    /// What an attacker with the store's files can do: delete the signed
    /// head (for tests of the vault's refusals).
    pub(crate) fn delete_audit_head_for_test(&self) {
        let _ = self.audit_meta.remove(AUDIT_HEAD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding M2: a segment whose framing was damaged made reading
    /// the log fail, so verification could not name the position and
    /// recovery could not run; it reads back whole, at its position.
    #[tokio::test]
    async fn a_damaged_segment_reads_back_whole_at_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        for from in [0, 3] {
            let batch = WriteBatch {
                units: Vec::new(),
                audit: AuditAppend {
                    from,
                    events: vec![vec![1, 1], vec![1, 2], vec![1, 3]],
                    head: None,
                }
                .into(),
            };
            store.commit(Arc::new(batch)).await.unwrap();
        }
        // The forger raises the first segment's event count.
        let mut damaged = store
            .audit
            .get(0u64.to_be_bytes())
            .unwrap()
            .unwrap()
            .to_vec();
        damaged[4] = 9;
        store
            .audit
            .insert(0u64.to_be_bytes(), damaged.clone())
            .unwrap();
        let records = store.audit_records(0, 10).await.unwrap();
        assert_eq!(records[0], (0, damaged));
        let positions: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(positions, vec![0, 3, 4, 5]);
        // Damage at the end is read whole too, so the chain's end is known.
        let mut last = store
            .audit
            .get(3u64.to_be_bytes())
            .unwrap()
            .unwrap()
            .to_vec();
        last.truncate(7);
        store
            .audit
            .insert(3u64.to_be_bytes(), last.clone())
            .unwrap();
        assert_eq!(store.last_audit_record().await.unwrap(), Some((3, last)));
    }

    /// The store chains a batch after the end it finds, but the committer
    /// never lets it chain after an end before the one it last committed:
    /// a log truncated while the vault runs is reported tampered, not
    /// signed over. Without that check the next head would be valid again
    /// and the truncation invisible.
    #[tokio::test]
    async fn a_log_truncated_under_a_running_committer_is_not_signed_over() {
        use crate::audit::{AuditError, AuditEvent, AuditLog};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        let shared: Arc<dyn crate::store::Store> = Arc::new(store.clone());
        let pipeline = Arc::new(crate::pipeline::Pipeline::new(Arc::clone(&shared)));
        let log = AuditLog::new(Arc::clone(&shared), pipeline);
        let key = Arc::new(crate::secret::DataKey::from_bytes([3; 32]));
        let event = |n: u64| AuditEvent {
            time_ms: n,
            action: "Detokenize".into(),
            ..AuditEvent::default()
        };
        for n in 0..3 {
            assert_eq!(log.record(event(n), Some(key.clone())).await.unwrap(), n);
        }
        // Each event was its own commit, so its own segment: drop the last.
        store.audit.remove(2u64.to_be_bytes()).unwrap();
        let err = log.record(event(3), Some(key.clone())).await.unwrap_err();
        assert!(matches!(err, AuditError::Tampered), "{err}");
        assert_eq!(store.last_audit_record().await.unwrap().unwrap().0, 1);
        assert!(!log.verify(Some(&key)).await.unwrap().ok());
    }

    /// A log and its committer over `store`, as one replica has.
    fn replica_log(store: &SledStore) -> crate::audit::AuditLog {
        let shared: Arc<dyn crate::store::Store> = Arc::new(store.clone());
        let pipeline = Arc::new(crate::pipeline::Pipeline::new(Arc::clone(&shared)));
        crate::audit::AuditLog::new(shared, pipeline)
    }

    fn detokenized(n: u64) -> crate::audit::AuditEvent {
        crate::audit::AuditEvent {
            time_ms: n,
            action: "Detokenize".into(),
            ..crate::audit::AuditEvent::default()
        }
    }

    /// Review finding: the chain step took any log *longer* than the end
    /// it knew. Someone with write access to the store rewrote the last
    /// known event (its hash recomputed, the chain hash being unkeyed) and
    /// appended one more; the next commit signed a head over the forgery.
    /// The step now checks that the tail continues the known end.
    #[tokio::test]
    async fn a_rewritten_and_extended_log_is_not_signed_over() {
        use crate::audit::AuditError;
        use crate::audit::chain::ChainedEvent;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        let log = replica_log(&store);
        let key = Arc::new(crate::secret::DataKey::from_bytes([3; 32]));
        for n in 0..3 {
            log.record(detokenized(n), Some(key.clone())).await.unwrap();
        }
        let (_, first) = store.records_from(1, 1).unwrap().pop().unwrap();
        let prev = ChainedEvent::decode(&first).unwrap().hash;
        let mut forged = detokenized(99);
        forged.action = "Nothing to see".into();
        let two = ChainedEvent::new(2, prev, forged);
        let three = ChainedEvent::new(3, two.hash, detokenized(100));
        store.audit.remove(2u64.to_be_bytes()).unwrap();
        store
            .audit
            .insert(
                2u64.to_be_bytes(),
                segment::encode(&[two.encode(), three.encode()]),
            )
            .unwrap();
        let err = log
            .record(detokenized(4), Some(key.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Tampered), "{err}");
        assert_eq!(
            store.last_event().unwrap().unwrap().0,
            3,
            "nothing appended"
        );
        // And it stays refused: the known end is kept.
        let err = log
            .record(detokenized(5), Some(key.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Tampered), "{err}");
    }

    /// Two replicas on one store. Someone truncates the events of the
    /// second and copies the first's older head back, so the log looks
    /// intact to a fresh read. The second replica knows its own end and
    /// refuses to append over the loss.
    #[tokio::test]
    async fn a_replica_whose_events_were_cut_refuses_to_sign_over_the_cut() {
        use crate::audit::AuditError;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        let (a, b) = (replica_log(&store), replica_log(&store));
        let key = Arc::new(crate::secret::DataKey::from_bytes([3; 32]));
        for n in 0..3 {
            a.record(detokenized(n), Some(key.clone())).await.unwrap();
        }
        let old_head = store.head().unwrap().unwrap();
        for n in 3..6 {
            assert_eq!(
                b.record(detokenized(n), Some(key.clone())).await.unwrap(),
                n
            );
        }
        for seq in 3..6u64 {
            store.audit.remove(seq.to_be_bytes()).unwrap();
        }
        store.audit_meta.insert(AUDIT_HEAD, old_head).unwrap();
        assert!(a.verify(Some(&key)).await.unwrap().ok(), "looks intact");
        let err = b
            .record(detokenized(6), Some(key.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Tampered), "{err}");
        // The log verifies, so only the replica that knows of the cut may
        // recover (audited), which ends its refusal.
        assert!(matches!(
            a.recover(detokenized(7), key.clone()).await,
            Err(AuditError::NothingToRecover)
        ));
        let (at, _) = b.recover(detokenized(7), key.clone()).await.unwrap();
        assert_eq!(at, 3);
        assert_eq!(
            b.record(detokenized(8), Some(key.clone())).await.unwrap(),
            4
        );
    }

    /// Finding 15: sled reported corrupt data as UNAVAILABLE, which callers
    /// retry for ever; damage is `Damaged`, never retryable.
    #[tokio::test]
    async fn a_corrupt_index_is_damage_not_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let fingerprint = Fingerprint::from_bytes([7; 32]);
        store
            .fingerprints
            .insert(fingerprint_key(&tenant, &fingerprint), b"short".as_slice())
            .unwrap();
        let err = store
            .find_by_fingerprint(&tenant, &fingerprint)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Damaged(_)), "{err}");
        assert!(!err.is_retryable());
    }
}
