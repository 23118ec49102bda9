//! The embedded LSM store: fjall, one node (`[store] backend = "fjall"`).
//!
//! Keyspaces mirror sled's trees (`records`, `tombstones`, `fingerprints`,
//! `tenant_records`, `sealed_versions`, `latest_seal`, `checkpoints`,
//! `keys`, `audit` with one [`segment`] per commit, `audit_meta`).
//!
//! A [`WriteBatch`] is one fjall write batch across keyspaces: one journal
//! append and one `fdatasync`, atomic on recovery. fjall batches have no
//! read-your-writes, so the rules of [`Engine::commit`] are checked first,
//! against the store and the batch's earlier units, under the commit lock:
//! every writer of records, tombstones and audit events goes through it
//! (in the server, the pipeline's one committer), so what the check saw is
//! what the write lands on. Keys and seal versions, written rarely and by
//! admin jobs, take their own lock for their compare-and-set rules.
//!
//! Memory is the block cache (`[store] cache_mb`) plus the write buffers,
//! which [`WRITE_BUFFER_BUDGET`] caps after every write; start-up replays
//! only the journal (`MAX_JOURNAL_BYTES`), not the whole store.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fjall::{AbstractTree, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::domain::key::KeyContext;
use crate::domain::{Fingerprint, TenantId, TokenId};
use crate::store::compact::{self, Held};
use crate::store::prepared::PreparedUnit;
use crate::store::record::{decode_u32, fingerprint_key, tenant_prefix, version_key};
use crate::store::state::{self, Expect, StateChange, StateEntry, StateKind, StateStore, layout};
use crate::store::{
    AuditStore, CommitError, Compaction, Engine, JobStore, KeyStore, MAX_TAIL_EVENTS, RecordStore,
    SealedRecord, SealedVersion, StoreError, StoredRecord, Tombstone, WrappedKeyRecord, WriteBatch,
    segment,
};

/// The journal's size before fjall flushes the memtables it covers
/// (fjall's minimum; its default is 512 MiB). Start-up replays the journal
/// into memory, so this bounds both the time to serving and the write
/// buffers' memory. fjall checks it when it rotates a journal file (every
/// 64 MB), so replay may read up to about twice this.
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// One keyspace's write buffer before it is flushed to a table (fjall's
/// default is 64 MiB, per keyspace). fjall records it when a keyspace is
/// created: stores made before this bound keep 64 MiB, still capped by the
/// journal's bound. 8 MiB stalled writers for seconds while compaction
/// caught up (BENCHMARKS.md).
const MAX_MEMTABLE_BYTES: u64 = 32 * 1024 * 1024;

/// The unflushed writes, as fjall counts them (its memtables' items), above
/// which a write seals the largest memtable for flushing. fjall's own bounds
/// let far more wait: each keyspace's write buffer on its own, and the
/// journal's, which it checks only when a journal file fills, so 64 to 128
/// MiB of items; and a memtable costs about twice its items' bytes (the
/// skiplist's nodes beside the copies: the heap profile in BENCHMARKS.md,
/// "What the RSS is"). With this budget the memtables stay near 50 MiB
/// under any write load, which is what keeps the server within its 200 MiB
/// beside a 64 MiB block cache.
pub const WRITE_BUFFER_BUDGET: u64 = 24 * 1024 * 1024;

/// A memtable smaller than this is left to fill even over the budget: when
/// flushes lag behind a write flood, sealing small memtables would only
/// make many small tables for compaction to merge.
const MIN_SEALED_MEMTABLE: u64 = 4 * 1024 * 1024;

/// Key of the signed chain head in `audit_meta`.
const AUDIT_HEAD: &[u8] = b"head";

/// A fjall-backed store.
#[derive(Clone)]
pub struct FjallStore {
    db: Database,
    records: Keyspace,
    tombstones: Keyspace,
    fingerprints: Keyspace,
    tenant_records: Keyspace,
    sealed_versions: Keyspace,
    latest_seal: Keyspace,
    checkpoints: Keyspace,
    keys: Keyspace,
    audit: Keyspace,
    audit_meta: Keyspace,
    /// Shared entries and the change counter ([`layout`]).
    state: Keyspace,
    /// Change number → entry key.
    state_log: Keyspace,
    /// Serializes commits: their checks and writes are one step.
    commit_lock: Arc<Mutex<()>>,
    /// Serializes the compare-and-set writes of keys and seal versions.
    admin_lock: Arc<Mutex<()>>,
    /// A benchmark aid: added after every commit's sync, as a slow disk
    /// would (`store.simulated_flush_delay_us`, dev only).
    flush_delay: Option<std::time::Duration>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FjallStore")
    }
}

/// Maps a fjall error: I/O and a poisoned journal may pass with a restart
/// or a retry (`Unavailable`); anything about the bytes is damage.
fn unavailable(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Io(e) => StoreError::Unavailable(e.to_string()),
        fjall::Error::Poisoned => StoreError::Unavailable("fjall journal poisoned".into()),
        fjall::Error::Storage(fjall::LsmError::Io(e)) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Damaged("fjall reported corruption"),
    }
}

fn get(keyspace: &Keyspace, key: &[u8]) -> Result<Option<fjall::Slice>, StoreError> {
    keyspace.get(key).map_err(unavailable)
}

fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FjallStore {
    /// Opens (or creates) the store in `dir`, with a block cache of
    /// `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = Database::builder(dir)
            .cache_size(cache_bytes)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .open()
            .map_err(unavailable)?;
        let keyspace = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE_BYTES)
            })
            .map_err(unavailable)
        };
        Ok(Self {
            records: keyspace("records")?,
            tombstones: keyspace("tombstones")?,
            fingerprints: keyspace("fingerprints")?,
            tenant_records: keyspace("tenant_records")?,
            sealed_versions: keyspace("sealed_versions")?,
            latest_seal: keyspace("latest_seal")?,
            checkpoints: keyspace("checkpoints")?,
            keys: keyspace("keys")?,
            audit: keyspace("audit")?,
            audit_meta: keyspace("audit_meta")?,
            state: keyspace("state")?,
            state_log: keyspace("state_log")?,
            commit_lock: Arc::default(),
            admin_lock: Arc::default(),
            flush_delay: None,
            db,
        })
    }

    /// The same store, with every commit's sync taking `delay` longer.
    pub fn with_simulated_flush_delay(self, delay: Option<std::time::Duration>) -> Self {
        Self {
            flush_delay: delay,
            ..self
        }
    }

    /// Runs a blocking store call on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Writes `batch` (fjall's) durably: one journal append and fdatasync.
    fn write(&self, batch: fjall::OwnedWriteBatch) -> Result<(), StoreError> {
        batch
            .durability(Some(PersistMode::SyncData))
            .commit()
            .map_err(unavailable)?;
        self.keep_write_buffers_in_budget();
        Ok(())
    }

    /// Seals the largest memtable for flushing when the unflushed writes
    /// exceed [`WRITE_BUFFER_BUDGET`]. The flush runs on fjall's workers;
    /// the writer does not wait for it.
    fn keep_write_buffers_in_budget(&self) {
        if self.db.write_buffer_size() <= WRITE_BUFFER_BUDGET {
            return;
        }
        let largest = self
            .keyspaces()
            .into_iter()
            .map(|keyspace| (keyspace.tree.active_memtable().size(), keyspace))
            .max_by_key(|(size, _)| *size);
        if let Some((size, keyspace)) = largest
            && size >= MIN_SEALED_MEMTABLE
            && let Err(e) = keyspace.rotate_memtable()
        {
            // The next write meets the same journal and reports it.
            tracing::warn!(error = %e, "could not seal a memtable for flushing");
        }
    }

    /// Every keyspace the store writes.
    fn keyspaces(&self) -> [&Keyspace; 12] {
        [
            &self.records,
            &self.tombstones,
            &self.fingerprints,
            &self.tenant_records,
            &self.sealed_versions,
            &self.latest_seal,
            &self.checkpoints,
            &self.keys,
            &self.audit,
            &self.audit_meta,
            &self.state,
            &self.state_log,
        ]
    }

    fn stored(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError> {
        match get(&self.records, id.as_bytes())? {
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
        let seal_version = match get(&self.latest_seal, id.as_bytes())? {
            Some(v) => {
                let version = decode_u32(&v)?;
                let sealed = get(&self.sealed_versions, &version_key(id, version))?
                    .ok_or(StoreError::Damaged("missing sealed version"))?;
                record.sealed_pan = sealed.to_vec();
                version
            }
            None => 0,
        };
        let tombstone = get(&self.tombstones, id.as_bytes())?
            .map(|t| Tombstone::decode(&t))
            .transpose()?;
        Ok(Some(StoredRecord {
            record,
            tombstone,
            seal_version,
        }))
    }

    /// Audit records from position `from`, at most `limit`, in order.
    fn records_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        // The segment holding `from` starts at or before it.
        let start = match self.audit.range(..=from.to_be_bytes()).next_back() {
            Some(guard) => guard.key().map_err(unavailable)?.to_vec(),
            None => from.to_be_bytes().to_vec(),
        };
        let segments = self
            .audit
            .range(start..)
            .map(|guard| guard.into_inner().map_err(unavailable));
        segment::collect_from(from, limit, segments)
    }

    /// The last stored audit event and its position.
    fn last_event(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some(guard) = self.audit.last_key_value() else {
            return Ok(None);
        };
        let (key, value) = guard.into_inner().map_err(unavailable)?;
        Ok(segment::events_at(segment::position(&key)?, &value).pop())
    }

    /// Checks `batch` against the store and its own earlier units, then
    /// writes it. Called under the commit lock.
    fn apply(&self, batch: &WriteBatch) -> Result<(), CommitError> {
        let audit = match batch.audit.tail_from() {
            Some(from) => {
                let tail = self.records_from(from, MAX_TAIL_EVENTS)?;
                let head = get(&self.audit_meta, AUDIT_HEAD)?;
                Some(batch.audit.place(&tail, head.as_deref())?.into_owned())
            }
            None => None,
        };
        let units: Vec<PreparedUnit> = batch.units.iter().map(PreparedUnit::new).collect();
        // Key writes also take the key table's own lock (the admin writes
        // check and insert under it).
        // Compactions take it too: they remove seal versions, which
        // re-encryption appends by compare-and-set under it.
        let _admin = batch
            .units
            .iter()
            .any(|u| !u.keys.is_empty() || !u.compactions.is_empty())
            .then(|| lock(&self.admin_lock));
        let mut new_ids: HashSet<TokenId> = HashSet::new();
        let mut new_fingerprints: HashMap<&[u8], TokenId> = HashMap::new();
        let mut new_tombstones: HashSet<TokenId> = HashSet::new();
        let mut new_keys: HashSet<&[u8]> = HashSet::new();
        let mut new_purged: HashSet<TokenId> = HashSet::new();
        let mut write = self.db.batch();
        for (index, (unit, raw)) in units.iter().zip(&batch.units).enumerate() {
            let refuse = |error| CommitError::Refused { unit: index, error };
            for (k, bytes) in &unit.keys {
                if !new_keys.insert(k.as_slice()) || get(&self.keys, k)?.is_some() {
                    return Err(refuse(StoreError::AlreadyExists));
                }
                write.insert(&self.keys, k.as_slice(), bytes.as_slice());
            }
            for record in &unit.records {
                if new_ids.contains(&record.id)
                    || get(&self.records, record.id.as_bytes())?.is_some()
                {
                    return Err(refuse(StoreError::AlreadyExists));
                }
                if let Some(key) = &record.fingerprint_key {
                    let holder = match new_fingerprints.get(key.as_slice()) {
                        Some(id) => Some(*id),
                        None => get(&self.fingerprints, key)?
                            .map(|h| {
                                TokenId::from_slice(&h)
                                    .ok_or(StoreError::Damaged("corrupt fingerprint index"))
                            })
                            .transpose()?,
                    };
                    if let Some(holder) = holder
                        && !new_tombstones.contains(&holder)
                        && get(&self.tombstones, holder.as_bytes())?.is_none()
                    {
                        return Err(refuse(StoreError::FingerprintTaken(holder)));
                    }
                    new_fingerprints.insert(key.as_slice(), record.id);
                    write.insert(&self.fingerprints, key.as_slice(), record.id.as_bytes());
                }
                new_ids.insert(record.id);
                write.insert(&self.records, record.id.as_bytes(), record.bytes.as_slice());
                write.insert(
                    &self.tenant_records,
                    record.tenant_key.as_slice(),
                    b"".as_slice(),
                );
            }
            for (id, tombstone) in &unit.tombstones {
                let stored = get(&self.records, id.as_bytes())?;
                if !new_ids.contains(id) && stored.is_none() {
                    return Err(refuse(StoreError::NotFound));
                }
                if new_tombstones.contains(id)
                    || new_purged.contains(id)
                    || stored.is_some_and(|bytes| compact::is_purged(&bytes))
                    || get(&self.tombstones, id.as_bytes())?.is_some()
                {
                    return Err(refuse(StoreError::AlreadyExists));
                }
                new_tombstones.insert(*id);
                write.insert(&self.tombstones, id.as_bytes(), tombstone.as_slice());
            }
            for compaction in &raw.compactions {
                // fjall gives one batch's writes one sequence number, so a
                // key is written at most once per batch: a record the batch
                // made or killed is not compacted in it.
                let id = compaction.id();
                if new_ids.contains(id) || new_tombstones.contains(id) {
                    return Err(refuse(StoreError::Conflict));
                }
                self.compact(&mut write, compaction, &new_fingerprints, &mut new_purged)
                    .map_err(|e| match e {
                        Compacted::Refused(error) => refuse(error),
                        Compacted::Failed(error) => CommitError::Batch(error),
                    })?;
            }
        }
        if let Some(audit) = &audit {
            if !audit.events.is_empty() {
                write.insert(
                    &self.audit,
                    audit.from.to_be_bytes(),
                    segment::encode(&audit.events),
                );
            }
            if let Some(head) = &audit.head {
                write.insert(&self.audit_meta, AUDIT_HEAD, head.as_slice());
            }
        }
        self.write(write).map_err(CommitError::Batch)
    }
}

/// Why a compaction stopped its commit.
enum Compacted {
    /// Its unit broke a rule.
    Refused(StoreError),
    /// The store failed.
    Failed(StoreError),
}

impl From<StoreError> for Compacted {
    fn from(e: StoreError) -> Self {
        Self::Failed(e)
    }
}

impl FjallStore {
    /// Adds one compaction's removals to `write` (rules in [`compact`]),
    /// given the fingerprints the batch sets and the records it purges.
    fn compact(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        compaction: &Compaction,
        new_fingerprints: &HashMap<&[u8], TokenId>,
        new_purged: &mut HashSet<TokenId>,
    ) -> Result<(), Compacted> {
        let id = compaction.id();
        let bytes = get(&self.records, id.as_bytes())?;
        let held = match &bytes {
            _ if new_purged.contains(id) => Held::Purged,
            None => Held::Nothing,
            Some(bytes) if compact::is_purged(bytes) => Held::Purged,
            Some(_) => Held::Record(
                get(&self.tombstones, id.as_bytes())?
                    .map(|t| Tombstone::decode(&t))
                    .transpose()
                    .map_err(StoreError::from)?,
            ),
        };
        let newest = match get(&self.latest_seal, id.as_bytes())? {
            Some(v) => decode_u32(&v)?,
            None => 0,
        };
        match compaction {
            Compaction::Purge { dead_by_ms, .. } => {
                compact::check_purge(held, *dead_by_ms).map_err(Compacted::Refused)?;
                let record = SealedRecord::decode(bytes.as_deref().unwrap_or_default())
                    .map_err(StoreError::from)?;
                if let Some(fp) = &record.fingerprint {
                    let key = fingerprint_key(&record.tenant, fp);
                    if !new_fingerprints.contains_key(key.as_slice())
                        && get(&self.fingerprints, &key)?.as_deref() == Some(id.as_bytes())
                    {
                        write.remove(&self.fingerprints, key);
                    }
                }
                let mut tenant_key = tenant_prefix(&record.tenant);
                tenant_key.extend_from_slice(id.as_bytes());
                write.remove(&self.tenant_records, tenant_key);
                write.remove(&self.tombstones, id.as_bytes());
                write.remove(&self.latest_seal, id.as_bytes());
                for version in 1..=newest {
                    write.remove(&self.sealed_versions, version_key(id, version));
                }
                write.insert(&self.records, id.as_bytes(), compact::PURGED);
                new_purged.insert(*id);
            }
            Compaction::DropSealVersions { versions, .. } => {
                let mut stored = HashSet::new();
                for version in versions {
                    if get(&self.sealed_versions, &version_key(id, *version))?.is_some() {
                        stored.insert(*version);
                    }
                }
                compact::check_drop(held, versions, newest, |v| stored.contains(&v))
                    .map_err(Compacted::Refused)?;
                for version in versions {
                    write.remove(&self.sealed_versions, version_key(id, *version));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RecordStore for FjallStore {
    async fn get(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError> {
        self.stored(id)
    }

    async fn find_by_fingerprint(
        &self,
        tenant: &TenantId,
        fingerprint: &Fingerprint,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let Some(holder) = get(&self.fingerprints, &fingerprint_key(tenant, fingerprint))? else {
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
        for guard in self.tenant_records.range(start..) {
            if out.len() >= limit {
                break;
            }
            let key = guard.key().map_err(unavailable)?;
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
        let range = match after {
            Some(id) => self.records.range::<Vec<u8>, _>((
                std::ops::Bound::Excluded(id.as_bytes().to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => self.records.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::new();
        for guard in range {
            if out.len() >= limit {
                break;
            }
            let (key, bytes) = guard.into_inner().map_err(unavailable)?;
            let id = TokenId::from_slice(&key).ok_or(StoreError::Damaged("corrupt record key"))?;
            if let Some(stored) = self.stored_with(&id, &bytes)? {
                out.push(stored);
            }
        }
        Ok(out)
    }

    async fn is_taken(&self, id: &TokenId) -> Result<bool, StoreError> {
        // A purged record's marker holds its id.
        Ok(get(&self.records, id.as_bytes())?.is_some())
    }

    async fn seal_versions(&self, ids: &[TokenId]) -> Result<Vec<(TokenId, Vec<u32>)>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            let versions = self
                .sealed_versions
                .prefix(id.as_bytes())
                .map(|guard| {
                    let key = guard.key().map_err(unavailable)?;
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
        self.blocking(move |store| {
            let _admin = lock(&store.admin_lock);
            let mut outcomes = Vec::with_capacity(items.len());
            let mut latest: HashMap<TokenId, u32> = HashMap::new();
            let mut write = store.db.batch();
            for item in &items {
                if get(&store.records, item.id.as_bytes())?
                    .is_none_or(|bytes| compact::is_purged(&bytes))
                {
                    outcomes.push(Err(StoreError::NotFound));
                    continue;
                }
                let current = match latest.get(&item.id) {
                    Some(v) => *v,
                    None => match get(&store.latest_seal, item.id.as_bytes())? {
                        Some(v) => decode_u32(&v)?,
                        None => 0,
                    },
                };
                if current.checked_add(1) != Some(item.version) {
                    outcomes.push(Err(StoreError::AlreadyExists));
                    continue;
                }
                latest.insert(item.id, item.version);
                write.insert(
                    &store.sealed_versions,
                    version_key(&item.id, item.version),
                    item.sealed_pan.as_slice(),
                );
                write.insert(
                    &store.latest_seal,
                    item.id.as_bytes(),
                    item.version.to_be_bytes(),
                );
                outcomes.push(Ok(()));
            }
            store.write(write)?;
            Ok(outcomes)
        })
        .await
    }
}

#[async_trait]
impl KeyStore for FjallStore {
    async fn put_wrapped_key(&self, key: WrappedKeyRecord) -> Result<(), StoreError> {
        self.blocking(move |store| {
            let _admin = lock(&store.admin_lock);
            let k = WrappedKeyRecord::store_key(&key.context);
            if get(&store.keys, &k)?.is_some() {
                return Err(StoreError::AlreadyExists);
            }
            let mut write = store.db.batch();
            write.insert(&store.keys, k, key.encode());
            store.write(write)
        })
        .await
    }

    async fn wrapped_key(&self, ctx: &KeyContext) -> Result<Option<WrappedKeyRecord>, StoreError> {
        get(&self.keys, &WrappedKeyRecord::store_key(ctx))?
            .map(|b| WrappedKeyRecord::decode(&b).map_err(StoreError::from))
            .transpose()
    }

    async fn wrapped_keys(&self, tenant: &TenantId) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        self.keys
            .prefix(tenant_prefix(tenant))
            .map(|guard| {
                let value = guard.value().map_err(unavailable)?;
                WrappedKeyRecord::decode(&value).map_err(StoreError::from)
            })
            .collect()
    }

    async fn all_wrapped_keys(&self) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        self.keys
            .iter()
            .map(|guard| {
                let value = guard.value().map_err(unavailable)?;
                WrappedKeyRecord::decode(&value).map_err(StoreError::from)
            })
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
        let k = WrappedKeyRecord::store_key(&expected.context);
        let expected = expected.encode();
        self.blocking(move |store| {
            let _admin = lock(&store.admin_lock);
            match get(&store.keys, &k)? {
                None => Err(StoreError::NotFound),
                Some(current) if *current != *expected => Err(StoreError::AlreadyExists),
                Some(_) => {
                    let mut write = store.db.batch();
                    write.insert(&store.keys, k, new.encode());
                    store.write(write)
                }
            }
        })
        .await
    }

    async fn destroy_wrapped_keys(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let prefix = tenant_prefix(tenant);
        self.blocking(move |store| {
            let _admin = lock(&store.admin_lock);
            let mut write = store.db.batch();
            let mut destroyed = 0;
            for guard in store.keys.prefix(&prefix) {
                write.remove(&store.keys, guard.key().map_err(unavailable)?);
                destroyed += 1;
            }
            store.write(write)?;
            Ok(destroyed)
        })
        .await
    }

    async fn destroy_wrapped_key(&self, ctx: &KeyContext) -> Result<(), StoreError> {
        let k = WrappedKeyRecord::store_key(ctx);
        self.blocking(move |store| {
            let _admin = lock(&store.admin_lock);
            if get(&store.keys, &k)?.is_none() {
                return Err(StoreError::NotFound);
            }
            let mut write = store.db.batch();
            write.remove(&store.keys, k);
            store.write(write)
        })
        .await
    }
}

#[async_trait]
impl AuditStore for FjallStore {
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
        Ok(get(&self.audit_meta, AUDIT_HEAD)?.map(|v| v.to_vec()))
    }
}

#[async_trait]
impl JobStore for FjallStore {
    async fn put_checkpoint(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.blocking(move |store| {
            let mut write = store.db.batch();
            write.insert(&store.checkpoints, name.as_bytes(), value);
            store.write(write)
        })
        .await
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(get(&self.checkpoints, name.as_bytes())?.map(|v| v.to_vec()))
    }

    async fn checkpoints(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.checkpoints
            .prefix(prefix.as_bytes())
            .map(|guard| {
                let key = guard.key().map_err(unavailable)?;
                String::from_utf8(key.to_vec())
                    .map_err(|_| StoreError::Damaged("corrupt checkpoint name"))
            })
            .collect()
    }

    async fn delete_checkpoint(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.blocking(move |store| {
            let mut write = store.db.batch();
            write.remove(&store.checkpoints, name.as_bytes());
            store.write(write)
        })
        .await
    }
}

#[async_trait]
impl StateStore for FjallStore {
    async fn state(&self, kind: StateKind, key: &str) -> Result<Option<StateEntry>, StoreError> {
        let Some(bytes) = get(&self.state, &layout::entry_key(kind, key))? else {
            return Ok(None);
        };
        let (version, value) = layout::decode_value(&bytes)?;
        Ok(value.map(|value| StateEntry {
            version,
            value: value.to_vec(),
        }))
    }

    async fn states(&self, kind: StateKind) -> Result<Vec<(String, StateEntry)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.state.prefix(layout::kind_prefix(kind)) {
            let (key, bytes) = guard.into_inner().map_err(unavailable)?;
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
        let entry = layout::entry_key(kind, key);
        self.blocking(move |store| {
            // Conditional puts read, then write: one at a time.
            let _admin = lock(&store.admin_lock);
            let old = get(&store.state, &entry)?;
            let counter = get(&store.state, layout::COUNTER)?;
            let put = layout::plan_put(old.as_deref(), counter.as_deref(), expect)?;
            let version = put.version;
            let mut write = store.db.batch();
            if let Some(previous) = put.replaced {
                write.remove(&store.state_log, previous.to_be_bytes());
            }
            write.insert(&store.state, layout::COUNTER, version.to_be_bytes());
            write.insert(
                &store.state,
                entry.as_slice(),
                layout::encode_value(version, value.as_deref()),
            );
            write.insert(&store.state_log, version.to_be_bytes(), entry.as_slice());
            store.write(write)?;
            Ok(version)
        })
        .await
    }

    async fn state_changes(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<StateChange>, StoreError> {
        let mut out = Vec::new();
        let from = since.saturating_add(1).to_be_bytes();
        for guard in self.state_log.range(from..).take(limit) {
            let (number, entry) = guard.into_inner().map_err(unavailable)?;
            let current = get(&self.state, &entry)?;
            out.push(layout::change(&number, &entry, current.as_deref())?);
        }
        Ok(out)
    }
}

#[async_trait]
impl Engine for FjallStore {
    async fn commit(&self, batch: Arc<WriteBatch>) -> Result<(), CommitError> {
        // The checks read and the journal write waits on disk: both on the
        // blocking pool, under the commit lock.
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _commit = lock(&store.commit_lock);
            store.apply(&batch)?;
            if let Some(delay) = store.flush_delay {
                std::thread::sleep(delay);
            }
            Ok(())
        })
        .await
        .map_err(|e| CommitError::Batch(StoreError::Unavailable(e.to_string())))?
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // Every commit is synced before it returns; a reader that found a
        // record found a durable one, unless its commit is still running:
        // taking the commit lock waits for that commit.
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _commit = lock(&store.commit_lock);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    async fn ping(&self) -> Result<(), StoreError> {
        get(&self.keys, b"\xffping").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::sample;
    use crate::store::{WriteBatch, WriteUnit};

    /// Without the budget the records' memtable grows to its own write
    /// buffer (32 MiB) and the journal's bound before anything is flushed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unflushed_writes_stay_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), 8 << 20).unwrap();
        let commit_bytes: u64 = 1 << 20;
        let mut next: u64 = 0;
        // 40 commits of 1 MiB: more than the budget, less than the journal.
        for _ in 0..40 {
            let records = (0..256)
                .map(|_| {
                    next += 1;
                    let mut id = [0; 32];
                    id[..8].copy_from_slice(&next.to_be_bytes());
                    let mut record = sample();
                    record.token_id = TokenId::from_bytes(id);
                    record.fingerprint = None;
                    record.sealed_pan = vec![7; 4096];
                    record
                })
                .collect();
            let unit = WriteUnit {
                records,
                ..WriteUnit::default()
            };
            store
                .commit(Arc::new(WriteBatch::of_unit(unit)))
                .await
                .unwrap();
            let active = store.records.tree.active_memtable().size();
            assert!(
                active <= WRITE_BUFFER_BUDGET + 2 * commit_bytes,
                "the records' memtable holds {active} bytes unflushed"
            );
        }
        assert!(store.records.table_count() > 0, "nothing was flushed");
    }
}
