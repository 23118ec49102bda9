//! Use cases: tokenize, detokenize, token info, delete, and (in [`admin`])
//! seal, unseal, key status, rotation and crypto-shredding. No wire types here.
//!
//! The caller (the gRPC service) has already authenticated the principal and
//! checked its role; every method takes the principal's tenant and never
//! reaches another tenant's records.

pub mod admin;
pub mod auditing;
pub mod compact;
pub mod reencrypt;
mod sealing;
mod tokenize;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::domain::{CardBrand, MaskedPan, Pan, TenantId, Token, TokenId};
use crate::envelope::{self, Binding, EnvelopeError};
use crate::keyring::{Keyring, KeyringError, TenantKeys};
use crate::kms::{Kms, KmsError};
use crate::pipeline::{Pipeline, WriteError};
use crate::store::{
    PublicFacts, Store, StoreError, StoredRecord, Tombstone, TombstoneReason, WriteUnit,
};
use crate::tokens::{GenerateError, GeneratorKind, LuhnPolicy, TokenFormat};

/// Random draws a tokenize makes before it searches a small bucket to the
/// end. At 32 draws a bucket must be over 97 % full before a draw-only
/// tokenize fails once in a hundred.
pub const RANDOM_DRAWS: u32 = 32;

/// Buckets of at most this many tokens are searched to the end when the
/// random draws keep colliding (at most this many reads, once per full-ish
/// bucket); larger ones are never near full in practice.
pub const EXHAUSTIVE_SEARCH_LIMIT: u64 = 10_000;

/// Times an FF1 tokenize re-searches its generation when a racing writer
/// takes the one found free.
pub(crate) const FF1_PLACE_ATTEMPTS: u32 = 4;

/// Vault-wide policy.
#[derive(Debug, Clone)]
pub struct VaultPolicy {
    /// Format used for fields a request leaves unset.
    pub default_format: TokenFormat,
    /// Deterministic mode when a request does not say.
    pub deterministic_by_default: bool,
    /// Most items in one batch call.
    pub max_batch_items: usize,
    /// Most metadata entries per token.
    pub max_metadata_entries: usize,
    /// Most metadata bytes (keys plus values) per token.
    pub max_metadata_bytes: usize,
    /// Longest TTL accepted.
    pub max_ttl: Duration,
    /// Cryptoperiod of a data key version: older active keys are flagged
    /// overdue (PCI DSS 3.7.4).
    pub data_key_max_age: Duration,
    /// Throttle for re-encryption, records per second (`None` = as fast as
    /// the store allows), so a background job never starves live traffic.
    pub reencrypt_records_per_second: Option<u32>,
    /// Whether a tokenize whose audit event cannot be written is refused
    /// (detokenize and admin calls always are).
    pub audit_tokenize_fail_closed: bool,
    /// How long unwrapped keys serve from memory, and how long a KMS call
    /// may take.
    pub key_cache: crate::keyring::CacheLimits,
    /// How long a dead record is kept before compaction may purge it,
    /// counted from its tombstone.
    pub purge_grace: Duration,
    /// Throttle for compaction, records examined per second (`None` = as
    /// fast as the store allows).
    pub compact_records_per_second: Option<u32>,
}

impl Default for VaultPolicy {
    fn default() -> Self {
        Self {
            default_format: TokenFormat::default(),
            deterministic_by_default: false,
            max_batch_items: 1000,
            max_metadata_entries: 16,
            max_metadata_bytes: 2048,
            max_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            data_key_max_age: Duration::from_secs(365 * 24 * 3600),
            reencrypt_records_per_second: None,
            audit_tokenize_fail_closed: true,
            key_cache: crate::keyring::CacheLimits::default(),
            purge_grace: Duration::from_secs(7 * 24 * 3600),
            compact_records_per_second: None,
        }
    }
}

/// A use case failed. Messages never contain a PAN or a token's digits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// A request field is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field's name in the API.
        field: &'static str,
        /// What is wrong, without the value.
        reason: String,
    },
    /// Unknown, expired, consumed, deleted or another tenant's token: one
    /// answer for all, so none can be told apart.
    #[error("token not found")]
    NotFound,
    /// The token format cannot be honoured for this PAN.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// A live deterministic token of this card exists in this format, but
    /// with other options: returning it would change the contract.
    #[error(
        "a live deterministic token of this card exists with a different {option}; request the same {option} or delete that token first"
    )]
    ReuseConflict {
        /// The API name of the option that differs.
        option: &'static str,
    },
    /// A concurrent tokenize of the same card, or a seal or shred, changed
    /// what this call was using; a retry succeeds (or meets the new state).
    #[error("a concurrent change conflicted with this call; retry")]
    Contended,
    /// The tenant was shredded and not re-created by an operator.
    #[error(
        "this tenant was shredded; an operator must re-create it (RecreateTenant) before it tokenizes again"
    )]
    TenantShredded,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The KMS failed.
    #[error(transparent)]
    Kms(KmsError),
    /// A record failed to open (tampered or wrong key): the opaque error.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A record names a key the tenant does not have.
    #[error("record key missing")]
    MissingKey,
    /// The vault is sealed: it serves only health, GetStatus and Unseal.
    #[error("the vault is sealed")]
    Sealed,
    /// An admin action cannot run in the current state.
    #[error("{0}")]
    Precondition(String),
    /// The audit event could not be written: the call must fail closed.
    #[error("audit log unavailable: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

impl From<crate::csprng::RngError> for VaultError {
    fn from(e: crate::csprng::RngError) -> Self {
        Self::Generate(e.into())
    }
}

impl From<WriteError> for VaultError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Refused(e) | WriteError::Store(e) => Self::Store(e),
            WriteError::Audit(e) => Self::Audit(e),
            WriteError::Stopped | WriteError::Overloaded => {
                Self::Store(StoreError::Unavailable(e.to_string()))
            }
        }
    }
}

impl From<KeyringError> for VaultError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Kms(e) => e.into(),
            KeyringError::Store(e) => Self::Store(e),
            KeyringError::MissingKey => Self::MissingKey,
            KeyringError::Shredded => Self::TenantShredded,
            KeyringError::Raced => Self::Contended,
            KeyringError::Audit(e) => Self::Audit(e),
        }
    }
}

impl VaultError {
    fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.to_string(),
        }
    }
}

/// Per-request format choices; `None` takes the vault default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FormatRequest {
    /// Generator.
    pub generator: Option<GeneratorKind>,
    /// Leading digits kept.
    pub keep_leading: Option<u32>,
    /// Trailing digits kept.
    pub keep_trailing: Option<u32>,
    /// Luhn policy.
    pub luhn: Option<LuhnPolicy>,
}

/// One tokenize request, parsed.
#[derive(Debug)]
pub struct TokenizeCommand {
    /// The PAN.
    pub pan: Pan,
    /// Format overrides.
    pub format: FormatRequest,
    /// Deterministic override.
    pub deterministic: Option<bool>,
    /// Lifetime; `None` = no expiry.
    pub ttl: Option<Duration>,
    /// Consumed by the first detokenize.
    pub single_use: bool,
    /// Non-sensitive metadata.
    pub metadata: BTreeMap<String, String>,
}

/// The result of a tokenize.
#[derive(Debug)]
pub struct Tokenized {
    /// The token.
    pub token: Token,
    /// Its keyed id: how the store and the audit log name it.
    pub token_id: TokenId,
    /// Masked PAN.
    pub masked_pan: MaskedPan,
    /// Brand.
    pub brand: CardBrand,
    /// An existing live token was returned.
    pub reused: bool,
}

impl Tokenized {
    /// The same token again, as returned to a later item of one batch.
    fn repeated(&self) -> Self {
        Self {
            token: self.token.copy(),
            token_id: self.token_id,
            masked_pan: self.masked_pan.clone(),
            brand: self.brand,
            reused: true,
        }
    }
}

/// A unit that tombstones `stored`.
/// Holds a background job to `rate` records per second (`None` or 0: no
/// limit): returns when a page of `records` started at `page_started` has
/// used its share of time, so a job never starves live traffic.
async fn pace(page_started: tokio::time::Instant, records: u64, rate: Option<u32>) {
    if let Some(rate) = rate.filter(|r| *r > 0) {
        let records = f64::from(u32::try_from(records).unwrap_or(u32::MAX));
        let budget = Duration::from_secs_f64(records / f64::from(rate));
        tokio::time::sleep_until(page_started + budget).await;
    }
}

fn tombstone_of(stored: &StoredRecord, tombstone: Tombstone) -> WriteUnit {
    WriteUnit {
        tombstones: vec![(stored.record.token_id, tombstone)],
        ..WriteUnit::default()
    }
}

/// Public facts of a live token.
pub type TokenInfo = PublicFacts;

/// The vault: use cases over a store, a keyring and a clock.
#[derive(Debug)]
pub struct Vault {
    store: Arc<dyn Store>,
    kms: Arc<dyn Kms>,
    keys: Keyring,
    clock: Arc<dyn Clock>,
    policy: VaultPolicy,
    sealed: AtomicBool,
    /// The store change of the newest seal this replica's last opening
    /// superseded (see [`Self::last_seal`]): a seal signalled by a later
    /// change is an order, an earlier one history. Store changes, not
    /// clocks: one counter every replica shares, so neither clock skew nor
    /// an unseal racing a second seal undoes that seal.
    opened_after_seal: std::sync::atomic::AtomicU64,
    /// The newest seal this replica has acted on (by sealing, or by
    /// adopting it at start): a seal is followed once, not at every look.
    seals_followed: std::sync::atomic::AtomicU64,
    jobs: reencrypt::RunningJobs,
    /// Held while this process runs a compaction.
    compacting: compact::CompactionLatch,
    /// Every record, tombstone and audit event is committed through it.
    pipeline: Arc<Pipeline>,
    audit: crate::audit::AuditLog,
    sinks: Vec<crate::audit::sink::AuditSink>,
}

/// The plaintext sealed in each record: `u8 len ‖ PAN digits ‖ token digits`.
/// Sealing the token too lets deterministic mode return an existing token
/// although the store knows tokens only by keyed hash.
pub(crate) fn encode_payload(pan: &Pan, token: &Token) -> Zeroizing<Vec<u8>> {
    let pan_ascii = pan.expose_ascii();
    let mut out = Zeroizing::new(Vec::with_capacity(1 + pan_ascii.len() + token.len()));
    // A PAN has at most 19 digits.
    out.push(u8::try_from(pan_ascii.len()).unwrap_or(0));
    out.extend_from_slice(&pan_ascii);
    out.extend_from_slice(token.as_str().as_bytes());
    out
}

fn decode_payload(payload: &[u8]) -> Result<(Pan, Token), VaultError> {
    let opaque = || VaultError::Envelope(EnvelopeError::Unreadable);
    let (&len, rest) = payload.split_first().ok_or_else(opaque)?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(opaque());
    }
    let (pan, token) = rest.split_at(len);
    let pan = Pan::parse_bytes(pan).map_err(|_| opaque())?;
    let token = std::str::from_utf8(token).map_err(|_| opaque())?;
    let token = Token::parse(token).map_err(|_| opaque())?;
    Ok((pan, token))
}

impl Vault {
    /// The store (shared state lives in it too).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A vault over its parts.
    pub fn new(
        kms: Arc<dyn Kms>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        policy: VaultPolicy,
    ) -> Self {
        let sealed = kms.unseal_progress().is_some_and(|p| p.sealed);
        let pipeline = Arc::new(Pipeline::new(Arc::clone(&store)));
        let audit = crate::audit::AuditLog::new(Arc::clone(&store), Arc::clone(&pipeline));
        Self {
            keys: Keyring::new(
                Arc::clone(&kms),
                Arc::clone(&store),
                Arc::clone(&clock),
                Arc::clone(&pipeline),
            )
            .with_limits(policy.key_cache),
            kms,
            store,
            clock,
            policy,
            sealed: AtomicBool::new(sealed),
            // Until `adopt_seal_state`: every seal signalled is an order.
            opened_after_seal: std::sync::atomic::AtomicU64::new(0),
            seals_followed: std::sync::atomic::AtomicU64::new(0),
            jobs: reencrypt::RunningJobs::default(),
            compacting: compact::CompactionLatch::default(),
            pipeline,
            audit,
            sinks: Vec::new(),
        }
    }

    /// Also sends every audit event, once durable, to `sink` (a SIEM feed).
    pub fn with_audit_sink(mut self, sink: crate::audit::sink::AuditSink) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Whether the vault is sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::SeqCst)
    }

    fn ensure_unsealed(&self) -> Result<(), VaultError> {
        if self.is_sealed() {
            Err(VaultError::Sealed)
        } else {
            Ok(())
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &VaultPolicy {
        &self.policy
    }

    /// Checks the store answers (for health).
    pub async fn ping(&self) -> Result<(), VaultError> {
        if !self.pipeline.is_running() {
            return Err(StoreError::Unavailable("the write pipeline stopped".into()).into());
        }
        if self.pipeline.is_refusing_appends() {
            return Err(StoreError::Damaged(
                "the audit log was cut or rewritten behind this replica; run `tessera audit recover`",
            )
            .into());
        }
        self.store.ping().await.map_err(VaultError::from)
    }

    fn is_live(&self, stored: &StoredRecord, now: u64) -> bool {
        stored.tombstone.is_none() && stored.record.facts.expires_at_ms.is_none_or(|at| now < at)
    }

    async fn open(
        &self,
        tenant: &TenantId,
        stored: &StoredRecord,
    ) -> Result<(Pan, Token), VaultError> {
        let record = &stored.record;
        let version = envelope::dek_version(&record.sealed_pan)?;
        let dek = self.keys.dek(tenant, version).await?;
        let binding = Binding {
            tenant,
            token_id: &record.token_id,
            dek_version: version,
        };
        let payload = envelope::open(&dek, binding, &record.sealed_pan)?;
        decode_payload(&payload)
    }

    /// Finds the live record of `token` in `tenant`, or `NotFound`.
    async fn live_record(
        &self,
        tenant: &TenantId,
        token: &Token,
    ) -> Result<(StoredRecord, Arc<TenantKeys>), VaultError> {
        self.ensure_unsealed()?;
        let keys = self
            .keys
            .tenant_keys(tenant, false)
            .await?
            .ok_or(VaultError::NotFound)?;
        let stored = self
            .store
            .get(&keys.token_id(token))
            .await?
            .ok_or(VaultError::NotFound)?;
        if stored.record.tenant != *tenant || !self.is_live(&stored, self.clock.now_ms()) {
            return Err(VaultError::NotFound);
        }
        Ok((stored, keys))
    }

    /// Returns the PAN behind `token`. A single-use token is consumed; of
    /// concurrent redemptions exactly one succeeds.
    pub async fn detokenize(&self, tenant: &TenantId, token: &Token) -> Result<Pan, VaultError> {
        self.detokenize_with(tenant, token, || async { Ok(()) })
            .await
    }

    /// [`Self::detokenize`], running `before_consume` first when the token is
    /// single-use: consuming is a state change, and the caller writes its
    /// write-ahead audit intent there (SECURITY.md §5.3). When it fails,
    /// the token stays redeemable.
    pub async fn detokenize_with<F, Fut>(
        &self,
        tenant: &TenantId,
        token: &Token,
        before_consume: F,
    ) -> Result<Pan, VaultError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), VaultError>>,
    {
        let (stored, pan) = self.read_pan(tenant, token).await?;
        if stored.record.facts.single_use {
            before_consume().await?;
            let tombstone = Tombstone {
                reason: TombstoneReason::Consumed,
                at_ms: self.clock.now_ms(),
            };
            match self
                .commit_write(tombstone_of(&stored, tombstone), None)
                .await
            {
                Ok(_) => {}
                Err(WriteError::Refused(StoreError::AlreadyExists)) => {
                    return Err(VaultError::NotFound);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pan)
    }

    /// The PAN behind `token` for an approved export: as
    /// [`Self::detokenize`], but a single-use token is not consumed (an
    /// export copies the vault for a migration; the tokens stay as they
    /// were for the callers that still hold them).
    pub async fn export_pan(&self, tenant: &TenantId, token: &Token) -> Result<Pan, VaultError> {
        self.read_pan(tenant, token).await.map(|(_, pan)| pan)
    }

    /// The live record of `token` and the PAN it seals.
    async fn read_pan(
        &self,
        tenant: &TenantId,
        token: &Token,
    ) -> Result<(StoredRecord, Pan), VaultError> {
        let (stored, _) = self.live_record(tenant, token).await?;
        let (pan, sealed_token) = self.open(tenant, &stored).await?;
        // The record must be the one this token names (it always is, unless
        // the store was tampered with); compare in constant time.
        if !bool::from(
            sealed_token
                .as_str()
                .as_bytes()
                .ct_eq(token.as_str().as_bytes()),
        ) {
            return Err(VaultError::Envelope(EnvelopeError::Unreadable));
        }
        Ok((stored, pan))
    }

    /// The public facts of a live token.
    pub async fn token_info(
        &self,
        tenant: &TenantId,
        token: &Token,
    ) -> Result<TokenInfo, VaultError> {
        let (stored, _) = self.live_record(tenant, token).await?;
        Ok(stored.record.facts)
    }

    /// Deletes a live token (appends a tombstone).
    pub async fn delete(&self, tenant: &TenantId, token: &Token) -> Result<(), VaultError> {
        let (stored, _) = self.live_record(tenant, token).await?;
        let tombstone = Tombstone {
            reason: TombstoneReason::Deleted,
            at_ms: self.clock.now_ms(),
        };
        match self
            .commit_write(tombstone_of(&stored, tombstone), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(WriteError::Refused(StoreError::AlreadyExists)) => Err(VaultError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks a batch's size against the policy.
    pub fn check_batch_len(&self, len: usize) -> Result<(), VaultError> {
        if len == 0 {
            return Err(VaultError::invalid(
                "items",
                "a batch needs at least one item",
            ));
        }
        if len > self.policy.max_batch_items {
            return Err(VaultError::invalid(
                "items",
                format!(
                    "at most {} items per batch, got {len}",
                    self.policy.max_batch_items
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
