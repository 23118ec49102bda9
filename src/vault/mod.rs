//! Use cases: tokenize, detokenize, token info, delete, and (in [`admin`])
//! seal, unseal, key status, rotation and crypto-shredding. No wire types here.
//!
//! The caller (the gRPC service) has already authenticated the principal and
//! checked its role; every method takes the principal's tenant and never
//! reaches another tenant's records.

pub mod admin;
pub mod auditing;
pub mod reencrypt;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::domain::{CardBrand, Fingerprint, MaskedPan, Pan, TenantId, Token};
use crate::envelope::{self, Binding, EnvelopeError};
use crate::keyring::{Keyring, KeyringError, TenantKeys};
use crate::kms::{Kms, KmsError};
use crate::secret::DataKey;
use crate::store::{
    PublicFacts, SealedRecord, Store, StoreError, StoredRecord, Tombstone, TombstoneReason,
};
use crate::tokens::random::RandomGenerator;
use crate::tokens::{
    FormatError, GenerateError, GeneratorKind, LuhnPolicy, TokenFormat, TokenGenerator,
};

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
const FF1_PLACE_ATTEMPTS: u32 = 4;

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

impl From<KeyringError> for VaultError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Kms(e) => e.into(),
            KeyringError::Store(e) => Self::Store(e),
            KeyringError::MissingKey => Self::MissingKey,
            KeyringError::Shredded => Self::TenantShredded,
            KeyringError::Raced => Self::Contended,
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
    /// Masked PAN.
    pub masked_pan: MaskedPan,
    /// Brand.
    pub brand: CardBrand,
    /// An existing live token was returned.
    pub reused: bool,
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
    jobs: reencrypt::RunningJobs,
    audit: crate::audit::AuditLog,
    sinks: Vec<crate::audit::sink::AuditSink>,
}

/// The plaintext sealed in each record: `u8 len ‖ PAN digits ‖ token digits`.
/// Sealing the token too lets deterministic mode return an existing token
/// although the store knows tokens only by keyed hash.
fn encode_payload(pan: &Pan, token: &Token) -> Zeroizing<Vec<u8>> {
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

/// Everything one tokenize needs to place its token.
struct Issue<'a> {
    tenant: &'a TenantId,
    keys: &'a TenantKeys,
    pan: &'a Pan,
    format: TokenFormat,
    fingerprint: Option<Fingerprint>,
    facts: PublicFacts,
    dek_version: u32,
    dek: &'a DataKey,
    now: u64,
}

/// What came of one append attempt.
enum Placed {
    /// The token was issued (or a concurrent one with the same options reused).
    Issued(Tokenized),
    /// The token value was taken.
    Taken,
}

/// The first option in which a live token's facts differ from the facts a
/// new token would get (DESIGN.md §2: reuse only when the options match).
/// The TTL is compared as the lifetime it was issued with.
fn reuse_conflict(existing: &PublicFacts, wanted: &PublicFacts) -> Option<&'static str> {
    let lifetime = |f: &PublicFacts| f.expires_at_ms.map(|at| at.saturating_sub(f.created_at_ms));
    if existing.single_use != wanted.single_use {
        Some("single_use")
    } else if lifetime(existing) != lifetime(wanted) {
        Some("ttl")
    } else if existing.metadata != wanted.metadata {
        Some("metadata")
    } else {
        None
    }
}

impl Vault {
    /// A vault over its parts.
    pub fn new(
        kms: Arc<dyn Kms>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        policy: VaultPolicy,
    ) -> Self {
        let sealed = kms.unseal_progress().is_some_and(|p| p.sealed);
        let audit = crate::audit::AuditLog::new(Arc::clone(&store));
        Self {
            keys: Keyring::new(Arc::clone(&kms), Arc::clone(&store), Arc::clone(&clock)),
            kms,
            store,
            clock,
            policy,
            sealed: AtomicBool::new(sealed),
            jobs: reencrypt::RunningJobs::default(),
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
        self.store.ping().await.map_err(VaultError::from)
    }

    /// The format for a PAN of `len` digits. Fields the request sets are
    /// honoured exactly (or refused with the reason); kept-digit counts it
    /// leaves unset start from the vault default and give way, leading
    /// digits first, until the token keeps no more than PCI SSC FAQ 1091
    /// allows for the length, so the default format serves every valid PAN
    /// of 12–19 digits.
    fn resolve_format(&self, req: FormatRequest, len: usize) -> Result<TokenFormat, VaultError> {
        let d = self.policy.default_format;
        let generator = req.generator.unwrap_or(d.generator());
        let luhn = req.luhn.unwrap_or(d.luhn());
        let default_lead = u32::try_from(d.keep_leading()).unwrap_or(0);
        let default_trail = u32::try_from(d.keep_trailing()).unwrap_or(0);
        let build = |lead: u32, trail: u32| {
            TokenFormat::new(generator, lead, trail, luhn).map_err(|e| match e {
                FormatError::KeepLeading => VaultError::invalid("format.keep_leading", e),
                FormatError::KeepTrailing => VaultError::invalid("format.keep_trailing", e),
            })
        };
        let lead = req.keep_leading.unwrap_or(default_lead);
        let trail = req.keep_trailing.unwrap_or(default_trail);
        let wanted = build(lead, trail)?;
        let Err(refusal) = wanted.check_disclosure(len) else {
            return Ok(wanted);
        };
        let (lead_set, trail_set) = (req.keep_leading.is_some(), req.keep_trailing.is_some());
        let fallbacks = [
            (!lead_set).then_some((0, trail)),
            (!trail_set).then_some((lead, 0)),
            (!lead_set && !trail_set).then_some((0, 0)),
        ];
        for (lead, trail) in fallbacks.into_iter().flatten() {
            let format = build(lead, trail)?;
            if format.check_disclosure(len).is_ok() {
                return Ok(format);
            }
        }
        Err(refusal.into())
    }

    fn check_metadata(&self, metadata: &BTreeMap<String, String>) -> Result<(), VaultError> {
        if metadata.len() > self.policy.max_metadata_entries {
            return Err(VaultError::invalid(
                "metadata",
                format!("at most {} entries", self.policy.max_metadata_entries),
            ));
        }
        let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > self.policy.max_metadata_bytes {
            return Err(VaultError::invalid(
                "metadata",
                format!("at most {} bytes", self.policy.max_metadata_bytes),
            ));
        }
        if metadata.iter().any(|(k, v)| {
            crate::leak::contains_card_number_in_text(k)
                || crate::leak::contains_card_number_in_text(v)
        }) {
            return Err(VaultError::invalid(
                "metadata",
                "must not contain card numbers",
            ));
        }
        Ok(())
    }

    fn expiry(&self, now: u64, ttl: Option<Duration>) -> Result<Option<u64>, VaultError> {
        match ttl {
            None => Ok(None),
            Some(ttl) if ttl.is_zero() => Ok(None),
            Some(ttl) if ttl > self.policy.max_ttl => Err(VaultError::invalid(
                "ttl",
                "longer than the vault's maximum",
            )),
            Some(ttl) => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                Ok(Some(now.saturating_add(ms.max(1))))
            }
        }
    }

    fn is_live(&self, stored: &StoredRecord, now: u64) -> bool {
        stored.tombstone.is_none() && stored.record.facts.expires_at_ms.is_none_or(|at| now < at)
    }

    /// Tokenizes one PAN for `tenant`.
    pub async fn tokenize(
        &self,
        tenant: &TenantId,
        cmd: TokenizeCommand,
    ) -> Result<Tokenized, VaultError> {
        self.ensure_unsealed()?;
        let format = self.resolve_format(cmd.format, cmd.pan.len())?;
        self.check_metadata(&cmd.metadata)?;
        let now = self.clock.now_ms();
        let expires_at_ms = self.expiry(now, cmd.ttl)?;
        let keys = self
            .keys
            .tenant_keys(tenant, true)
            .await?
            .ok_or(VaultError::MissingKey)?;

        // Distinguishability: a live token of this tenant is never accepted
        // as a PAN (PCI tokenization guidance).
        let as_token = self
            .store
            .get(&keys.token_id_of_digits(&cmd.pan.expose_ascii()))
            .await?;
        if as_token.is_some_and(|s| s.record.tenant == *tenant && self.is_live(&s, now)) {
            return Err(VaultError::invalid(
                "pan",
                "is a token of this vault, not a card number",
            ));
        }

        let facts = PublicFacts {
            masked_pan: cmd.pan.masked(),
            brand: cmd.pan.brand(),
            created_at_ms: now,
            expires_at_ms,
            single_use: cmd.single_use,
            metadata: cmd.metadata,
        };
        let deterministic = format.generator() == GeneratorKind::Ff1
            || cmd
                .deterministic
                .unwrap_or(self.policy.deterministic_by_default);
        let fingerprint = deterministic.then(|| keys.fingerprint(&cmd.pan, &format));
        if let Some(fp) = &fingerprint
            && let Some(existing) = self.store.find_by_fingerprint(tenant, fp).await?
            && let Some(reused) = self.reuse(tenant, &existing, &facts, now).await?
        {
            return Ok(reused);
        }

        let (dek_version, dek) = self.keys.current_dek(tenant).await?;
        let issue = Issue {
            tenant,
            keys: &keys,
            pan: &cmd.pan,
            format,
            fingerprint,
            facts,
            dek_version,
            dek: &dek,
            now,
        };
        match format.generator() {
            GeneratorKind::Random => self.issue_random(&issue).await,
            GeneratorKind::Ff1 => self.issue_ff1(&issue).await,
        }
    }

    /// Issues a random token: uniform draws from the card's bucket, then,
    /// when they keep colliding and the bucket is small enough, a search of
    /// the whole bucket from a random place. A full bucket is
    /// `BucketExhausted` (RESOURCE_EXHAUSTED), never an endless loop.
    async fn issue_random(&self, issue: &Issue<'_>) -> Result<Tokenized, VaultError> {
        for _ in 0..RANDOM_DRAWS {
            let token = RandomGenerator.generate(issue.pan, &issue.format, 0)?;
            if let Placed::Issued(done) = self.place(issue, token).await? {
                return Ok(done);
            }
        }
        let capacity = RandomGenerator::capacity(issue.pan, &issue.format);
        if capacity <= EXHAUSTIVE_SEARCH_LIMIT {
            let start = crate::csprng::below_u64(capacity)?;
            for step in 0..capacity {
                let index = (start + step) % capacity;
                let token = RandomGenerator::candidate(issue.pan, &issue.format, index)?;
                if self
                    .store
                    .get(&issue.keys.token_id(&token))
                    .await?
                    .is_some()
                {
                    continue;
                }
                if let Placed::Issued(done) = self.place(issue, token).await? {
                    return Ok(done);
                }
            }
        }
        Err(GenerateError::BucketExhausted { capacity }.into())
    }

    /// Issues an FF1 token. Generation 0 first; when its value is taken (an
    /// earlier token of this card was deleted, consumed or expired, and the
    /// store never overwrites), the first free generation above the taken
    /// ones, found in O(log n) reads for n dead tokens.
    async fn issue_ff1(&self, issue: &Issue<'_>) -> Result<Tokenized, VaultError> {
        let mut generation = 0;
        for _ in 0..FF1_PLACE_ATTEMPTS {
            let token = issue
                .keys
                .ff1()
                .generate(issue.pan, &issue.format, generation)?;
            if let Placed::Issued(done) = self.place(issue, token).await? {
                return Ok(done);
            }
            generation = self.free_ff1_generation(issue).await?;
        }
        Err(VaultError::Contended)
    }

    /// The generation just above the taken ones: doubles until a free one,
    /// then bisects between the last taken and the first free. Generations
    /// are used in order, so taken ones form a prefix and this finds its end.
    async fn free_ff1_generation(&self, issue: &Issue<'_>) -> Result<u32, VaultError> {
        let (mut taken, mut free) = (0u32, 1u32);
        while self.ff1_generation_taken(issue, free).await? {
            taken = free;
            free = free.checked_mul(2).ok_or(GenerateError::BucketExhausted {
                capacity: u64::from(u32::MAX),
            })?;
        }
        while free - taken > 1 {
            let mid = taken + (free - taken) / 2;
            if self.ff1_generation_taken(issue, mid).await? {
                taken = mid;
            } else {
                free = mid;
            }
        }
        Ok(free)
    }

    async fn ff1_generation_taken(
        &self,
        issue: &Issue<'_>,
        generation: u32,
    ) -> Result<bool, VaultError> {
        let token = issue
            .keys
            .ff1()
            .generate(issue.pan, &issue.format, generation)?;
        Ok(self
            .store
            .get(&issue.keys.token_id(&token))
            .await?
            .is_some())
    }

    /// Seals `token`'s record and appends it. A taken token value is
    /// `Taken`; a fingerprint held by a concurrent tokenize of the same card
    /// returns that token when its options match.
    async fn place(&self, issue: &Issue<'_>, token: Token) -> Result<Placed, VaultError> {
        let token_id = issue.keys.token_id(&token);
        let binding = Binding {
            tenant: issue.tenant,
            token_id: &token_id,
            dek_version: issue.dek_version,
        };
        let sealed_pan = envelope::seal(issue.dek, binding, &encode_payload(issue.pan, &token))?;
        let record = SealedRecord {
            token_id,
            tenant: issue.tenant.clone(),
            fingerprint: issue.fingerprint,
            facts: issue.facts.clone(),
            sealed_pan,
        };
        match self.store.append(record).await {
            Ok(()) => Ok(Placed::Issued(Tokenized {
                token,
                masked_pan: issue.facts.masked_pan.clone(),
                brand: issue.facts.brand,
                reused: false,
            })),
            Err(StoreError::AlreadyExists) => Ok(Placed::Taken),
            Err(StoreError::FingerprintTaken(holder)) => {
                if let Some(existing) = self.store.get(&holder).await?
                    && let Some(reused) = self
                        .reuse(issue.tenant, &existing, &issue.facts, issue.now)
                        .await?
                {
                    return Ok(Placed::Issued(reused));
                }
                Ok(Placed::Taken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Returns an existing live deterministic token when its options match
    /// `wanted` (the facts a new token would get), refuses with
    /// `ReuseConflict` when they do not, or tombstones it when it has expired
    /// (so the fingerprint is free again) and returns `None`.
    async fn reuse(
        &self,
        tenant: &TenantId,
        existing: &StoredRecord,
        wanted: &PublicFacts,
        now: u64,
    ) -> Result<Option<Tokenized>, VaultError> {
        if existing.record.tenant != *tenant || existing.tombstone.is_some() {
            return Ok(None);
        }
        if !self.is_live(existing, now) {
            let tombstone = Tombstone {
                reason: TombstoneReason::Expired,
                at_ms: now,
            };
            match self
                .store
                .append_tombstone(&existing.record.token_id, tombstone)
                .await
            {
                Ok(()) | Err(StoreError::AlreadyExists) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(option) = reuse_conflict(&existing.record.facts, wanted) {
            return Err(VaultError::ReuseConflict { option });
        }
        let (_, token) = self.open(tenant, existing).await?;
        // The record may be another writer's, found before its flush:
        // never hand out a token that a crash could still take back.
        self.store.sync().await?;
        Ok(Some(Tokenized {
            token,
            masked_pan: existing.record.facts.masked_pan.clone(),
            brand: existing.record.facts.brand,
            reused: true,
        }))
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
        if stored.record.facts.single_use {
            before_consume().await?;
            let tombstone = Tombstone {
                reason: TombstoneReason::Consumed,
                at_ms: self.clock.now_ms(),
            };
            match self
                .store
                .append_tombstone(&stored.record.token_id, tombstone)
                .await
            {
                Ok(()) => {}
                Err(StoreError::AlreadyExists) => return Err(VaultError::NotFound),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pan)
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
            .store
            .append_tombstone(&stored.record.token_id, tombstone)
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists) => Err(VaultError::NotFound),
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
