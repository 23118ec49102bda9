//! Export grants: what an approved `Export` request leaves behind. A grant
//! lets one operator (the one who asked) read one tenant's PANs through
//! `ExportBatch`, until it lapses; a second operator approved it, so no
//! single person can take a tenant's cards (PCI DSS 3.6.1.2, 7.2).
//!
//! Grants live in the store's shared state, sealed like every other entry,
//! under the approval id: the replica that approved it and every other one
//! honour it alike. A lapsed grant is removed by whoever meets it first.
//!
//! A seal revokes every grant: sealing is the emergency brake, and an
//! export asked for before it is asked for and approved again after the
//! unseal, by operators who know why it was sealed. A grant records the
//! store change that filed its request, and [`Exports::check`] honours it
//! only when that change is newer than the last seal's
//! ([`crate::vault::Vault::last_seal`]): an approval racing the seal, or
//! landing on a replica that has not heard of it yet, grants nothing.
//! [`Exports::revoke_all`] then only clears what can no longer serve.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::TenantId;
use crate::shared::{Shared, SharedError};
use crate::store::{Expect, StateKind, StoreError};

/// How long a grant lasts unless `access.export_minutes` says otherwise.
pub const DEFAULT_EXPORT_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// One approved export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportGrant {
    /// Whose PANs.
    pub tenant: String,
    /// The operator who asked: the only one it serves.
    pub grantee: String,
    /// The operator who approved it.
    pub approved_by: String,
    /// When it lapses, by the vault clock (milliseconds).
    pub expires_at_ms: u64,
    /// The store change that filed the request it grants: a seal after it
    /// revokes it.
    pub filed_at_change: u64,
}

/// Why a grant does not serve a call. The variants say no more than
/// "no such export" to anyone but its grantee.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// No live grant has this id for this caller.
    #[error("no approved export has this id for this operator (or it lapsed)")]
    NotFound,
    /// The shared store failed.
    #[error("export grants are unavailable: {0}")]
    Unavailable(#[from] SharedError),
    /// A stored grant names a tenant that cannot be.
    #[error("a stored export grant is unreadable")]
    Damaged,
}

/// The grants.
#[derive(Debug, Clone)]
pub struct Exports {
    shared: Shared,
    lifetime: Duration,
}

impl Exports {
    /// Grants kept in `shared`, each lasting `lifetime`.
    pub fn new(shared: Shared, lifetime: Duration) -> Self {
        Self { shared, lifetime }
    }

    /// Records the grant of approval `id` (`pending`, filed by `grantee`
    /// at store change `filed_at_change`): `grantee` may export `tenant`
    /// from `now_ms` for the configured lifetime. Returns when it lapses.
    pub async fn grant(
        &self,
        id: &str,
        tenant: &TenantId,
        grantee: &str,
        approved_by: &str,
        filed_at_change: u64,
        now_ms: u64,
    ) -> Result<u64, ExportError> {
        let lifetime_ms = u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX);
        let grant = ExportGrant {
            tenant: tenant.as_str().to_owned(),
            grantee: grantee.to_owned(),
            approved_by: approved_by.to_owned(),
            expires_at_ms: now_ms.saturating_add(lifetime_ms),
            filed_at_change,
        };
        self.shared
            .put(StateKind::Export, id, Some(&grant), Expect::Absent)
            .await?;
        Ok(grant.expires_at_ms)
    }

    /// The tenant grant `id` lets `caller` export at `now_ms`, when the
    /// vault was last sealed by store change `last_seal`.
    pub async fn check(
        &self,
        id: &str,
        caller: &str,
        now_ms: u64,
        last_seal: u64,
    ) -> Result<TenantId, ExportError> {
        let Some((version, grant)) = self
            .shared
            .get::<ExportGrant>(StateKind::Export, id)
            .await?
        else {
            return Err(ExportError::NotFound);
        };
        if grant.expires_at_ms <= now_ms || grant.filed_at_change <= last_seal {
            // Lapsed or revoked by a seal: gone for everyone. A concurrent
            // removal is as good.
            let _ = self
                .shared
                .put::<ExportGrant>(StateKind::Export, id, None, Expect::Version(version))
                .await;
            return Err(ExportError::NotFound);
        }
        if grant.grantee != caller {
            return Err(ExportError::NotFound);
        }
        TenantId::from_stored(&grant.tenant).map_err(|_| ExportError::Damaged)
    }

    /// Removes every grant, live, lapsed or unreadable, and returns how
    /// many: what a seal does, so that none lingers in the store. A grant
    /// removed meanwhile by someone else (a lapse met first, another seal)
    /// counts as theirs. Clean-up only: [`Self::check`] refuses a grant
    /// from before the last seal whether or not this ran.
    pub async fn revoke_all(&self) -> Result<usize, ExportError> {
        let store = self.shared.store();
        let mut revoked = 0;
        for (id, entry) in store
            .states(StateKind::Export)
            .await
            .map_err(SharedError::from)?
        {
            match store
                .put_state(StateKind::Export, &id, None, Expect::Version(entry.version))
                .await
            {
                Ok(_) => revoked += 1,
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(SharedError::from(e).into()),
            }
        }
        Ok(revoked)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::secret::DataKey;
    use crate::shared::seal::StateSeal;
    use crate::store::memory::MemoryStore;

    fn exports() -> Exports {
        let seal = Arc::new(StateSeal::new(DataKey::from_bytes([4; 32])));
        Exports::new(
            Shared::new(Arc::new(MemoryStore::new()), seal),
            Duration::from_secs(60),
        )
    }

    /// Review finding: an approval racing a seal wrote its grant after the
    /// seal had cleared the others, and it served after the unseal. A grant
    /// whose request came before the last seal serves nobody, cleared or not.
    #[tokio::test]
    async fn a_grant_filed_before_the_last_seal_serves_nobody() {
        let exports = exports();
        let acme = TenantId::new("acme").unwrap();
        exports
            .grant("a1", &acme, "op", "op2", 7, 1_000)
            .await
            .unwrap();
        exports
            .grant("b2", &acme, "op", "op2", 9, 1_000)
            .await
            .unwrap();
        // Sealed by change 8: the first grant's request came before it.
        assert!(matches!(
            exports.check("a1", "op", 2_000, 8).await,
            Err(ExportError::NotFound)
        ));
        assert_eq!(exports.check("b2", "op", 2_000, 8).await.unwrap(), acme);
        // Refused once, gone: an older seal number does not bring it back.
        assert!(matches!(
            exports.check("a1", "op", 2_000, 0).await,
            Err(ExportError::NotFound)
        ));
        // Only its grantee, only while it lasts.
        assert!(matches!(
            exports.check("b2", "op2", 2_000, 8).await,
            Err(ExportError::NotFound)
        ));
        assert!(matches!(
            exports.check("b2", "op", 61_000, 8).await,
            Err(ExportError::NotFound)
        ));
    }

    #[tokio::test]
    async fn revoking_all_clears_every_grant() {
        let exports = exports();
        let acme = TenantId::new("acme").unwrap();
        for id in ["a1", "b2", "c3"] {
            exports.grant(id, &acme, "op", "op2", 5, 0).await.unwrap();
        }
        assert_eq!(exports.revoke_all().await.unwrap(), 3);
        assert_eq!(exports.revoke_all().await.unwrap(), 0);
        assert!(matches!(
            exports.check("a1", "op", 1, 0).await,
            Err(ExportError::NotFound)
        ));
    }
}
