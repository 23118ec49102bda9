//! An in-memory store for unit tests. Not durable; never used by `serve`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::key::KeyContext;
use crate::domain::{Fingerprint, TenantId, TokenId};
use crate::store::record::{fingerprint_key, tenant_prefix};
use crate::store::state::{Expect, StateChange, StateEntry, StateKind, StateStore, check_key};
use crate::store::{
    AuditAppend, AuditStore, CommitError, Engine, JobStore, KeyStore, MAX_TAIL_EVENTS, RecordStore,
    SealedRecord, SealedVersion, StoreError, StoredRecord, Tombstone, WrappedKeyRecord, WriteBatch,
};

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<TokenId, SealedRecord>,
    tombstones: HashMap<TokenId, Tombstone>,
    fingerprints: HashMap<Vec<u8>, TokenId>,
    keys: BTreeMap<Vec<u8>, WrappedKeyRecord>,
    sealed_versions: HashMap<TokenId, Vec<Vec<u8>>>,
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
            let versions = self.sealed_versions.get(id);
            if let Some(latest) = versions.and_then(|v| v.last()) {
                record.sealed_pan = latest.clone();
            }
            StoredRecord {
                record,
                tombstone: self.tombstones.get(id).copied(),
                seal_version: versions.map_or(0, |v| u32::try_from(v.len()).unwrap_or(u32::MAX)),
            }
        })
    }
}

impl Inner {
    /// Every rule of [`Engine::commit`], checked before anything is written
    /// so a refused batch leaves no trace. Units see the writes of the
    /// units before them.
    fn check(&self, batch: &WriteBatch) -> Result<(), CommitError> {
        let mut new_ids: HashSet<TokenId> = HashSet::new();
        let mut new_fingerprints: HashMap<Vec<u8>, TokenId> = HashMap::new();
        let mut new_tombstones: HashSet<TokenId> = HashSet::new();
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
                if self.records.contains_key(&id) || !new_ids.insert(id) {
                    return Err(refuse(StoreError::AlreadyExists));
                }
                if let Some(fp) = &record.fingerprint {
                    let key = fingerprint_key(&record.tenant, fp);
                    let holder = new_fingerprints
                        .get(&key)
                        .or_else(|| self.fingerprints.get(&key))
                        .copied();
                    if let Some(holder) = holder
                        && !self.tombstones.contains_key(&holder)
                        && !new_tombstones.contains(&holder)
                    {
                        return Err(refuse(StoreError::FingerprintTaken(holder)));
                    }
                    new_fingerprints.insert(key, id);
                }
            }
            for (id, _) in &unit.tombstones {
                if !self.records.contains_key(id) && !new_ids.contains(id) {
                    return Err(refuse(StoreError::NotFound));
                }
                if self.tombstones.contains_key(id) || !new_tombstones.insert(*id) {
                    return Err(refuse(StoreError::AlreadyExists));
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
        }
        self.audit.extend(audit.events.iter().cloned());
        if let Some(head) = &audit.head {
            self.audit_head = Some(head.clone());
        }
    }
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
        let inner = self.lock()?;
        let mut ids: Vec<TokenId> = inner
            .records
            .values()
            .filter(|r| r.tenant == *tenant && after.is_none_or(|a| r.token_id > a))
            .map(|r| r.token_id)
            .collect();
        ids.sort();
        Ok(ids
            .iter()
            .take(limit)
            .filter_map(|id| inner.stored(id))
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
                let versions = inner.sealed_versions.entry(item.id).or_default();
                if usize::try_from(item.version).ok() != Some(versions.len() + 1) {
                    return Err(StoreError::AlreadyExists);
                }
                versions.push(item.sealed_pan);
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
