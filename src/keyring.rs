//! The vault's key cache: unwraps each data key once and keeps it in memory
//! as a zeroizing secret.
//!
//! Per tenant there are two kinds of key in the store's key table, both
//! generated and wrapped by the [`Kms`]:
//! - **DEKs** (`KeyPurpose::Data`, versions 1, 2, …): seal records through
//!   per-record HKDF keys. The highest version seals new records.
//! - **The index key** (`KeyPurpose::Index`, version 1): never used directly;
//!   HKDF-SHA256 derives three keys from it with their own info strings:
//!   the token-id key (`tessera/token-id/v1`), the fingerprint key
//!   (`tessera/fingerprint/v1`, PCI DSS 3.5.1.1) and the FF1 key
//!   (`tessera/ff1/v1`). It is kept apart from the DEK line so rotating a DEK
//!   never changes how existing tokens and fingerprints resolve.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::audit::{AuditError, AuditEvent};
use crate::clock::Clock;
use crate::domain::token::{FINGERPRINT_LEN, TOKEN_ID_LEN};
use crate::domain::{Fingerprint, Pan, TenantId, Token, TokenId};
use crate::kms::{KeyContext, KeyPurpose, Kms, KmsError};
use crate::pipeline::{Pipeline, Submission, WriteError};
use crate::secret::{DataKey, KEY_LEN, MacKey};
use crate::store::{Store, StoreError, WrappedKeyRecord, WriteUnit};
use crate::tokens::ff1::Ff1Generator;
use crate::tokens::{GeneratorKind, LuhnPolicy, TokenFormat};

/// HKDF info for the token-id key.
pub const TOKEN_ID_INFO: &[u8] = b"tessera/token-id/v1";
/// HKDF info for the fingerprint key.
pub const FINGERPRINT_INFO: &[u8] = b"tessera/fingerprint/v1";
/// HKDF info for the FF1 key.
pub const FF1_INFO: &[u8] = b"tessera/ff1/v1";
/// HKDF info for the audit-log signing key (from the system index key).
pub const AUDIT_INFO: &[u8] = b"tessera/audit/v1";

/// Loading or creating a key failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The KMS failed.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record names a DEK version the tenant does not have.
    #[error("no such data key version")]
    MissingKey,
    /// The tenant was shredded: no key is made for it until an operator
    /// re-creates it.
    #[error("this tenant was shredded; an operator must re-create it before it gets new keys")]
    Shredded,
    /// A seal or shred dropped the cache while this load ran; its key is
    /// not cached, and the call should be retried.
    #[error("the key cache was cleared while this key loaded; retry")]
    Raced,
    /// The audit log refused the event that stores the audit key.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// How long unwrapped keys serve from memory, and how long a KMS call may
/// take.
///
/// Within `lifetime` of its unwrap a cached key serves without the KMS, so
/// a KMS outage shorter than that goes unnoticed by calls on warm keys;
/// past it, the next call unwraps again and fails (UNAVAILABLE) while the
/// KMS is down. A shorter lifetime makes a disabled or revoked master key
/// take effect sooner (the cache is also dropped at once by a seal, a
/// shred or a key change announced by another replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// How long an unwrapped key is used before it is unwrapped again.
    pub lifetime: std::time::Duration,
    /// Longest wait for one KMS call.
    pub kms_timeout: std::time::Duration,
}

/// [`CacheLimits::lifetime`] unless `keys.cache_lifetime_s` says otherwise.
pub const DEFAULT_CACHE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);
/// [`CacheLimits::kms_timeout`] unless `kms.timeout_ms` says otherwise.
pub const DEFAULT_KMS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            lifetime: DEFAULT_CACHE_LIFETIME,
            kms_timeout: DEFAULT_KMS_TIMEOUT,
        }
    }
}

/// A cached key and when it stops being used.
struct Cached<V> {
    value: Arc<V>,
    until_ms: u64,
}

impl<V> std::fmt::Debug for Cached<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("until_ms", &self.until_ms)
            .finish_non_exhaustive()
    }
}

/// The action of the event committed with the audit key's root.
pub const AUDIT_KEY_CREATED: &str = "AuditKeyCreated";

/// The audit-log signing key derived from its root (the system index key).
fn audit_key_of(root: &DataKey) -> Result<DataKey, KeyringError> {
    let hkdf = Hkdf::<Sha256>::new(None, root.expose_secret());
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    hkdf.expand(AUDIT_INFO, okm.as_mut())
        .map_err(|_| KeyringError::MissingKey)?;
    Ok(DataKey::from_bytes(*okm))
}

/// Where the audit key's root (the system index key) sits in the key
/// table. Its creation time dates the first signed append.
pub fn audit_key_context() -> KeyContext {
    KeyContext {
        tenant: TenantId::system(),
        purpose: KeyPurpose::Index,
        version: 1,
    }
}

/// Checkpoint naming a shredded tenant (the job table holds the vault's
/// small pieces of state; DESIGN.md §4 "shared state").
pub fn shredded_marker(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/shredded")
}

/// Checkpoint holding the highest DEK version a tenant ever had: versions
/// made after a shred start above it, so a record of the shredded keys is
/// never mistaken for one of the new keys.
pub fn dek_floor(tenant: &TenantId) -> String {
    format!("tenant/{tenant}/dek-floor")
}

/// The keys derived from a tenant's index key.
///
/// The two HMAC keys are kept as keyed states ([`MacKey`]): every tokenize
/// computes a token id and a fingerprint, every detokenize a token id.
pub struct TenantKeys {
    token_id: MacKey,
    fingerprint: MacKey,
    ff1: Ff1Generator,
}

impl TenantKeys {
    fn derive(tenant: &TenantId, index: &DataKey) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(tenant.as_str().as_bytes()), index.expose_secret());
        let expand = |info: &[u8]| {
            let mut okm = Zeroizing::new([0u8; KEY_LEN]);
            // 32 bytes is far below HKDF-SHA256's 255 × 32 limit.
            let _ = hkdf.expand(info, okm.as_mut());
            DataKey::from_bytes(*okm)
        };
        let ff1_key = expand(FF1_INFO);
        Self {
            token_id: MacKey::new(&expand(TOKEN_ID_INFO)),
            fingerprint: MacKey::new(&expand(FINGERPRINT_INFO)),
            ff1: Ff1Generator::new(&ff1_key, tenant.clone()),
        }
    }

    /// The store id of a token: HMAC-SHA256(token-id key, token).
    pub fn token_id(&self, token: &Token) -> TokenId {
        TokenId::from_bytes(self.token_id.mac(&[token.as_str().as_bytes()]))
    }

    /// The store id a PAN would have if it were one of this tenant's tokens
    /// (for the "input is a live token" check).
    pub fn token_id_of_digits(&self, ascii_digits: &[u8]) -> TokenId {
        TokenId::from_bytes(self.token_id.mac(&[ascii_digits]))
    }

    /// The PAN's fingerprint in one token format:
    /// HMAC-SHA256(fingerprint key, format ‖ PAN).
    ///
    /// The format is part of the message so deterministic lookups are per
    /// tenant *and* format: a request for another format never finds, and
    /// so never returns, a token of the wrong shape (SECURITY.md §5.7).
    pub fn fingerprint(&self, pan: &Pan, format: &TokenFormat) -> Fingerprint {
        let shape = format_tag(format);
        Fingerprint::from_bytes(self.fingerprint.mac(&[
            FINGERPRINT_DOMAIN,
            &shape,
            &pan.expose_ascii(),
        ]))
    }

    /// The tenant's FF1 generator.
    pub fn ff1(&self) -> &Ff1Generator {
        &self.ff1
    }
}

/// Prefix of every fingerprint message; a new message layout gets a new one.
const FINGERPRINT_DOMAIN: &[u8] = b"fp2";

/// The format as four bytes: generator, kept leading, kept trailing, Luhn.
fn format_tag(format: &TokenFormat) -> [u8; 4] {
    let generator = match format.generator() {
        GeneratorKind::Random => 0,
        GeneratorKind::Ff1 => 1,
    };
    let luhn = match format.luhn() {
        LuhnPolicy::Invalid => 0,
        LuhnPolicy::Valid => 1,
        LuhnPolicy::Any => 2,
    };
    // Kept counts are 0, 4, 6 or 8.
    let byte = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
    [
        generator,
        byte(format.keep_leading()),
        byte(format.keep_trailing()),
        luhn,
    ]
}

// Token ids and fingerprints are HMAC-SHA256 outputs, whole.
const _: () = assert!(TOKEN_ID_LEN == 32 && FINGERPRINT_LEN == 32);

/// Caches unwrapped keys; creates a tenant's first keys on first tokenize.
#[derive(Debug)]
pub struct Keyring {
    kms: Arc<dyn Kms>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    deks: RwLock<HashMap<(TenantId, u32), Cached<DataKey>>>,
    current: RwLock<HashMap<TenantId, u32>>,
    tenants: RwLock<HashMap<TenantId, Cached<TenantKeys>>>,
    audit: RwLock<Option<Cached<DataKey>>>,
    /// How long an unwrapped key serves from memory before the KMS is
    /// asked again, and how long one KMS call may take.
    limits: CacheLimits,
    /// Held while this process makes the audit key, so it makes one.
    making_audit_key: tokio::sync::Mutex<()>,
    /// Stores the audit key's root with the first signed head.
    pipeline: Arc<Pipeline>,
    /// Bumped by every clear and forget; a load that started before a bump
    /// must not cache what it loaded (SECURITY.md §5.8), checked under the
    /// cache's write lock.
    epoch: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantKeys(<redacted>)")
    }
}

impl Keyring {
    /// A keyring over `kms` and the key table of `store`; the audit key's
    /// root is stored through `pipeline` (the vault's, writing to `store`).
    pub fn new(
        kms: Arc<dyn Kms>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        pipeline: Arc<Pipeline>,
    ) -> Self {
        Self {
            kms,
            store,
            clock,
            deks: RwLock::default(),
            current: RwLock::default(),
            tenants: RwLock::default(),
            audit: RwLock::default(),
            limits: CacheLimits::default(),
            making_audit_key: tokio::sync::Mutex::default(),
            pipeline,
            epoch: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The same keyring with `limits` on its cache and KMS calls.
    #[must_use]
    pub fn with_limits(mut self, limits: CacheLimits) -> Self {
        self.limits = limits;
        self
    }

    /// A KMS call bounded by [`CacheLimits::kms_timeout`]: a KMS that
    /// accepts connections but never answers fails the call (UNAVAILABLE)
    /// instead of holding it.
    async fn kms_call<T>(
        &self,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        tokio::time::timeout(self.limits.kms_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(KmsError::Unavailable(format!(
                    "the KMS did not answer within {} ms",
                    self.limits.kms_timeout.as_millis()
                )))
            })
    }

    /// A cache entry for `value`, fresh for the configured lifetime less
    /// up to a tenth of it at random: keys loaded together (at start-up)
    /// expire apart, so their reloads do not all reach the KMS at once.
    fn entry<V>(&self, value: &Arc<V>) -> Cached<V> {
        let lifetime = u64::try_from(self.limits.lifetime.as_millis()).unwrap_or(u64::MAX);
        let jitter = crate::csprng::below_u64(lifetime / 10 + 1).unwrap_or(0);
        Cached {
            value: Arc::clone(value),
            until_ms: self
                .clock
                .now_ms()
                .saturating_add(lifetime.saturating_sub(jitter)),
        }
    }

    /// The value of `entry` while it is fresh.
    fn fresh<V>(&self, entry: Option<&Cached<V>>) -> Option<Arc<V>> {
        entry
            .filter(|e| self.clock.now_ms() < e.until_ms)
            .map(|e| Arc::clone(&e.value))
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Caches `value` under `key` in `map` only if no clear or forget ran
    /// since `started` (read under the same write lock the clears take).
    fn cache<K: std::hash::Hash + Eq, V>(
        &self,
        map: &RwLock<HashMap<K, Cached<V>>>,
        started: u64,
        key: K,
        value: &Arc<V>,
    ) -> Result<(), KeyringError> {
        let entry = self.entry(value);
        let mut map = write(map);
        if self.epoch() != started {
            return Err(KeyringError::Raced);
        }
        map.insert(key, entry);
        Ok(())
    }

    /// The tenant's derived keys; with `create`, makes the index key if the
    /// tenant has none yet. `None` when absent and not created.
    pub async fn tenant_keys(
        &self,
        tenant: &TenantId,
        create: bool,
    ) -> Result<Option<Arc<TenantKeys>>, KeyringError> {
        if let Some(keys) = self.fresh(read(&self.tenants).get(tenant)) {
            return Ok(Some(keys));
        }
        let started = self.epoch();
        let ctx = KeyContext {
            tenant: tenant.clone(),
            purpose: KeyPurpose::Index,
            version: 1,
        };
        let Some(index) = self.load_or_create(&ctx, create).await? else {
            return Ok(None);
        };
        let keys = Arc::new(TenantKeys::derive(tenant, &index));
        self.cache(&self.tenants, started, tenant.clone(), &keys)?;
        Ok(Some(keys))
    }

    /// The DEK that seals new records of the tenant, with its version; made
    /// on first use.
    pub async fn current_dek(
        &self,
        tenant: &TenantId,
    ) -> Result<(u32, Arc<DataKey>), KeyringError> {
        let cached = read(&self.current).get(tenant).copied();
        let version = match cached {
            Some(v) => v,
            None => {
                // The newest live version; a tenant without one (new, or
                // re-created after a shred) starts above every version it
                // ever had.
                let latest = match self.live_data_version(tenant).await? {
                    Some(v) => v,
                    None => self.dek_floor(tenant).await?.map_or(1, |f| f + 1),
                };
                write(&self.current).insert(tenant.clone(), latest);
                latest
            }
        };
        let key = self.dek_inner(tenant, version, true).await?;
        Ok((version, key))
    }

    /// A DEK by version, for opening records.
    pub async fn dek(&self, tenant: &TenantId, version: u32) -> Result<Arc<DataKey>, KeyringError> {
        self.dek_inner(tenant, version, false).await
    }

    async fn dek_inner(
        &self,
        tenant: &TenantId,
        version: u32,
        create: bool,
    ) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(key) = self.fresh(read(&self.deks).get(&(tenant.clone(), version))) {
            return Ok(key);
        }
        let started = self.epoch();
        let ctx = KeyContext {
            tenant: tenant.clone(),
            purpose: KeyPurpose::Data,
            version,
        };
        let key = self
            .load_or_create(&ctx, create)
            .await?
            .ok_or(KeyringError::MissingKey)?;
        let key = Arc::new(key);
        self.cache(&self.deks, started, (tenant.clone(), version), &key)?;
        Ok(key)
    }

    /// Makes the next DEK version of a tenant and makes it current.
    pub async fn rotate(&self, tenant: &TenantId) -> Result<u32, KeyringError> {
        let latest = self.latest_data_version(tenant).await?;
        let next = latest.map_or(1, |v| v + 1);
        let key = self.dek_inner(tenant, next, true).await?;
        drop(key);
        write(&self.current).insert(tenant.clone(), next);
        Ok(next)
    }

    /// The newest DEK version the tenant has or ever had (the floor a
    /// shred left), so new versions always number above destroyed ones.
    pub async fn latest_data_version(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<u32>, KeyringError> {
        let live = self.live_data_version(tenant).await?;
        Ok(live.max(self.dek_floor(tenant).await?))
    }

    async fn live_data_version(&self, tenant: &TenantId) -> Result<Option<u32>, KeyringError> {
        Ok(self
            .store
            .wrapped_keys(tenant)
            .await?
            .iter()
            .filter(|k| k.context.purpose == KeyPurpose::Data)
            .map(|k| k.context.version)
            .max())
    }

    async fn dek_floor(&self, tenant: &TenantId) -> Result<Option<u32>, KeyringError> {
        Ok(self
            .store
            .checkpoint(&dek_floor(tenant))
            .await?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(u32::from_be_bytes))
    }

    /// Drops every cached key of one tenant (after a shred or retirement).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        let mut deks = write(&self.deks);
        let mut tenants = write(&self.tenants);
        self.bump_epoch();
        deks.retain(|(t, _), _| t != tenant);
        tenants.remove(tenant);
        write(&self.current).remove(tenant);
    }

    /// Drops one cached DEK version.
    pub fn forget_dek(&self, tenant: &TenantId, version: u32) {
        let mut deks = write(&self.deks);
        self.bump_epoch();
        deks.remove(&(tenant.clone(), version));
    }

    /// The key that signs the audit chain head: HKDF of the system index
    /// key, which the KMS wraps like any other; made on first use.
    ///
    /// A store holding any wrapped key must have a signed head once it has
    /// events (`audit::head_required`), so the root is made before any
    /// other key and stored only in the commit that signs the log's first
    /// head with it (an `AuditKeyCreated` event): a crash between the two
    /// writes can no longer leave a key without its head, which read as a
    /// deleted head forever after.
    pub async fn audit_key(&self) -> Result<Arc<DataKey>, KeyringError> {
        if let Some(key) = self.fresh(read(&self.audit).as_ref()) {
            return Ok(key);
        }
        let started = self.epoch();
        let ctx = audit_key_context();
        // Loads run side by side (each bounded by the KMS timeout); only
        // making the key is one at a time.
        let key = match self.load(&ctx).await? {
            Some(root) => audit_key_of(&root)?,
            None => {
                let _making = self.making_audit_key.lock().await;
                if let Some(key) = self.fresh(read(&self.audit).as_ref()) {
                    return Ok(key);
                }
                match self.load(&ctx).await? {
                    Some(root) => audit_key_of(&root)?,
                    None => self.make_audit_key(&ctx).await?,
                }
            }
        };
        let key = Arc::new(key);
        let entry = self.entry(&key);
        let mut audit = write(&self.audit);
        if self.epoch() != started {
            return Err(KeyringError::Raced);
        }
        *audit = Some(entry);
        Ok(key)
    }

    /// The audit key if its root is stored; never makes one (verifying a
    /// log must not sign it). Always read from the store, never the cache:
    /// a root deleted or replaced since it was cached shows.
    pub async fn stored_audit_key(&self) -> Result<Option<Arc<DataKey>>, KeyringError> {
        match self.load(&audit_key_context()).await? {
            Some(root) => Ok(Some(Arc::new(audit_key_of(&root)?))),
            None => Ok(None),
        }
    }

    /// The key a recovery signs with, and, when the root is gone, the new
    /// root for the recovery's commit to store (a log whose root was
    /// deleted refuses every other append, the root's first one too).
    pub async fn audit_key_for_recovery(
        &self,
    ) -> Result<(Arc<DataKey>, Option<WrappedKeyRecord>), KeyringError> {
        if let Some(key) = self.stored_audit_key().await? {
            return Ok((key, None));
        }
        let ctx = audit_key_context();
        let (root, record) = self.generate(&ctx).await?;
        Ok((Arc::new(audit_key_of(&root)?), Some(record)))
    }

    /// Makes the audit key's root and commits it with a signed
    /// `AuditKeyCreated` event; when another replica stored its root first,
    /// that root's key.
    async fn make_audit_key(&self, ctx: &KeyContext) -> Result<DataKey, KeyringError> {
        // The root is every store's first key, made with the log's first
        // head: a store with a head or with any other key lost its root
        // (deleted; or another replica made it since the caller looked).
        // Checked before the KMS is asked, so a store in that state costs
        // no KMS call per request either.
        if self.store.audit_head().await?.is_some()
            || !self.store.all_wrapped_keys().await?.is_empty()
        {
            let root = self
                .load(ctx)
                .await?
                .ok_or(KeyringError::Audit(AuditError::Tampered))?;
            return audit_key_of(&root);
        }
        let (root, record) = self.generate(ctx).await?;
        let now_ms = record.created_at_ms;
        let key = Arc::new(audit_key_of(&root)?);
        let submission = Submission {
            unit: WriteUnit {
                keys: vec![record],
                ..WriteUnit::default()
            },
            events: vec![AuditEvent {
                time_ms: now_ms,
                principal: "tessera".into(),
                tenant: ctx.tenant.as_str().to_owned(),
                action: AUDIT_KEY_CREATED.into(),
                resource: "key:audit".into(),
                outcome: "OK".into(),
                ..AuditEvent::default()
            }],
            signer: Some(Arc::clone(&key)),
            new_signer: true,
        };
        match self.pipeline.submit(submission).await {
            Ok(_) => {}
            Err(WriteError::Refused(StoreError::AlreadyExists)) => {
                // Another replica's key, or a signed head whose key was
                // deleted: refused, never signed over with a new key.
                let root = self
                    .load(ctx)
                    .await?
                    .ok_or(KeyringError::Audit(AuditError::Tampered))?;
                return audit_key_of(&root);
            }
            Err(WriteError::Audit(e)) => return Err(KeyringError::Audit(e)),
            Err(WriteError::Refused(e) | WriteError::Store(e)) => return Err(e.into()),
            Err(e @ (WriteError::Stopped | WriteError::Overloaded)) => {
                return Err(StoreError::Unavailable(e.to_string()).into());
            }
        }
        audit_key_of(&root)
    }

    /// Drops the cached audit key (the log refused an append: the key may
    /// no longer be the stored root's).
    pub fn forget_audit_key(&self) {
        let mut audit = write(&self.audit);
        self.bump_epoch();
        *audit = None;
    }

    /// Drops every cached key at once (seal). The `Arc`s still held by
    /// in-flight calls zeroize when those calls finish.
    pub fn clear(&self) {
        let mut deks = write(&self.deks);
        let mut tenants = write(&self.tenants);
        let mut audit = write(&self.audit);
        self.bump_epoch();
        deks.clear();
        tenants.clear();
        *audit = None;
        write(&self.current).clear();
    }

    /// A new key for `ctx` from the KMS, and its record for the key table
    /// (not stored yet).
    async fn generate(
        &self,
        ctx: &KeyContext,
    ) -> Result<(DataKey, WrappedKeyRecord), KeyringError> {
        let (key, wrapped) = self.kms_call(self.kms.generate_data_key(ctx)).await?;
        let record = WrappedKeyRecord {
            context: ctx.clone(),
            master_key_id: self.kms.master_key_id().ok_or(KmsError::Sealed)?,
            wrapped,
            created_at_ms: self.clock.now_ms(),
        };
        Ok((key, record))
    }

    /// Reads and unwraps the key of `ctx`, if stored.
    async fn load(&self, ctx: &KeyContext) -> Result<Option<DataKey>, KeyringError> {
        match self.store.wrapped_key(ctx).await? {
            Some(stored) => Ok(Some(
                self.kms_call(self.kms.unwrap_data_key(&stored.wrapped, ctx))
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// Reads and unwraps the key of `ctx`; with `create`, generates and
    /// stores it when missing. A concurrent creator may win the append: then
    /// its key is read back, so every caller ends up with the same key.
    async fn load_or_create(
        &self,
        ctx: &KeyContext,
        create: bool,
    ) -> Result<Option<DataKey>, KeyringError> {
        if let Some(key) = self.load(ctx).await? {
            return Ok(Some(key));
        }
        if !create {
            return Ok(None);
        }
        // The audit key's root comes first (see [`Self::audit_key`]).
        self.audit_key().await?;
        if !ctx.tenant.is_system()
            && self
                .store
                .checkpoint(&shredded_marker(&ctx.tenant))
                .await?
                .is_some()
        {
            return Err(KeyringError::Shredded);
        }
        let (key, record) = self.generate(ctx).await?;
        match self.store.put_wrapped_key(record).await {
            Ok(()) => Ok(Some(key)),
            Err(StoreError::AlreadyExists) => {
                let stored = self
                    .store
                    .wrapped_key(ctx)
                    .await?
                    .ok_or(KeyringError::MissingKey)?;
                Ok(Some(
                    self.kms_call(self.kms.unwrap_data_key(&stored.wrapped, ctx))
                        .await?,
                ))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A poisoned cache lock only means another thread panicked mid-insert of
    // an Arc; the map itself is still consistent.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Profile;
    use crate::kms::dev::DevKms;
    use crate::store::memory::MemoryStore;

    /// Finding 15: a key load that raced `Seal` or `ShredTenant` put its key
    /// back into the cache after the clear. A load now caches only if no
    /// clear or forget ran since it started.
    #[tokio::test]
    async fn a_load_racing_a_clear_or_forget_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let kms = Arc::new(DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap());
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let pipeline = Arc::new(Pipeline::new(Arc::clone(&store)));
        let ring = Keyring::new(kms, store, Arc::new(ManualClock::new(0)), pipeline);
        let tenant = TenantId::new("acme").unwrap();
        let key = Arc::new(DataKey::from_bytes([1; 32]));

        let started = ring.epoch();
        ring.clear();
        let raced = ring.cache(&ring.deks, started, (tenant.clone(), 1), &key);
        assert!(matches!(raced, Err(KeyringError::Raced)));
        assert!(read(&ring.deks).is_empty());

        let started = ring.epoch();
        ring.forget_tenant(&tenant);
        assert!(matches!(
            ring.cache(&ring.deks, started, (tenant.clone(), 1), &key),
            Err(KeyringError::Raced)
        ));

        // Without a clear in between, loads cache as before.
        let started = ring.epoch();
        ring.cache(&ring.deks, started, (tenant.clone(), 1), &key)
            .unwrap();
        assert_eq!(read(&ring.deks).len(), 1);
        let (version, _) = ring.current_dek(&tenant).await.unwrap();
        assert_eq!(version, 1);
    }
}

#[cfg(test)]
mod lifetime_tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use async_trait::async_trait;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Profile;
    use crate::domain::key::{KeyId, WrappedKey};
    use crate::kms::dev::DevKms;
    use crate::store::memory::MemoryStore;

    /// A KMS that stops answering (accepts the call, never replies) while
    /// `hung` is set.
    #[derive(Debug)]
    struct Unanswering {
        inner: DevKms,
        hung: AtomicBool,
    }

    impl Unanswering {
        async fn gate(&self) {
            if self.hung.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
    }

    #[async_trait]
    impl Kms for Unanswering {
        async fn generate_data_key(
            &self,
            ctx: &KeyContext,
        ) -> Result<(DataKey, WrappedKey), KmsError> {
            self.gate().await;
            self.inner.generate_data_key(ctx).await
        }
        async fn unwrap_data_key(
            &self,
            wrapped: &WrappedKey,
            ctx: &KeyContext,
        ) -> Result<DataKey, KmsError> {
            self.gate().await;
            self.inner.unwrap_data_key(wrapped, ctx).await
        }
        async fn wrap_data_key(
            &self,
            key: &DataKey,
            ctx: &KeyContext,
        ) -> Result<WrappedKey, KmsError> {
            self.gate().await;
            self.inner.wrap_data_key(key, ctx).await
        }
        async fn rotate_master_key(&self) -> Result<KeyId, KmsError> {
            self.inner.rotate_master_key().await
        }
        fn master_key_id(&self) -> Option<KeyId> {
            self.inner.master_key_id()
        }
        fn backend_name(&self) -> &'static str {
            "unanswering"
        }
        fn is_production_grade(&self) -> bool {
            false
        }
    }

    /// Issue 11: cached keys never expired, and a KMS call that got no
    /// answer held its caller for as long as the KMS stayed silent. Keys
    /// now serve for their configured lifetime, then the KMS is asked
    /// again, and a call it does not answer fails after the timeout.
    #[tokio::test]
    async fn cached_keys_serve_for_their_lifetime_then_a_silent_kms_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let kms = Arc::new(Unanswering {
            inner: DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap(),
            hung: AtomicBool::new(false),
        });
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let limits = CacheLimits {
            lifetime: Duration::from_secs(60),
            kms_timeout: Duration::from_millis(200),
        };
        let ring = Keyring::new(
            kms.clone(),
            Arc::clone(&store),
            clock.clone(),
            Arc::new(Pipeline::new(store)),
        )
        .with_limits(limits);
        let tenant = TenantId::new("acme").unwrap();
        ring.current_dek(&tenant).await.unwrap();
        ring.tenant_keys(&tenant, true).await.unwrap().unwrap();

        kms.hung.store(true, Ordering::SeqCst);
        // Fresh for at least nine tenths of the lifetime (the jitter).
        clock.advance_ms(53_900);
        ring.dek(&tenant, 1).await.unwrap();
        ring.tenant_keys(&tenant, false).await.unwrap().unwrap();
        ring.audit_key().await.unwrap();

        clock.advance_ms(6_200);
        let started = Instant::now();
        assert!(matches!(
            ring.dek(&tenant, 1).await,
            Err(KeyringError::Kms(KmsError::Unavailable(_)))
        ));
        assert!(matches!(
            ring.tenant_keys(&tenant, false).await,
            Err(KeyringError::Kms(KmsError::Unavailable(_)))
        ));
        assert!(matches!(
            ring.audit_key().await,
            Err(KeyringError::Kms(KmsError::Unavailable(_)))
        ));
        assert!(started.elapsed() < Duration::from_secs(3));

        kms.hung.store(false, Ordering::SeqCst);
        ring.dek(&tenant, 1).await.unwrap();
        ring.tenant_keys(&tenant, false).await.unwrap().unwrap();
    }
}
