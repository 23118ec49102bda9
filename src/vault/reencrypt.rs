//! Re-encryption: rewrite every record of a tenant under its newest DEK by
//! appending new seal versions, so an old DEK can be retired and destroyed.
//!
//! Resumable: after each page the job writes a checkpoint (target DEK
//! version, counters, last token id) to the store. A job that stops — a
//! crash, `kill -9`, a seal — continues from its checkpoint when started
//! again, and the server restarts pending jobs by itself once unsealed
//! ([`Vault::resume_reencryptions`]). Records already under the target are
//! skipped, so running a job twice is harmless.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::codec::{Reader, Writer};
use crate::domain::token::TOKEN_ID_LEN;
use crate::domain::{TenantId, TokenId};
use crate::envelope::{self, Binding};
use crate::store::SealedVersion;
use crate::vault::{Vault, VaultError};

/// Records rewritten per page (one durable flush and one checkpoint each).
pub const PAGE: usize = 500;
const CHECKPOINT_PREFIX: &str = "reencrypt/";

/// Where a re-encryption stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReencryptProgress {
    /// Records examined, including ones already current.
    pub done: u64,
    /// Records of the tenant.
    pub total: u64,
    /// Records rewritten.
    pub rewritten: u64,
    /// The DEK version records move to.
    pub target_version: u32,
    /// The job has finished.
    pub finished: bool,
    /// Records skipped because their DEK was destroyed (shredded before the
    /// tenant was re-created): they can never be opened again.
    pub skipped_unreadable: u64,
}

/// Tenants with a job running in this process.
#[derive(Debug, Default)]
pub struct RunningJobs(Mutex<HashSet<TenantId>>);

struct JobGuard<'a> {
    jobs: &'a RunningJobs,
    tenant: TenantId,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        let mut set = self
            .jobs
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.remove(&self.tenant);
    }
}

impl RunningJobs {
    fn start(&self, tenant: &TenantId) -> Option<JobGuard<'_>> {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(tenant.clone()).then(|| JobGuard {
            jobs: self,
            tenant: tenant.clone(),
        })
    }
}

struct Checkpoint {
    target: u32,
    done: u64,
    rewritten: u64,
    skipped: u64,
    after: Option<TokenId>,
}

/// Checkpoint layout 2 adds the skipped count; layout 1 reads as 0 skipped.
const CHECKPOINT_V2: u8 = 2;

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(CHECKPOINT_V2)
            .u32(self.target)
            .u64(self.done)
            .u64(self.rewritten)
            .u64(self.skipped);
        match &self.after {
            Some(id) => w.u8(1).fixed(id.as_bytes()),
            None => w.u8(0),
        };
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let layout = r.u8().ok()?;
        if layout != 1 && layout != CHECKPOINT_V2 {
            return None;
        }
        let target = r.u32().ok()?;
        let done = r.u64().ok()?;
        let rewritten = r.u64().ok()?;
        let skipped = if layout == CHECKPOINT_V2 {
            r.u64().ok()?
        } else {
            0
        };
        let after = if r.bool().ok()? {
            Some(TokenId::from_slice(r.fixed(TOKEN_ID_LEN).ok()?)?)
        } else {
            None
        };
        r.end().ok()?;
        Some(Self {
            target,
            done,
            rewritten,
            skipped,
            after,
        })
    }
}

fn checkpoint_name(tenant: &TenantId) -> String {
    format!("{CHECKPOINT_PREFIX}{tenant}")
}

impl Vault {
    /// Re-encrypts every record of `tenant` under its newest DEK, calling
    /// `report` after each page and once at the end.
    pub async fn reencrypt(
        &self,
        tenant: &TenantId,
        mut report: impl FnMut(ReencryptProgress) + Send,
    ) -> Result<ReencryptProgress, VaultError> {
        self.ensure_unsealed()?;
        let _guard = self.jobs.start(tenant).ok_or_else(|| {
            VaultError::Precondition("a re-encryption of this tenant is already running".into())
        })?;
        let (target, target_dek) = self.keys.current_dek(tenant).await?;
        let name = checkpoint_name(tenant);
        let mut cp = match self
            .store
            .checkpoint(&name)
            .await?
            .and_then(|b| Checkpoint::decode(&b))
        {
            Some(cp) if cp.target == target => {
                tracing::info!(tenant = %tenant, done = cp.done, target, "resuming re-encryption from checkpoint");
                cp
            }
            _ => Checkpoint {
                target,
                done: 0,
                rewritten: 0,
                skipped: 0,
                after: None,
            },
        };
        let total = self.count_records(tenant).await?;
        let progress = |cp: &Checkpoint, finished| ReencryptProgress {
            done: cp.done,
            total,
            rewritten: cp.rewritten,
            target_version: target,
            finished,
            skipped_unreadable: cp.skipped,
        };
        loop {
            let page_started = tokio::time::Instant::now();
            self.ensure_unsealed()?;
            let page = self.store.scan_tenant(tenant, cp.after, PAGE).await?;
            let Some(last) = page.last() else { break };
            cp.after = Some(last.record.token_id);
            let mut batch = Vec::new();
            for stored in &page {
                let version = envelope::dek_version(&stored.record.sealed_pan)?;
                if version == target {
                    continue;
                }
                let old = match self.keys.dek(tenant, version).await {
                    Ok(key) => key,
                    // Destroyed by a shred: unreadable for good, so it can
                    // neither move nor hold the job up (counted instead).
                    Err(crate::keyring::KeyringError::MissingKey) => {
                        cp.skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let id = &stored.record.token_id;
                let payload = envelope::open(
                    &old,
                    Binding {
                        tenant,
                        token_id: id,
                        dek_version: version,
                    },
                    &stored.record.sealed_pan,
                )?;
                let sealed_pan = envelope::seal(
                    &target_dek,
                    Binding {
                        tenant,
                        token_id: id,
                        dek_version: target,
                    },
                    &payload,
                )?;
                batch.push(SealedVersion {
                    id: *id,
                    version: stored.seal_version + 1,
                    sealed_pan,
                });
            }
            let examined = u64::try_from(page.len()).unwrap_or(u64::MAX);
            if !batch.is_empty() {
                for outcome in self.store.append_sealed_versions(batch).await? {
                    match outcome {
                        Ok(()) => cp.rewritten += 1,
                        // Another writer re-sealed it first; it is current either way.
                        Err(crate::store::StoreError::AlreadyExists) => {}
                        // Purged meanwhile by compaction: nothing left to move.
                        Err(crate::store::StoreError::NotFound) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            cp.done += examined;
            self.store.put_checkpoint(&name, cp.encode()).await?;
            report(progress(&cp, false));
            super::pace(
                page_started,
                examined,
                self.policy.reencrypt_records_per_second,
            )
            .await;
        }
        self.store.delete_checkpoint(&name).await?;
        let done = progress(&cp, true);
        tracing::warn!(event = "reencrypted", tenant = %tenant, rewritten = cp.rewritten, skipped_unreadable = cp.skipped, target, "re-encryption finished");
        report(done);
        Ok(done)
    }

    async fn count_records(&self, tenant: &TenantId) -> Result<u64, VaultError> {
        let mut total = 0u64;
        let mut after = None;
        loop {
            let page = self.store.scan_tenant(tenant, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.record.token_id);
            total += u64::try_from(page.len()).unwrap_or(u64::MAX);
        }
        Ok(total)
    }

    /// Tenants whose re-encryption stopped before finishing.
    pub async fn pending_reencryptions(&self) -> Result<Vec<TenantId>, VaultError> {
        Ok(self
            .store
            .checkpoints(CHECKPOINT_PREFIX)
            .await?
            .iter()
            .filter_map(|name| name.strip_prefix(CHECKPOINT_PREFIX))
            .filter_map(|t| TenantId::new(t).ok())
            .collect())
    }

    /// Waits until the vault is unsealed, then finishes every pending
    /// re-encryption. Run once in the background at server start.
    pub async fn resume_reencryptions(&self) {
        while self.is_sealed() {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        let tenants = match self.pending_reencryptions().await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot list pending re-encryptions");
                return;
            }
        };
        for tenant in tenants {
            if let Err(e) = self.reencrypt(&tenant, |_| {}).await {
                tracing::error!(tenant = %tenant, error = %e, "resumed re-encryption failed");
            }
        }
    }
}
