//! An in-memory store for unit tests. Not durable; never used by `serve`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::key::KeyContext;
use crate::domain::{Fingerprint, TenantId, TokenId};
use crate::store::compact::{Held, check_drop, check_purge};
use crate::store::record::{fingerprint_key, tenant_prefix};
use crate::store::state::{Expect, StateChange, StateEntry, StateKind, StateStore, check_key};
use crate::store::{
    AuditAppend, AuditStore, CommitError, Compaction, Engine, JobStore, KeyStore, MAX_TAIL_EVENTS,
    RecordStore, SealedRecord, SealedVersion, StoreError, StoredRecord, Tombstone,
    WrappedKeyRecord, WriteBatch,
};

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<TokenId, SealedRecord>,
    tombstones: HashMap<TokenId, Tombstone>,
    fingerprints: HashMap<Vec<u8>, TokenId>,
    keys: BTreeMap<Vec<u8>, WrappedKeyRecord>,
    /// Re-sealed PANs by record and seal version.
    sealed_versions: HashMap<TokenId, BTreeMap<u32, Vec<u8>>>,
    /// Ids of purged records: never taken again.
    purged: HashSet<TokenId>,
    checkpoints: BTreeMap<String, Vec<u8>>,
    audit: Vec<Vec<u8>>,
    audit_head: Option<Vec<u8>>,
    /// Shared entries: the newest change of each.
    state: BTreeMap<(StateKind, String), StoredState>,
    state_version: u64,
}

/// A shared entry's newest change: its number and value (`None`: deleted).
type StoredState = (u64, Option<Vec<u8>>);

/// A `HashMap`-backed store. Unit tests only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    syncs: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times [`Engine::sync`] was called.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
    }
}

impl Inner {
    fn stored(&self, id: &TokenId) -> Option<StoredRecord> {
        self.records.get(id).map(|record| {
            let mut record = record.clone();
            let newest = self.newest_seal(id);
            if let Some((_, sealed)) = newest {
                record.sealed_pan = sealed.clone();
            }
            StoredRecord {
                record,
                tombstone: self.tombstones.get(id).copied(),
                seal_version: newest.map_or(0, |(version, _)| version),
            }
        })
    }
}

impl Inner {
    fn newest_seal(&self, id: &TokenId) -> Option<(u32, &Vec<u8>)> {
        self.sealed_versions
            .get(id)
            .and_then(|versions| versions.last_key_value())
            .map(|(version, sealed)| (*version, sealed))
    }

    /// What the store holds under `id` for a purge, given the batch's
    /// earlier units.
    fn held(&self, id: &TokenId, new: &Pending) -> Held {
        if self.purged.contains(id) || new.purged.contains(id) {
            Held::Purged
        } else if new.tombstones.contains_key(id) {
            Held::Record(new.tombstones.get(id).copied())
        } else if self.records.contains_key(id) || new.ids.contains(id) {
            Held::Record(self.tombstones.get(id).copied())
        } else {
            Held::Nothing
        }
    }

    /// Every rule of [`Engine::commit`], checked before anything is written
    /// so a refused batch leaves no trace. Units see the writes of the
    /// units before them.
    fn check(&self, batch: &WriteBatch) -> Result<(), CommitError> {
        let mut new = Pending::default();
        let mut new_keys: HashSet<Vec<u8>> = HashSet::new();
        for (index, unit) in batch.units.iter().enumerate() {
            let refuse = |error| CommitError::Refused { unit: index, error };
            for key in &unit.keys {
                let k = WrappedKeyRecord::store_key(&key.context);
                if self.keys.contains_key(&k) || !new_keys.insert(k) {
                    return Err(refuse(StoreError::AlreadyExists));
                }
            }
            for record in &unit.records {
                let id = record.token_id;
                if self.records.contains_key(&id)
                    || self.purged.contains(&id)
                    || !new.ids.insert(id)
                {
                    return Err(refuse(StoreError::AlreadyExists));
                }
                if let Some(fp) = &record.fingerprint {
                    let key = fingerprint_key(&record.tenant, fp);
                    let holder = new
                        .fingerprints
                        .get(&key)
                        .or_else(|| self.fingerprints.get(&key))
                        .copied();
                    if let Some(holder) = holder
                        && !self.tombstones.contains_key(&holder)
                        && !new.tombstones.contains_key(&holder)
                        && !new.purged.contains(&holder)
                    {
                        return Err(refuse(StoreError::FingerprintTaken(holder)));
                    }
                    new.fingerprints.insert(key, id);
                }
            }
            for (id, tombstone) in &unit.tombstones {
                match self.held(id, &new) {
                    Held::Nothing => return Err(refuse(StoreError::NotFound)),
                    Held::Purged | Held::Record(Some(_)) => {
                        return Err(refuse(StoreError::AlreadyExists));
                    }
                    Held::Record(None) => {
                        new.tombstones.insert(*id, *tombstone);
                    }
                }
            }
            for compaction in &unit.compactions {
                let held = self.held(compaction.id(), &new);
                match compaction {
                    Compaction::Purge { id, dead_by_ms } => {
                        check_purge(held, *dead_by_ms).map_err(refuse)?;
                        new.purged.insert(*id);
                    }
                    Compaction::DropSealVersions { id, versions } => {
                        let stored = self.sealed_versions.get(id);
                        let newest = self.newest_seal(id).map_or(0, |(version, _)| version);
                        check_drop(held, versions, newest, |v| {
                            stored.is_some_and(|s| s.contains_key(&v))
                                && !new.dropped.contains(&(*id, v))
                        })
                        .map_err(refuse)?;
                        new.dropped.extend(versions.iter().map(|v| (*id, *v)));
                    }
                }
            }
        }
        Ok(())
    }

    /// The log's events from position `from` on, at most
    /// [`MAX_TAIL_EVENTS`].
    fn events_from(&self, from: u64) -> Vec<(u64, Vec<u8>)> {
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        self.audit
            .iter()
            .enumerate()
            .skip(from)
            .take(MAX_TAIL_EVENTS)
            .map(|(seq, bytes)| (u64::try_from(seq).unwrap_or(u64::MAX), bytes.clone()))
            .collect()
    }

    fn apply(&mut self, batch: &WriteBatch, audit: &AuditAppend) {
        for unit in &batch.units {
            for record in &unit.records {
                if let Some(fp) = &record.fingerprint {
                    self.fingerprints
                        .insert(fingerprint_key(&record.tenant, fp), record.token_id);
                }
                self.records.insert(record.token_id, record.clone());
            }
            for (id, tombstone) in &unit.tombstones {
                self.tombstones.insert(*id, *tombstone);
            }
            for key in &unit.keys {
                self.keys
                    .insert(WrappedKeyRecord::store_key(&key.context), key.clone());
            }
            for compaction in &unit.compactions {
                match compaction {
                    Compaction::Purge { id, .. } => self.purge(id),
                    Compaction::DropSealVersions { id, versions } => {
                        if let Some(stored) = self.sealed_versions.get_mut(id) {
                            for version in versions {
                                stored.remove(version);
                            }
                        }
                    }
                }
            }
        }
        self.audit.extend(audit.events.iter().cloned());
        if let Some(head) = &audit.head {
            self.audit_head = Some(head.clone());
        }
    }
}

impl Inner {
    /// Up to `limit` records that `keep` accepts, in token-id order after
    /// `after`.
    fn page(
        &self,
        after: Option<TokenId>,
        limit: usize,
        keep: impl Fn(&SealedRecord) -> bool,
    ) -> Vec<StoredRecord> {
        let mut ids: Vec<TokenId> = self
            .records
            .values()
            .filter(|r| keep(r) && after.is_none_or(|a| r.token_id > a))
            .map(|r| r.token_id)
            .collect();
        ids.sort();
        ids.iter()
            .take(limit)
            .filter_map(|id| self.stored(id))
            .collect()
    }

    /// Removes a record and everything of it but its id (checked already).
    fn purge(&mut self, id: &TokenId) {
        if let Some(record) = self.records.remove(id)
            && let Some(fp) = &record.fingerprint
        {
            let key = fingerprint_key(&record.tenant, fp);
            if self.fingerprints.get(&key) == Some(id) {
                self.fingerprints.remove(&key);
            }
        }
        self.tombstones.remove(id);
        self.sealed_versions.remove(id);
        self.purged.insert(*id);
    }
}

/// What a batch's earlier units wrote, as its later units' checks see it.
#[derive(Default)]
struct Pending {
    ids: HashSet<TokenId>,
    fingerprints: HashMap<Vec<u8>, TokenId>,
    tombstones: HashMap<TokenId, Tombstone>,
    purged: HashSet<TokenId>,
    dropped: HashSet<(TokenId, u32)>,
}

#[async_trait]
impl RecordStore for MemoryStore {
    async fn get(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self.lock()?.stored(id))
    }

    async fn find_by_fingerprint(
        &self,
        tenant: &TenantId,
        fingerprint: &Fingerprint,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let inner = self.lock()?;
        let key = fingerprint_key(tenant, fingerprint);
        Ok(inner.fingerprints.get(&key).and_then(|id| inner.stored(id)))
    }

    async fn scan_tenant(
        &self,
        tenant: &TenantId,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        Ok(self
            .lock()?
            .page(after, limit, |record| record.tenant == *tenant))
    }

    async fn scan_all(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        Ok(self.lock()?.page(after, limit, |_| true))
    }

    async fn is_taken(&self, id: &TokenId) -> Result<bool, StoreError> {
        let inner = self.lock()?;
        Ok(inner.records.contains_key(id) || inner.purged.contains(id))
    }

    async fn seal_versions(&self, ids: &[TokenId]) -> Result<Vec<(TokenId, Vec<u32>)>, StoreError> {
        let inner = self.lock()?;
        Ok(ids
            .iter()
            .filter_map(|id| {
                let versions = inner.sealed_versions.get(id)?;
                (!versions.is_empty()).then(|| (*id, versions.keys().copied().collect()))
            })
            .collect())
    }

    async fn append_sealed_versions(
        &self,
        items: Vec<SealedVersion>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut inner = self.lock()?;
        Ok(items
            .into_iter()
            .map(|item| {
                if !inner.records.contains_key(&item.id) {
                    return Err(StoreError::NotFound);
                }
                let newest = inner
                    .newest_seal(&item.id)
                    .map_or(0, |(version, _)| version);
                if newest.checked_add(1) != Some(item.version) {
                    return Err(StoreError::AlreadyExists);
                }
                inner
                    .sealed_versions
                    .entry(item.id)
                    .or_default()
                    .insert(item.version, item.sealed_pan);
                Ok(())
            })
            .collect())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn put_wrapped_key(&self, key: WrappedKeyRecord) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let k = WrappedKeyRecord::store_key(&key.context);
        if inner.keys.contains_key(&k) {
            return Err(StoreError::AlreadyExists);
        }
        inner.keys.insert(k, key);
        Ok(())
    }

    async fn wrapped_key(&self, ctx: &KeyContext) -> Result<Option<WrappedKeyRecord>, StoreError> {
        Ok(self
            .lock()?
            .keys
            .get(&WrappedKeyRecord::store_key(ctx))
            .cloned())
    }

    async fn wrapped_keys(&self, tenant: &TenantId) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        let prefix = tenant_prefix(tenant);
        Ok(self
            .lock()?
            .keys
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn all_wrapped_keys(&self) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        Ok(self.lock()?.keys.values().cloned().collect())
    }

    async fn replace_wrapped_key(
        &self,
        expected: &WrappedKeyRecord,
        new: WrappedKeyRecord,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let slot = inner
            .keys
            .get_mut(&WrappedKeyRecord::store_key(&expected.context))
            .ok_or(StoreError::NotFound)?;
        if slot != expected || new.context != expected.context {
            return Err(StoreError::AlreadyExists);
        }
        *slot = new;
        Ok(())
    }

    async fn destroy_wrapped_keys(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let prefix = tenant_prefix(tenant);
        let mut inner = self.lock()?;
        let doomed: Vec<Vec<u8>> = inner
            .keys
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in &doomed {
            inner.keys.remove(k);
        }
        Ok(doomed.len())
    }

    async fn destroy_wrapped_key(&self, ctx: &KeyContext) -> Result<(), StoreError> {
        self.lock()?
            .keys
            .remove(&WrappedKeyRecord::store_key(ctx))
            .map(|_| ())
            .ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let inner = self.lock()?;
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        Ok(inner
            .audit
            .iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .map(|(i, r)| (u64::try_from(i).unwrap_or(u64::MAX), r.clone()))
            .collect())
    }

    async fn last_audit_record(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let inner = self.lock()?;
        Ok(inner.audit.last().map(|r| {
            (
                u64::try_from(inner.audit.len() - 1).unwrap_or(u64::MAX),
                r.clone(),
            )
        }))
    }

    async fn audit_head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.audit_head.clone())
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn put_checkpoint(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.lock()?.checkpoints.insert(name.to_owned(), value);
        Ok(())
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.checkpoints.get(name).cloned())
    }

    async fn checkpoints(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()?
            .checkpoints
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn delete_checkpoint(&self, name: &str) -> Result<(), StoreError> {
        self.lock()?.checkpoints.remove(name);
        Ok(())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn state(&self, kind: StateKind, key: &str) -> Result<Option<StateEntry>, StoreError> {
        let inner = self.lock()?;
        Ok(match inner.state.get(&(kind, key.to_owned())) {
            Some((version, Some(value))) => Some(StateEntry {
                version: *version,
                value: value.clone(),
            }),
            _ => None,
        })
    }

    async fn states(&self, kind: StateKind) -> Result<Vec<(String, StateEntry)>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .state
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .filter_map(|((_, key), (version, value))| {
                let value = value.clone()?;
                Some((
                    key.clone(),
                    StateEntry {
                        version: *version,
                        value,
                    },
                ))
            })
            .collect())
    }

    async fn put_state(
        &self,
        kind: StateKind,
        key: &str,
        value: Option<Vec<u8>>,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        check_key(key)?;
        let mut inner = self.lock()?;
        let entry = (kind, key.to_owned());
        let found = match inner.state.get(&entry) {
            Some((version, Some(_))) => Some(*version),
            _ => None,
        };
        if !expect.holds(found) {
            return Err(StoreError::Conflict);
        }
        inner.state_version += 1;
        let version = inner.state_version;
        inner.state.insert(entry, (version, value));
        Ok(version)
    }

    async fn state_changes(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<StateChange>, StoreError> {
        let inner = self.lock()?;
        let mut changes: Vec<StateChange> = inner
            .state
            .iter()
            .filter(|(_, (version, _))| *version > since)
            .map(|((kind, key), (version, value))| StateChange {
                version: *version,
                kind: *kind,
                key: key.clone(),
                deleted: value.is_none(),
            })
            .collect();
        changes.sort_by_key(|c| c.version);
        changes.truncate(limit);
        Ok(changes)
    }
}

#[async_trait]
impl Engine for MemoryStore {
    async fn commit(&self, batch: Arc<WriteBatch>) -> Result<(), CommitError> {
        let mut inner = self.lock()?;
        inner.check(&batch)?;
        let audit = match batch.audit.tail_from() {
            Some(from) => {
                let tail = inner.events_from(from);
                batch
                    .audit
                    .place(&tail, inner.audit_head.as_deref())?
                    .into_owned()
            }
            None => AuditAppend::default(),
        };
        inner.apply(&batch, &audit);
        Ok(())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // Nothing to make durable in memory; counted so unit tests can see
        // that callers ask.
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }
}
