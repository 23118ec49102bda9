//! Key administration use cases: status, DEK rotation and retirement,
//! crypto-shredding (sealing and unsealing: `vault/sealing.rs`). The caller
//! has checked the `admin` role.

use std::collections::BTreeMap;

use crate::domain::TenantId;
use crate::envelope;
use crate::kms::{KeyContext, KeyPurpose, KmsError, UnsealProgress};
use crate::store::{Expect, StateChange, StateKind, StoreError, WrappedKeyRecord};
use crate::telemetry::names;
use crate::vault::{Vault, VaultError};

/// Records read per store page when walking a tenant.
const SCAN_PAGE: usize = 1000;

/// Life-cycle state of a data key version (PCI DSS 3.7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Seals new records.
    Active,
    /// Opens existing records only.
    DecryptOnly,
    /// Destroyed: its records can never be opened.
    Destroyed,
}

/// One data key version as GetStatus reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyInfo {
    /// Version.
    pub version: u32,
    /// State.
    pub state: KeyState,
    /// Creation time (ms since the epoch); `None` once destroyed.
    pub created_at_ms: Option<u64>,
    /// Live and dead records whose sealed PAN uses this version.
    pub record_count: u64,
    /// Active and older than the cryptoperiod.
    pub overdue: bool,
    /// The master key wrapping it; empty once destroyed.
    pub master_key_id: String,
}

/// The vault's key status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// Sealed?
    pub sealed: bool,
    /// KMS backend name.
    pub kms_backend: &'static str,
    /// Current master key id (`None` while sealed).
    pub master_key_id: Option<String>,
    /// Shamir unseal progress.
    pub unseal: Option<UnsealProgress>,
    /// The tenant.
    pub tenant: TenantId,
    /// Its data keys, oldest first (empty while sealed).
    pub data_keys: Vec<DataKeyInfo>,
}

impl Vault {
    /// Key status of `tenant`. Answers while sealed (without key details).
    pub async fn key_status(&self, tenant: &TenantId) -> Result<KeyStatus, VaultError> {
        let sealed = self.is_sealed();
        let data_keys = if sealed {
            Vec::new()
        } else {
            self.data_key_infos(tenant).await?
        };
        Ok(KeyStatus {
            sealed,
            kms_backend: self.kms.backend_name(),
            master_key_id: self.kms.master_key_id().map(|k| k.as_str().to_owned()),
            unseal: self.kms.unseal_progress(),
            tenant: tenant.clone(),
            data_keys,
        })
    }

    async fn data_key_infos(&self, tenant: &TenantId) -> Result<Vec<DataKeyInfo>, VaultError> {
        let keys: BTreeMap<u32, _> = self
            .store
            .wrapped_keys(tenant)
            .await?
            .into_iter()
            .filter(|k| k.context.purpose == KeyPurpose::Data)
            .map(|k| (k.context.version, k))
            .collect();
        let Some(&latest) = keys.keys().next_back() else {
            return Ok(Vec::new());
        };
        let counts = self.record_counts(tenant).await?;
        let now = self.clock.now_ms();
        let max_age = u64::try_from(self.policy.data_key_max_age.as_millis()).unwrap_or(u64::MAX);
        Ok((1..=latest)
            .map(|version| match keys.get(&version) {
                Some(k) => DataKeyInfo {
                    version,
                    state: if version == latest {
                        KeyState::Active
                    } else {
                        KeyState::DecryptOnly
                    },
                    created_at_ms: Some(k.created_at_ms),
                    record_count: counts.get(&version).copied().unwrap_or(0),
                    overdue: version == latest && now.saturating_sub(k.created_at_ms) > max_age,
                    master_key_id: k.master_key_id.as_str().to_owned(),
                },
                None => DataKeyInfo {
                    version,
                    state: KeyState::Destroyed,
                    created_at_ms: None,
                    record_count: counts.get(&version).copied().unwrap_or(0),
                    overdue: false,
                    master_key_id: String::new(),
                },
            })
            .collect())
    }

    /// Records per DEK version, from each record's envelope header.
    async fn record_counts(&self, tenant: &TenantId) -> Result<BTreeMap<u32, u64>, VaultError> {
        let mut counts = BTreeMap::new();
        let mut after = None;
        loop {
            let page = self.store.scan_tenant(tenant, after, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.record.token_id);
            for stored in &page {
                if let Ok(version) = envelope::dek_version(&stored.record.sealed_pan) {
                    *counts.entry(version).or_insert(0) += 1;
                }
            }
        }
        Ok(counts)
    }

    /// Makes a new DEK version for `tenant`; new records use it at once and
    /// older versions keep opening their records.
    pub async fn rotate_data_key(&self, tenant: &TenantId) -> Result<u32, VaultError> {
        self.ensure_unsealed()?;
        let version = self.keys.rotate(tenant).await?;
        tracing::warn!(event = "dek_rotated", tenant = %tenant, version, "data key rotated");
        self.announce_keys(tenant).await?;
        Ok(version)
    }

    /// Destroys a DEK version that no record uses any more. The active
    /// version can never be retired.
    pub async fn retire_data_key(&self, tenant: &TenantId, version: u32) -> Result<(), VaultError> {
        self.ensure_unsealed()?;
        let infos = self.data_key_infos(tenant).await?;
        let info = infos
            .iter()
            .find(|i| i.version == version && i.state != KeyState::Destroyed)
            .ok_or_else(|| {
                VaultError::Precondition(format!("data key version {version} does not exist"))
            })?;
        if info.state == KeyState::Active {
            return Err(VaultError::Precondition(
                "the active data key cannot be retired; rotate first".into(),
            ));
        }
        if info.record_count > 0 {
            return Err(VaultError::Precondition(format!(
                "{} records still use data key version {version}; re-encrypt first",
                info.record_count
            )));
        }
        let ctx = KeyContext {
            tenant: tenant.clone(),
            purpose: KeyPurpose::Data,
            version,
        };
        self.store.destroy_wrapped_key(&ctx).await?;
        self.keys.forget_dek(tenant, version);
        tracing::warn!(event = "dek_destroyed", tenant = %tenant, version, "data key destroyed");
        self.announce_keys(tenant).await?;
        Ok(())
    }

    /// Makes a new master key version and rewraps every data key of every
    /// tenant under it. No record is touched: the DEKs themselves do not
    /// change, only their wrapping.
    pub async fn rotate_master_key(&self) -> Result<(String, usize), VaultError> {
        self.ensure_unsealed()?;
        let new_id = self.kms.rotate_master_key().await?;
        let mut rewrapped = 0;
        for record in self.store.all_wrapped_keys().await? {
            if record.master_key_id == new_id {
                continue;
            }
            let key = self
                .kms
                .unwrap_data_key(&record.wrapped, &record.context)
                .await?;
            let wrapped = self.kms.wrap_data_key(&key, &record.context).await?;
            let new = WrappedKeyRecord {
                master_key_id: new_id.clone(),
                wrapped,
                ..record.clone()
            };
            match self.store.replace_wrapped_key(&record, new).await {
                Ok(()) => rewrapped += 1,
                // Destroyed or rewrapped meanwhile (a shred, a retirement).
                Err(StoreError::AlreadyExists | StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(event = "kek_rotated", master_key = %new_id, rewrapped, "master key rotated");
        Ok((new_id.as_str().to_owned(), rewrapped))
    }

    /// Publishes the seal state, the master key version, each tenant's
    /// active data key version and the age of every data key version as
    /// metrics. Reads only public facts of the key table, so it works
    /// while sealed. A no-op when no metrics recorder is installed.
    pub async fn publish_key_metrics(&self) -> Result<(), VaultError> {
        metrics::gauge!(names::SEALED).set(if self.is_sealed() { 1.0 } else { 0.0 });
        let now = self.clock.now_ms();
        let max_age = u64::try_from(self.policy.data_key_max_age.as_millis()).unwrap_or(u64::MAX);
        let mut latest: BTreeMap<TenantId, u32> = BTreeMap::new();
        let keys: Vec<_> = self
            .store
            .all_wrapped_keys()
            .await?
            .into_iter()
            .filter(|k| k.context.purpose == KeyPurpose::Data)
            .collect();
        for k in &keys {
            let entry = latest.entry(k.context.tenant.clone()).or_insert(0);
            *entry = (*entry).max(k.context.version);
        }
        if let Some(version) = self.kms.master_key_version() {
            metrics::gauge!(names::MASTER_KEY_VERSION).set(f64::from(version));
        }
        for (tenant, version) in &latest {
            metrics::gauge!(names::DATA_KEY_ACTIVE_VERSION, "tenant" => tenant.as_str().to_owned())
                .set(f64::from(*version));
        }
        for k in &keys {
            let age_ms = now.saturating_sub(k.created_at_ms);
            let labels = [
                ("tenant", k.context.tenant.as_str().to_owned()),
                ("version", k.context.version.to_string()),
            ];
            // Ages fit f64's 53-bit mantissa for 285,000 years of milliseconds.
            let age_s = f64::from(u32::try_from(age_ms / 1000).unwrap_or(u32::MAX));
            metrics::gauge!(names::DATA_KEY_AGE, &labels).set(age_s);
            let active = latest.get(&k.context.tenant) == Some(&k.context.version);
            let overdue = active && age_ms > max_age;
            metrics::gauge!(names::DATA_KEY_OVERDUE, &labels).set(if overdue { 1.0 } else { 0.0 });
        }
        Ok(())
    }

    /// The current master key version, where the backend numbers them.
    pub fn master_key_version(&self) -> Option<u32> {
        self.kms.master_key_version()
    }

    /// Crypto-shreds a tenant: destroys every key it has. Its tokens answer
    /// NOT_FOUND from then on and its records can never be opened again.
    ///
    /// The tenant is marked shredded first (with the highest DEK version it
    /// had), so no call, not even one racing the shred, makes it fresh keys
    /// until an operator re-creates it ([`Self::recreate_tenant`]); new
    /// versions then number above the destroyed ones.
    pub async fn shred_tenant(&self, tenant: &TenantId) -> Result<usize, VaultError> {
        self.ensure_unsealed()?;
        let floor = self.keys.latest_data_version(tenant).await?.unwrap_or(0);
        self.store
            .put_checkpoint(
                &crate::keyring::dek_floor(tenant),
                floor.to_be_bytes().to_vec(),
            )
            .await?;
        self.store
            .put_checkpoint(
                &crate::keyring::shredded_marker(tenant),
                self.clock.now_ms().to_be_bytes().to_vec(),
            )
            .await?;
        // Told before and after: a replica that fails to hear the second
        // has dropped its keys once already, and cannot unwrap them again
        // once they are destroyed.
        self.announce_keys(tenant).await?;
        let destroyed = self.store.destroy_wrapped_keys(tenant).await?;
        self.keys.forget_tenant(tenant);
        tracing::warn!(event = "tenant_shredded", tenant = %tenant, destroyed, "tenant keys destroyed");
        // Other replicas still hold the tenant's keys unwrapped: they drop
        // them when they see this. Failing it fails the shred, so the
        // operator runs it again (it is idempotent).
        self.announce_keys(tenant).await?;
        Ok(destroyed)
    }
}

impl Vault {
    /// Lets a shredded tenant get keys (and so tokenize) again. Its old
    /// records stay unreadable: their keys are gone, and re-encryption
    /// skips and counts them. `Precondition` when it was not shredded.
    pub async fn recreate_tenant(&self, tenant: &TenantId) -> Result<(), VaultError> {
        self.ensure_unsealed()?;
        let marker = crate::keyring::shredded_marker(tenant);
        if self.store.checkpoint(&marker).await?.is_none() {
            return Err(VaultError::Precondition(format!(
                "tenant {tenant} was not shredded"
            )));
        }
        self.store.delete_checkpoint(&marker).await?;
        tracing::warn!(event = "tenant_recreated", tenant = %tenant, "shredded tenant re-created");
        self.announce_keys(tenant).await?;
        Ok(())
    }

    /// Tells the other replicas that `tenant`'s keys changed (rotated,
    /// retired, shredded, re-created): each drops its cached keys and
    /// current version of the tenant when its change feed shows this
    /// (`crate::shared::feed`), and reads them again from the store.
    async fn announce_keys(&self, tenant: &TenantId) -> Result<(), VaultError> {
        self.store
            .put_state(
                StateKind::Signal,
                &keys_signal(tenant),
                Some(Vec::new()),
                Expect::Any,
            )
            .await?;
        Ok(())
    }
}

/// The signal naming a tenant whose keys changed.
fn keys_signal(tenant: &TenantId) -> String {
    format!("{KEYS_SIGNAL}{tenant}")
}

/// The prefix of key-change signals.
const KEYS_SIGNAL: &str = "keys:";

/// A replica's keyring and seal follow key changes and seals made by the
/// others.
#[async_trait::async_trait]
impl crate::shared::feed::Follower for Vault {
    fn kinds(&self) -> &'static [StateKind] {
        &[StateKind::Signal]
    }

    async fn changed(&self, changes: &[StateChange]) -> Result<(), String> {
        for change in changes {
            if change.key == super::sealing::SEAL_SIGNAL && !change.deleted {
                self.follow_seal(change.version);
                continue;
            }
            let Some(name) = change.key.strip_prefix(KEYS_SIGNAL) else {
                continue;
            };
            match TenantId::from_stored(name) {
                Ok(tenant) => {
                    self.keys.forget_tenant(&tenant);
                    tracing::info!(tenant = %tenant, "keys changed on another replica; cached keys dropped");
                }
                Err(_) => tracing::warn!("a key-change signal names no tenant"),
            }
        }
        Ok(())
    }
}

impl From<KmsError> for VaultError {
    fn from(e: KmsError) -> Self {
        match e {
            KmsError::Sealed => Self::Sealed,
            other => Self::Kms(other),
        }
    }
}
