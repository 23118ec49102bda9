//! Tokenize: one PAN, or a batch of them in one commit.
//!
//! A tokenize plans first (format, metadata, expiry, distinguishability,
//! deterministic reuse), then places a token: it seals the record and
//! commits it through the write pipeline together with the call's audit
//! event, so the record and its event share one flush. A batch plans every
//! item, then commits all new records and one event with counts in a
//! single submission; when a concurrent writer takes one of its token
//! values or fingerprints first, only the items it took are placed one by
//! one and the rest commits as a batch again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditEvent;
use crate::domain::{Fingerprint, Pan, TenantId, Token, TokenId};
use crate::envelope::{self, Binding};
use crate::keyring::TenantKeys;
use crate::pipeline::WriteError;
use crate::secret::DataKey;
use crate::store::{
    PublicFacts, SealedRecord, StoreError, StoredRecord, Tombstone, TombstoneReason, WriteUnit,
};
use crate::telemetry::names;
use crate::tokens::random::RandomGenerator;
use crate::tokens::{FormatError, GenerateError, GeneratorKind, TokenFormat, TokenGenerator};
use crate::vault::{
    EXHAUSTIVE_SEARCH_LIMIT, FF1_PLACE_ATTEMPTS, FormatRequest, RANDOM_DRAWS, TokenizeCommand,
    Tokenized, Vault, VaultError, encode_payload,
};

/// Times a batch re-commits after losing a race for some of its items
/// before placing the rest one by one.
const BATCH_RACE_ROUNDS: usize = 3;

/// Everything one tokenize needs to place its token.
struct Plan {
    keys: Arc<TenantKeys>,
    pan: Pan,
    format: TokenFormat,
    fingerprint: Option<Fingerprint>,
    facts: PublicFacts,
    dek_version: u32,
    dek: Arc<DataKey>,
    now: u64,
}

/// What planning found.
enum Planned {
    /// A live deterministic token of this card with the same options.
    Reused(Tokenized),
    /// A new token is to be placed.
    New(Plan),
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

/// A batch's answer for a repeat of a card placed earlier in the batch,
/// from the first item's options (`first`), its result and the repeat's
/// options: the first item's token when the options match, and the first
/// item's conflict with a stored token when it met one, since the repeat
/// asked for the same options.
fn repeat_of(
    first: &PublicFacts,
    first_result: &Result<Tokenized, VaultError>,
    repeat: &PublicFacts,
) -> Result<Tokenized, VaultError> {
    match (reuse_conflict(first, repeat), first_result) {
        (Some(option), _) => Err(VaultError::ReuseConflict { option }),
        (None, Err(VaultError::ReuseConflict { option })) => {
            Err(VaultError::ReuseConflict { option })
        }
        (None, Ok(done)) => Ok(done.repeated()),
        (None, Err(_)) => Err(VaultError::Contended),
    }
}

/// The event of a tokenize that issued or reused `token_id`.
fn token_event(mut event: AuditEvent, token_id: &TokenId) -> AuditEvent {
    event.resource = format!("token:{}", token_id.short());
    event.outcome = "OK".to_owned();
    event
}

impl Vault {
    /// Tokenizes one PAN for `tenant`.
    pub async fn tokenize(
        &self,
        tenant: &TenantId,
        cmd: TokenizeCommand,
    ) -> Result<Tokenized, VaultError> {
        self.tokenize_noted(tenant, cmd, None).await
    }

    /// [`Self::tokenize`], committing `event` (its resource set to the
    /// token's keyed id, its outcome to OK) in the same write as the record:
    /// on `Ok` both are durable, on `Err` neither was written.
    pub async fn tokenize_audited(
        &self,
        tenant: &TenantId,
        cmd: TokenizeCommand,
        event: AuditEvent,
    ) -> Result<Tokenized, VaultError> {
        self.tokenize_noted(tenant, cmd, Some(&event)).await
    }

    async fn tokenize_noted(
        &self,
        tenant: &TenantId,
        cmd: TokenizeCommand,
        note: Option<&AuditEvent>,
    ) -> Result<Tokenized, VaultError> {
        match self.plan(tenant, cmd).await? {
            Planned::Reused(done) => {
                self.note_reuse(note, &done).await?;
                Ok(done)
            }
            Planned::New(plan) => self.issue(tenant, &plan, note).await,
        }
    }

    /// Tokenizes a batch for `tenant` in one commit: every new record and
    /// one event, `event` with its resource made by `resource` from the
    /// per-item outcomes. One bad item never fails the batch: its error is
    /// its outcome. An item that cannot join the batch's commit (its bucket
    /// is nearly full) is placed on its own with its own event, so no
    /// record is ever written without one. An `Err` means the batch's
    /// commit (or a store read) failed; items placed on their own before
    /// that are stored with their own events, and their tokens are lost to
    /// the caller, so a retry of a random-token item mints another token
    /// for the same card (as after any call whose answer was lost).
    pub async fn tokenize_batch<R>(
        &self,
        tenant: &TenantId,
        cmds: Vec<TokenizeCommand>,
        event: AuditEvent,
        resource: R,
    ) -> Result<Vec<Result<Tokenized, VaultError>>, VaultError>
    where
        R: Fn(&[Result<Tokenized, VaultError>]) -> String,
    {
        let mut results = Vec::with_capacity(cmds.len());
        // Items answered from the batch's own submission, for the fallback.
        let mut in_batch: Vec<(usize, Plan)> = Vec::new();
        let mut records = Vec::new();
        // For each record, its item's index in `in_batch`.
        let mut fresh = Vec::new();
        let mut ids = HashSet::new();
        // The first fresh item of each deterministic card in the batch.
        let mut firsts: HashMap<Fingerprint, usize> = HashMap::new();
        for cmd in cmds {
            let plan = match self.plan(tenant, cmd).await {
                Ok(Planned::New(plan)) => plan,
                Ok(Planned::Reused(done)) => {
                    // Named by the batch's event; nothing is written.
                    results.push(Ok(done));
                    continue;
                }
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            if let Some(fp) = plan.fingerprint
                && let Some(&first) = firsts.get(&fp)
            {
                let (first_index, first_plan) = &in_batch[first];
                let result = repeat_of(&first_plan.facts, &results[*first_index], &plan.facts);
                results.push(result);
                in_batch.push((results.len() - 1, plan));
                continue;
            }
            let sealed = match self.batch_candidate(&plan, &ids).await {
                Ok(Some(token)) => self.seal_record(tenant, &plan, token),
                Ok(None) => {
                    // No free candidate found cheaply (a nearly full bucket):
                    // placed on its own, with its own event.
                    results.push(self.issue(tenant, &plan, Some(&event)).await);
                    continue;
                }
                Err(e) => Err(e),
            };
            let (record, done) = match sealed {
                Ok(sealed) => sealed,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            ids.insert(done.token_id);
            records.push(record);
            fresh.push(in_batch.len());
            results.push(Ok(done));
            if let Some(fp) = plan.fingerprint {
                firsts.insert(fp, in_batch.len());
            }
            in_batch.push((results.len() - 1, plan));
        }
        let batch_event = |results: &[Result<Tokenized, VaultError>]| AuditEvent {
            resource: resource(results),
            ..event.clone()
        };
        // Items placed on their own after losing a race.
        let mut placed = vec![false; in_batch.len()];
        for _ in 0..BATCH_RACE_ROUNDS {
            let unit = WriteUnit {
                records: std::mem::take(&mut records),
                ..WriteUnit::default()
            };
            match self
                .commit_tokenize(unit, Some(batch_event(&results)))
                .await
            {
                Ok(()) => return Ok(results),
                Err(WriteError::Refused(_)) => {}
                Err(e) => return Err(e.into()),
            }
            // A concurrent writer took a token value or a card of the batch
            // first. Only what it took is placed again, one item at a time
            // with its own event (a lost card then gets the other writer's
            // token), its repeats answer from that, and the rest commits as
            // one batch again. Placing all 1,000 items one by one instead
            // once held a batch for 37 s.
            let claims: Vec<(usize, TokenId, Option<Fingerprint>)> = fresh
                .iter()
                .filter_map(|&i| {
                    let (index, plan) = &in_batch[i];
                    let done = results[*index].as_ref().ok()?;
                    Some((i, done.token_id, plan.fingerprint))
                })
                .collect();
            let lost = self.lost_to_race(tenant, &claims).await?;
            let again: Vec<usize> = fresh.iter().copied().filter(|i| lost.contains(i)).collect();
            fresh.retain(|i| !lost.contains(i));
            // The refused commit took the records: seal the kept items again
            // (only on this rare path, so the first attempt copies nothing).
            for &i in &fresh {
                let (index, plan) = &in_batch[i];
                if let Ok(done) = &results[*index] {
                    records.push(self.sealed(tenant, plan, &done.token)?);
                }
            }
            for &i in &again {
                placed[i] = true;
                let (index, plan) = &in_batch[i];
                results[*index] = self.issue(tenant, plan, Some(&event)).await;
            }
            for i in 0..in_batch.len() {
                let first = in_batch[i].1.fingerprint.and_then(|fp| firsts.get(&fp));
                let Some(&first) = first.filter(|&&f| f != i && again.contains(&f)) else {
                    continue;
                };
                placed[i] = true;
                let (first_index, first_plan) = &in_batch[first];
                let result = repeat_of(
                    &first_plan.facts,
                    &results[*first_index],
                    &in_batch[i].1.facts,
                );
                results[in_batch[i].0] = result;
            }
        }
        // Still racing: every item not placed yet goes on its own, then
        // the batch's outcome is recorded.
        for (i, (index, plan)) in in_batch.iter().enumerate() {
            if !placed[i] {
                results[*index] = self.issue(tenant, plan, Some(&event)).await;
            }
        }
        self.commit_tokenize(WriteUnit::default(), Some(batch_event(&results)))
            .await?;
        Ok(results)
    }

    /// Which of a refused batch's items, each `(item, token id, card)`,
    /// another writer got to first: their token id is stored, or their card
    /// has a live token now.
    async fn lost_to_race(
        &self,
        tenant: &TenantId,
        claims: &[(usize, TokenId, Option<Fingerprint>)],
    ) -> Result<HashSet<usize>, VaultError> {
        let mut lost = HashSet::new();
        for (item, token_id, fingerprint) in claims {
            let id_taken = self.store.is_taken(token_id).await?;
            let card_taken = match fingerprint {
                Some(fp) => self
                    .store
                    .find_by_fingerprint(tenant, fp)
                    .await?
                    .is_some_and(|holder| holder.tombstone.is_none()),
                None => false,
            };
            if id_taken || card_taken {
                lost.insert(*item);
            }
        }
        Ok(lost)
    }

    /// A token for `plan` that no stored record and no earlier item of the
    /// batch (`taken`) holds: random draws, or the first free FF1
    /// generation. `None` when the draws keep colliding; the item is then
    /// placed alone (which searches a small bucket to the end).
    async fn batch_candidate(
        &self,
        plan: &Plan,
        taken: &HashSet<TokenId>,
    ) -> Result<Option<Token>, VaultError> {
        let free = |token: Token| async {
            let id = plan.keys.token_id(&token);
            let used = taken.contains(&id) || self.store.is_taken(&id).await?;
            Ok::<_, VaultError>((!used).then_some(token))
        };
        match plan.format.generator() {
            GeneratorKind::Random => {
                for _ in 0..RANDOM_DRAWS {
                    let token = RandomGenerator.generate(&plan.pan, &plan.format, 0)?;
                    if let Some(token) = free(token).await? {
                        return Ok(Some(token));
                    }
                }
                Ok(None)
            }
            GeneratorKind::Ff1 => {
                let ff1 = plan.keys.ff1();
                if let Some(token) = free(ff1.generate(&plan.pan, &plan.format, 0)?).await? {
                    return Ok(Some(token));
                }
                let generation = self.free_ff1_generation(plan).await?;
                free(ff1.generate(&plan.pan, &plan.format, generation)?).await
            }
        }
    }

    /// Checks a tokenize and finds what it will return: an existing token
    /// to reuse, or the plan of a new one.
    async fn plan(&self, tenant: &TenantId, cmd: TokenizeCommand) -> Result<Planned, VaultError> {
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
            return Ok(Planned::Reused(reused));
        }

        let (dek_version, dek) = self.keys.current_dek(tenant).await?;
        Ok(Planned::New(Plan {
            keys,
            pan: cmd.pan,
            format,
            fingerprint,
            facts,
            dek_version,
            dek,
            now,
        }))
    }

    async fn issue(
        &self,
        tenant: &TenantId,
        plan: &Plan,
        note: Option<&AuditEvent>,
    ) -> Result<Tokenized, VaultError> {
        match plan.format.generator() {
            GeneratorKind::Random => self.issue_random(tenant, plan, note).await,
            GeneratorKind::Ff1 => self.issue_ff1(tenant, plan, note).await,
        }
    }

    /// Issues a random token: uniform draws from the card's bucket, then,
    /// when they keep colliding and the bucket is small enough, a search of
    /// the whole bucket from a random place. A full bucket is
    /// `BucketExhausted` (RESOURCE_EXHAUSTED), never an endless loop.
    async fn issue_random(
        &self,
        tenant: &TenantId,
        plan: &Plan,
        note: Option<&AuditEvent>,
    ) -> Result<Tokenized, VaultError> {
        for _ in 0..RANDOM_DRAWS {
            let token = RandomGenerator.generate(&plan.pan, &plan.format, 0)?;
            if let Placed::Issued(done) = self.place(tenant, plan, token, note).await? {
                return Ok(done);
            }
        }
        let capacity = RandomGenerator::capacity(&plan.pan, &plan.format);
        if capacity <= EXHAUSTIVE_SEARCH_LIMIT {
            let start = crate::csprng::below_u64(capacity)?;
            for step in 0..capacity {
                let index = (start + step) % capacity;
                let token = RandomGenerator::candidate(&plan.pan, &plan.format, index)?;
                if self.store.is_taken(&plan.keys.token_id(&token)).await? {
                    continue;
                }
                if let Placed::Issued(done) = self.place(tenant, plan, token, note).await? {
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
    async fn issue_ff1(
        &self,
        tenant: &TenantId,
        plan: &Plan,
        note: Option<&AuditEvent>,
    ) -> Result<Tokenized, VaultError> {
        let mut generation = 0;
        for _ in 0..FF1_PLACE_ATTEMPTS {
            let token = plan
                .keys
                .ff1()
                .generate(&plan.pan, &plan.format, generation)?;
            if let Placed::Issued(done) = self.place(tenant, plan, token, note).await? {
                return Ok(done);
            }
            generation = self.free_ff1_generation(plan).await?;
        }
        Err(VaultError::Contended)
    }

    /// The generation just above the taken ones: doubles until a free one,
    /// then bisects between the last taken and the first free. Generations
    /// are used in order, so taken ones form a prefix and this finds its end.
    async fn free_ff1_generation(&self, plan: &Plan) -> Result<u32, VaultError> {
        let (mut taken, mut free) = (0u32, 1u32);
        while self.ff1_generation_taken(plan, free).await? {
            taken = free;
            free = free.checked_mul(2).ok_or(GenerateError::BucketExhausted {
                capacity: u64::from(u32::MAX),
            })?;
        }
        while free - taken > 1 {
            let mid = taken + (free - taken) / 2;
            if self.ff1_generation_taken(plan, mid).await? {
                taken = mid;
            } else {
                free = mid;
            }
        }
        Ok(free)
    }

    async fn ff1_generation_taken(&self, plan: &Plan, generation: u32) -> Result<bool, VaultError> {
        let token = plan
            .keys
            .ff1()
            .generate(&plan.pan, &plan.format, generation)?;
        // A purged generation stays taken: the store refuses its id.
        Ok(self.store.is_taken(&plan.keys.token_id(&token)).await?)
    }

    /// `token`'s record for `plan`, its PAN sealed under the tenant's data
    /// key and bound to the token id.
    fn sealed(
        &self,
        tenant: &TenantId,
        plan: &Plan,
        token: &Token,
    ) -> Result<SealedRecord, VaultError> {
        let token_id = plan.keys.token_id(token);
        let binding = Binding {
            tenant,
            token_id: &token_id,
            dek_version: plan.dek_version,
        };
        let sealed_pan = envelope::seal(&plan.dek, binding, &encode_payload(&plan.pan, token))?;
        Ok(SealedRecord {
            token_id,
            tenant: tenant.clone(),
            fingerprint: plan.fingerprint,
            facts: plan.facts.clone(),
            sealed_pan,
        })
    }

    /// Seals `token`'s record for `plan`.
    fn seal_record(
        &self,
        tenant: &TenantId,
        plan: &Plan,
        token: Token,
    ) -> Result<(SealedRecord, Tokenized), VaultError> {
        let record = self.sealed(tenant, plan, &token)?;
        let done = Tokenized {
            token,
            token_id: record.token_id,
            masked_pan: plan.facts.masked_pan.clone(),
            brand: plan.facts.brand,
            reused: false,
        };
        Ok((record, done))
    }

    /// Seals `token`'s record and commits it with the call's event. A taken
    /// token value is `Taken`; a fingerprint held by a concurrent tokenize
    /// of the same card returns that token when its options match.
    async fn place(
        &self,
        tenant: &TenantId,
        plan: &Plan,
        token: Token,
        note: Option<&AuditEvent>,
    ) -> Result<Placed, VaultError> {
        let (record, done) = self.seal_record(tenant, plan, token)?;
        let event = note.map(|e| token_event(e.clone(), &done.token_id));
        let unit = WriteUnit {
            records: vec![record],
            ..WriteUnit::default()
        };
        match self.commit_tokenize(unit, event).await {
            Ok(()) => Ok(Placed::Issued(done)),
            Err(WriteError::Refused(StoreError::AlreadyExists)) => Ok(Placed::Taken),
            Err(WriteError::Refused(StoreError::FingerprintTaken(holder))) => {
                if let Some(existing) = self.store.get(&holder).await?
                    && let Some(reused) =
                        self.reuse(tenant, &existing, &plan.facts, plan.now).await?
                {
                    self.note_reuse(note, &reused).await?;
                    return Ok(Placed::Issued(reused));
                }
                Ok(Placed::Taken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records the event of a tokenize that returned an existing token.
    async fn note_reuse(
        &self,
        note: Option<&AuditEvent>,
        reused: &Tokenized,
    ) -> Result<(), VaultError> {
        let Some(event) = note else {
            return Ok(());
        };
        let event = token_event(event.clone(), &reused.token_id);
        self.commit_tokenize(WriteUnit::default(), Some(event))
            .await
            .map_err(VaultError::from)
    }

    /// Commits a tokenize's writes with its event. Under the fail-open
    /// tokenize policy, a log that refuses appends does not stop the
    /// tokenize: the writes commit without the event, with an alert.
    async fn commit_tokenize(
        &self,
        unit: WriteUnit,
        event: Option<AuditEvent>,
    ) -> Result<(), WriteError> {
        if self.policy.audit_tokenize_fail_closed || event.is_none() {
            return self.commit_write(unit, event).await.map(|_| ());
        }
        let retry = unit.clone();
        match self.commit_write(unit, event).await {
            Err(WriteError::Audit(e)) => {
                tracing::error!(error = %e, alert = "audit_write_failed", "audit event lost (fail-open policy)");
                metrics::counter!(names::AUDIT_FAILURES).increment(1);
                self.commit_write(retry, None).await.map(|_| ())
            }
            other => other.map(|_| ()),
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
            let unit = WriteUnit {
                tombstones: vec![(existing.record.token_id, tombstone)],
                ..WriteUnit::default()
            };
            match self.commit_write(unit, None).await {
                Ok(_) | Err(WriteError::Refused(StoreError::AlreadyExists)) => return Ok(None),
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
            token_id: existing.record.token_id,
            masked_pan: existing.record.facts.masked_pan.clone(),
            brand: existing.record.facts.brand,
            reused: true,
        }))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A review finding: a repeat of a card whose first item met a stored
    /// token with other options was told to retry (ABORTED), though a retry
    /// meets the same conflict; it gets the first item's conflict.
    #[test]
    fn a_repeat_shares_its_first_items_reuse_conflict() {
        let facts = crate::store::record::tests::sample().facts;
        let conflict = Err(VaultError::ReuseConflict { option: "ttl" });
        assert!(matches!(
            repeat_of(&facts, &conflict, &facts),
            Err(VaultError::ReuseConflict { option: "ttl" })
        ));
        assert!(matches!(
            repeat_of(&facts, &Err(VaultError::Contended), &facts),
            Err(VaultError::Contended)
        ));
        let mut single_use = crate::store::record::tests::sample().facts;
        single_use.single_use = !facts.single_use;
        assert!(matches!(
            repeat_of(&facts, &conflict, &single_use),
            Err(VaultError::ReuseConflict {
                option: "single_use"
            })
        ));
    }
}
