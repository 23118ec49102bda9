//! Dual control (PCI DSS 3.6.1.2, 3.7.6): destructive or empowering actions
//! wait as a pending approval until a second, distinct, *eligible* principal
//! of the same scope approves them within a window:
//!
//! | action | requested by | approved by |
//! |---|---|---|
//! | master key rotation | an operator | another operator |
//! | unseal on a backend without shares | an operator | another operator |
//! | tenant shredding | a tenant admin | another admin of that tenant |
//! | granting `detokenize`, `admin`, `audit` or `operator` | an admin (operator in the system scope) | another one of the same scope |
//!
//! An approver is eligible only if it existed before the request and shares
//! no *lineage* with the requester (SECURITY.md §5.1): the lineage of a
//! principal is the chain of admins whose requests created it (configured
//! principals have none). An approver that the requester created (directly
//! or through principals it created), that created the requester, or that
//! shares a creator with it, is the same person's puppet or sibling:
//! otherwise one admin could mint its own second person, or use a
//! principal it minted to approve its own requests. Sealing stays a
//! one-operator emergency brake.
//!
//! Pending approvals live in the store's shared state, sealed: every
//! replica lists and approves the same requests, and they survive a
//! restart until they lapse.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::principals::{PrincipalEntry, StoredPrincipal};
use crate::csprng;
use crate::domain::TenantId;
use crate::shared::{Shared, SharedError};
use crate::store::{Expect, StateKind, StoreError};

/// Most requests pending at once in one scope: the map is keyed by what
/// callers ask for, so it is bounded (SECURITY.md §5.6).
pub const MAX_PENDING_PER_SCOPE: usize = 32;

/// Random bytes in an approval id (shown as twice as many hex digits).
const ID_BYTES: usize = 8;

/// Whether `id` has the shape of an approval id (16 lowercase hex digits,
/// at least one of them a letter), checked before an id from a request is
/// looked up, logged or audited: a pasted card number is not one (review
/// finding), and no id made here is all decimal digits.
pub fn is_well_formed_id(id: &str) -> bool {
    id.len() == 2 * ID_BYTES
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && !crate::leak::card_shaped(id)
}

/// An action that needs two people.
#[derive(Debug, Clone)]
pub enum DualControlAction {
    /// Rewrap every data key under a new master key version.
    RotateMasterKey,
    /// Destroy every key of a tenant.
    ShredTenant(TenantId),
    /// Reopen a sealed vault whose KMS has no shares to collect.
    Unseal,
    /// Make a principal with PAN-reading or administrative roles live; its
    /// credentials were issued to the requester and work only after this.
    AddPrincipal(Box<PrincipalEntry>),
    /// Let the requester read this tenant's PANs through `ExportBatch`
    /// for a while ([`crate::access::exports`]).
    Export(TenantId),
}

impl DualControlAction {
    /// The RPC name, as audit events and `ListApprovals` show it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RotateMasterKey => "RotateMasterKey",
            Self::ShredTenant(_) => "ShredTenant",
            Self::Unseal => "Unseal",
            Self::AddPrincipal(_) => "AddPrincipal",
            Self::Export(_) => "Export",
        }
    }

    /// Whether a seal makes a request for this stale: one filed before a
    /// seal must not reopen the vault it closed, nor export from it after
    /// the unseal; a new seal needs a new pair of operators.
    pub fn dies_with_seal(&self) -> bool {
        matches!(self, Self::Unseal | Self::Export(_))
    }

    /// What exactly would run, for the approver to read.
    pub fn detail(&self) -> String {
        match self {
            Self::RotateMasterKey | Self::Unseal => String::new(),
            Self::ShredTenant(tenant) | Self::Export(tenant) => format!("tenant {tenant}"),
            Self::AddPrincipal(entry) => {
                let roles: Vec<_> = entry.principal.roles.iter().map(|r| r.name()).collect();
                format!(
                    "principal {} tenant {} roles {}",
                    entry.principal.name,
                    entry.principal.tenant,
                    roles.join(",")
                )
            }
        }
    }
}

/// Who is approving, with what decides their eligibility.
#[derive(Debug, Clone, Copy)]
pub struct Approver<'a> {
    /// Name.
    pub name: &'a str,
    /// Scope (tenant, or the system scope for operators).
    pub tenant: &'a TenantId,
    /// When it was created (0 for configured principals; `u64::MAX` when
    /// unknown, which is never eligible).
    pub created_at_ms: u64,
    /// Its lineage: its creator, its creator's creator, … (empty for
    /// configured principals).
    pub lineage: &'a [String],
}

/// A request waiting for its second admin.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Identifier to approve.
    pub id: String,
    /// What will run.
    pub action: DualControlAction,
    /// Who asked.
    pub requested_by: String,
    /// The requester's tenant: only its admins may approve.
    pub tenant: TenantId,
    /// When it was filed, by the vault clock (milliseconds).
    pub requested_at_ms: u64,
    /// The requester's lineage when it filed the request.
    pub requester_lineage: Vec<String>,
    /// When it lapses, by the vault clock (milliseconds).
    pub expires_at_ms: u64,
    /// The number of the store change that filed it: the one clock every
    /// replica shares, against which a seal's own change is compared
    /// ([`DualControlAction::dies_with_seal`]).
    pub filed_at_change: u64,
}

/// Why an approval was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// No pending approval has this id in the caller's tenant (or it lapsed,
    /// or another admin approved it first).
    #[error("no pending approval has this id")]
    NotFound,
    /// The requester tried to approve their own request.
    #[error("the admin who requested an action cannot approve it; a second admin must")]
    SameAdmin,
    /// No fresh request id could be made.
    #[error("no unique approval id could be made; retry")]
    NoRandomness,
    /// The scope already has [`MAX_PENDING_PER_SCOPE`] pending requests.
    #[error("too many pending approvals in this scope; approve or let some lapse first")]
    TooMany,
    /// The approver was created after the request, or by the requester.
    #[error("this approver is not eligible: it {0}")]
    Ineligible(&'static str),
    /// The requester was revoked since it filed the request: a grant it
    /// filed would hand it a principal whose credentials it holds.
    #[error("the principal who requested this was revoked; the request is dropped")]
    RequesterRevoked,
    /// The shared store failed; `retryable` when a retry may succeed.
    #[error("pending approvals are unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// Whether a retry may succeed.
        retryable: bool,
    },
}

impl From<SharedError> for ApprovalError {
    fn from(e: SharedError) -> Self {
        Self::Unavailable {
            retryable: e.is_retryable(),
            reason: e.to_string(),
        }
    }
}

/// A pending request as stored (sealed) in shared state.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPending {
    action: StoredAction,
    requested_by: String,
    tenant: String,
    requested_at_ms: u64,
    requester_lineage: Vec<String>,
    expires_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
enum StoredAction {
    RotateMasterKey,
    ShredTenant { tenant: String },
    Unseal,
    AddPrincipal { principal: Box<StoredPrincipal> },
    Export { tenant: String },
}

impl StoredPending {
    fn of(p: &Pending) -> Self {
        Self {
            action: match &p.action {
                DualControlAction::RotateMasterKey => StoredAction::RotateMasterKey,
                DualControlAction::ShredTenant(t) => StoredAction::ShredTenant {
                    tenant: t.as_str().to_owned(),
                },
                DualControlAction::Unseal => StoredAction::Unseal,
                DualControlAction::AddPrincipal(entry) => StoredAction::AddPrincipal {
                    principal: Box::new(StoredPrincipal::from_entry(entry)),
                },
                DualControlAction::Export(t) => StoredAction::Export {
                    tenant: t.as_str().to_owned(),
                },
            },
            requested_by: p.requested_by.clone(),
            tenant: p.tenant.as_str().to_owned(),
            requested_at_ms: p.requested_at_ms,
            requester_lineage: p.requester_lineage.clone(),
            expires_at_ms: p.expires_at_ms,
        }
    }

    /// The request `id`, filed by store change `filed_at_change` (a request
    /// is written once and never updated, so its entry's version is that).
    fn into_pending(self, id: String, filed_at_change: u64) -> Result<Pending, ApprovalError> {
        let damaged = |reason: String| ApprovalError::Unavailable {
            reason: format!("a stored approval is unreadable: {reason}"),
            retryable: false,
        };
        let tenant = |t: &str| TenantId::from_stored(t).map_err(|e| damaged(e.to_string()));
        Ok(Pending {
            action: match self.action {
                StoredAction::RotateMasterKey => DualControlAction::RotateMasterKey,
                StoredAction::ShredTenant { tenant: t } => {
                    DualControlAction::ShredTenant(tenant(&t)?)
                }
                StoredAction::Unseal => DualControlAction::Unseal,
                StoredAction::AddPrincipal { principal } => DualControlAction::AddPrincipal(
                    Box::new(principal.into_entry().map_err(damaged)?),
                ),
                StoredAction::Export { tenant: t } => DualControlAction::Export(tenant(&t)?),
            },
            id,
            requested_by: self.requested_by,
            tenant: tenant(&self.tenant)?,
            requested_at_ms: self.requested_at_ms,
            requester_lineage: self.requester_lineage,
            expires_at_ms: self.expires_at_ms,
            filed_at_change,
        })
    }
}

/// Pending approvals, in the store's shared state: a request filed on one
/// replica is listed and approved on any other, and approving deletes it
/// by a conditional put, so of two admins approving at once on two
/// replicas exactly one runs the action.
///
/// An approved action runs on the replica that approves it. Most act on
/// the shared store (rotation, shredding, grants); an unseal opens the
/// approving replica only, since sealing is each process's state.
#[derive(Debug)]
pub struct Approvals {
    window: Duration,
    shared: Shared,
}

impl Approvals {
    /// Approvals kept in `shared`, lapsing after `window`.
    pub fn new(window: Duration, shared: Shared) -> Self {
        Self { window, shared }
    }

    /// Every stored request, lapsed ones included. A request that does not
    /// open or decode (edited in the database) is left out with an alert,
    /// so it cannot block listing, filing or dropping the others; approving
    /// it by id fails.
    async fn all(&self) -> Result<Vec<(u64, Pending)>, ApprovalError> {
        let mut out = Vec::new();
        for (id, entry) in self
            .shared
            .store()
            .states(StateKind::Approval)
            .await
            .map_err(SharedError::from)?
        {
            let opened = self
                .shared
                .open::<StoredPending>(StateKind::Approval, &id, &entry.value)
                .map_err(ApprovalError::from)
                .and_then(|stored| stored.into_pending(id.clone(), entry.version));
            match opened {
                Ok(pending) => out.push((entry.version, pending)),
                Err(e) => tracing::error!(
                    alert = "shared_state_unreadable",
                    approval = %id,
                    error = %e,
                    "a pending approval in the store does not open; ignored"
                ),
            }
        }
        Ok(out)
    }

    /// Deletes `pending` if it is still at `version`; whether this call did.
    async fn take(&self, id: &str, version: u64) -> Result<bool, ApprovalError> {
        match self
            .shared
            .put::<StoredPending>(StateKind::Approval, id, None, Expect::Version(version))
            .await
        {
            Ok(_) => Ok(true),
            Err(SharedError::Store(StoreError::Conflict)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Withdraws `pending`, just filed, if it is still there: filed as a
    /// seal landed, it must not outlive it.
    pub async fn withdraw(&self, pending: &Pending) -> Result<bool, ApprovalError> {
        self.take(&pending.id, pending.filed_at_change).await
    }

    /// Records a request of `requested_by` (whose lineage is
    /// `requester_lineage`); returns it with its id.
    pub async fn request(
        &self,
        action: DualControlAction,
        requested_by: &str,
        requester_lineage: Vec<String>,
        tenant: &TenantId,
        now_ms: u64,
    ) -> Result<Pending, ApprovalError> {
        let mut bytes = [0u8; ID_BYTES];
        // Ids must be unique: without randomness there is no request.
        csprng::fill(&mut bytes).map_err(|_| ApprovalError::NoRandomness)?;
        // About one id in a hundred has twelve decimal digits in a row:
        // drawn again, so every id is one `is_well_formed_id` accepts.
        while !is_well_formed_id(&hex::encode(bytes)) {
            csprng::fill(&mut bytes).map_err(|_| ApprovalError::NoRandomness)?;
        }
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let mut pending = Pending {
            id: hex::encode(bytes),
            action,
            requested_by: requested_by.to_owned(),
            tenant: tenant.clone(),
            requested_at_ms: now_ms,
            requester_lineage,
            expires_at_ms: now_ms.saturating_add(window_ms),
            filed_at_change: 0,
        };
        let mut live = 0;
        for (version, p) in self.all().await? {
            if p.expires_at_ms <= now_ms {
                // Lapsed: cleared by whichever replica sees it first.
                self.take(&p.id, version).await?;
            } else if p.tenant == *tenant {
                live += 1;
            }
        }
        // Two replicas may each see one slot left; the bound is per scope
        // and loose by at most the number of replicas.
        if live >= MAX_PENDING_PER_SCOPE {
            return Err(ApprovalError::TooMany);
        }
        match self
            .shared
            .put(
                StateKind::Approval,
                &pending.id,
                Some(&StoredPending::of(&pending)),
                Expect::Absent,
            )
            .await
        {
            Ok(change) => {
                pending.filed_at_change = change;
                Ok(pending)
            }
            // 64 random bits collided: never overwrite a pending request.
            Err(SharedError::Store(StoreError::Conflict)) => Err(ApprovalError::NoRandomness),
            Err(e) => Err(e.into()),
        }
    }

    /// The pending request `id` of `tenant`, if live at `now_ms`.
    pub async fn get(
        &self,
        id: &str,
        tenant: &TenantId,
        now_ms: u64,
    ) -> Result<Option<Pending>, ApprovalError> {
        Ok(self
            .shared
            .get::<StoredPending>(StateKind::Approval, id)
            .await?
            .map(|(version, stored)| stored.into_pending(id.to_owned(), version))
            .transpose()?
            .filter(|p| p.tenant == *tenant && p.expires_at_ms > now_ms))
    }

    /// Approves `id` on behalf of `approver`; returns the action to run.
    /// A request whose requester is no longer live (`requester_live` says
    /// no: revoked, perhaps on another replica) is dropped and refused.
    /// `runnable` may still refuse it (for example while sealed), and then
    /// the request stays pending.
    pub async fn approve(
        &self,
        id: &str,
        approver: &Approver<'_>,
        now_ms: u64,
        requester_live: impl FnOnce(&str) -> bool,
        runnable: impl FnOnce(&DualControlAction) -> bool,
    ) -> Result<Option<Pending>, ApprovalError> {
        let Some((version, stored)) = self
            .shared
            .get::<StoredPending>(StateKind::Approval, id)
            .await?
        else {
            return Err(ApprovalError::NotFound);
        };
        let entry = stored.into_pending(id.to_owned(), version)?;
        if entry.tenant != *approver.tenant || entry.expires_at_ms <= now_ms {
            return Err(ApprovalError::NotFound);
        }
        eligible(&entry, approver)?;
        if !requester_live(&entry.requested_by) {
            self.take(id, version).await?;
            return Err(ApprovalError::RequesterRevoked);
        }
        if !runnable(&entry.action) {
            return Ok(None);
        }
        // Another replica may approve between the read above and the delete
        // below (on PostgreSQL these are two round trips; yielding lets an
        // in-process store interleave the same way, so tests see the race).
        tokio::task::yield_now().await;
        // Of two approvers at once, on two replicas, one deletes it.
        if self.take(id, version).await? {
            Ok(Some(entry))
        } else {
            Err(ApprovalError::NotFound)
        }
    }

    /// Drops the pending requests `matching` says (a revoked requester's,
    /// the unseal requests a seal makes stale); how many.
    pub async fn drop_where(
        &self,
        matching: impl Fn(&Pending) -> bool,
    ) -> Result<usize, ApprovalError> {
        let mut dropped = 0;
        for (version, p) in self.all().await? {
            if matching(&p) && self.take(&p.id, version).await? {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// The tenant's pending approvals at `now_ms`, oldest first.
    pub async fn list(
        &self,
        tenant: &TenantId,
        now_ms: u64,
    ) -> Result<Vec<Pending>, ApprovalError> {
        let mut list: Vec<Pending> = self
            .all()
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p.tenant == *tenant && p.expires_at_ms > now_ms)
            .collect();
        list.sort_by_key(|p| (p.expires_at_ms, p.id.clone()));
        Ok(list)
    }
}

/// Whether `approver` may approve `entry` (SECURITY.md §5.1).
fn eligible(entry: &Pending, approver: &Approver<'_>) -> Result<(), ApprovalError> {
    if entry.requested_by == approver.name {
        return Err(ApprovalError::SameAdmin);
    }
    let unknown = crate::access::principals::UNKNOWN_CREATOR;
    if approver.lineage.iter().any(|a| a == unknown)
        || entry.requester_lineage.iter().any(|a| a == unknown)
    {
        return Err(ApprovalError::Ineligible(
            "takes part with a principal added before creators were recorded; re-add it",
        ));
    }
    if approver.created_at_ms >= entry.requested_at_ms {
        return Err(ApprovalError::Ineligible(
            "was created after the request (or before creation times were recorded)",
        ));
    }
    if approver.lineage.contains(&entry.requested_by) {
        return Err(ApprovalError::Ineligible(
            "was created by the requester, directly or through principals it created",
        ));
    }
    if entry.requester_lineage.iter().any(|a| a == approver.name) {
        return Err(ApprovalError::Ineligible(
            "created the requester, directly or through principals it created",
        ));
    }
    if approver
        .lineage
        .iter()
        .any(|a| entry.requester_lineage.contains(a))
    {
        return Err(ApprovalError::Ineligible(
            "shares a creator with the requester",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::secret::DataKey;
    use crate::shared::seal::StateSeal;
    use crate::store::memory::MemoryStore;

    fn approvals(window: Duration) -> Approvals {
        Approvals::new(window, shared(Arc::new(MemoryStore::new())))
    }

    fn shared(store: Arc<MemoryStore>) -> Shared {
        Shared::new(
            store,
            Arc::new(StateSeal::new(DataKey::from_bytes([4; 32]))),
        )
    }

    fn tenant(t: &str) -> TenantId {
        TenantId::new(t).unwrap()
    }

    fn configured<'a>(name: &'a str, tenant: &'a TenantId) -> Approver<'a> {
        Approver {
            name,
            tenant,
            created_at_ms: 0,
            lineage: &[],
        }
    }

    /// Approves at 1,001 ms (requests are filed earlier, with a window of
    /// a minute unless said).
    async fn approve(
        a: &Approvals,
        id: &str,
        who: &Approver<'_>,
    ) -> Result<Pending, ApprovalError> {
        a.approve(id, who, 1_001, |_| true, |_| true)
            .await
            .map(|p| p.unwrap())
    }

    #[tokio::test]
    async fn second_distinct_admin_of_the_same_tenant_approves_once() {
        let (t, u) = (tenant("t"), tenant("u"));
        let a = approvals(Duration::from_secs(60));
        let p = a
            .request(
                DualControlAction::RotateMasterKey,
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .await
            .unwrap();
        assert_eq!(a.list(&t, 1_001).await.unwrap().len(), 1);
        assert!(a.list(&u, 1_001).await.unwrap().is_empty());
        assert_eq!(
            approve(&a, &p.id, &configured("alice", &t))
                .await
                .unwrap_err(),
            ApprovalError::SameAdmin
        );
        assert_eq!(
            approve(&a, &p.id, &configured("bob", &u))
                .await
                .unwrap_err(),
            ApprovalError::NotFound
        );
        assert!(matches!(
            approve(&a, &p.id, &configured("bob", &t))
                .await
                .unwrap()
                .action,
            DualControlAction::RotateMasterKey
        ));
        assert_eq!(
            approve(&a, &p.id, &configured("carol", &t))
                .await
                .unwrap_err(),
            ApprovalError::NotFound,
            "used once"
        );
    }

    /// SECURITY.md §5.1: an approver made by the requester, or made after
    /// the request, is no second person.
    #[tokio::test]
    async fn approvers_created_by_the_requester_or_after_the_request_are_ineligible() {
        let t = tenant("t");
        let a = approvals(Duration::from_secs(60));
        let p = a
            .request(
                DualControlAction::ShredTenant(t.clone()),
                "alice",
                Vec::new(),
                &t,
                1_000,
            )
            .await
            .unwrap();
        let alice = ["alice".to_owned()];
        let minted = Approver {
            name: "mallory",
            tenant: &t,
            created_at_ms: 500,
            lineage: &alice,
        };
        assert!(matches!(
            approve(&a, &p.id, &minted).await,
            Err(ApprovalError::Ineligible(_))
        ));
        let carol = ["carol".to_owned()];
        let late = Approver {
            name: "bob",
            tenant: &t,
            created_at_ms: 1_000,
            lineage: &carol,
        };
        assert!(matches!(
            approve(&a, &p.id, &late).await,
            Err(ApprovalError::Ineligible(_))
        ));
        let eligible = Approver {
            created_at_ms: 999,
            ..late
        };
        assert!(approve(&a, &p.id, &eligible).await.is_ok());
    }

    /// Review finding: alice had an admin `m1` approved by bob, then used
    /// m1 to request what alice herself approved; siblings minted by one
    /// admin approved each other.
    #[tokio::test]
    async fn puppets_and_siblings_are_ineligible() {
        let t = tenant("t");
        let a = approvals(Duration::from_secs(60));
        let alice = ["alice".to_owned()];
        // m1 (created by alice) requests; alice may not approve.
        let p = a
            .request(
                DualControlAction::ShredTenant(t.clone()),
                "m1",
                alice.to_vec(),
                &t,
                1_000,
            )
            .await
            .unwrap();
        assert!(matches!(
            approve(&a, &p.id, &configured("alice", &t)).await,
            Err(ApprovalError::Ineligible(_))
        ));
        // m2, also created by alice, may not either (a sibling).
        let sibling = Approver {
            name: "m2",
            tenant: &t,
            created_at_ms: 10,
            lineage: &alice,
        };
        assert!(matches!(
            approve(&a, &p.id, &sibling).await,
            Err(ApprovalError::Ineligible(_))
        ));
        // A grandchild of alice's, through m1, may not either.
        let chain = ["m1".to_owned(), "alice".to_owned()];
        let grandchild = Approver {
            name: "g",
            tenant: &t,
            created_at_ms: 10,
            lineage: &chain,
        };
        assert!(matches!(
            approve(&a, &p.id, &grandchild).await,
            Err(ApprovalError::Ineligible(_))
        ));
        // bob, unrelated, may.
        assert!(approve(&a, &p.id, &configured("bob", &t)).await.is_ok());
    }

    #[tokio::test]
    async fn an_action_that_cannot_run_stays_pending() {
        let t = tenant("t");
        let a = approvals(Duration::from_secs(60));
        let p = a
            .request(
                DualControlAction::RotateMasterKey,
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .await
            .unwrap();
        assert!(
            a.approve(&p.id, &configured("bob", &t), 1_001, |_| true, |_| false)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(a.list(&t, 1_001).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn pending_requests_per_scope_are_bounded() {
        let t = tenant("t");
        let a = approvals(Duration::from_secs(60));
        for _ in 0..MAX_PENDING_PER_SCOPE {
            a.request(
                DualControlAction::RotateMasterKey,
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .await
            .unwrap();
        }
        assert_eq!(
            a.request(
                DualControlAction::RotateMasterKey,
                "alice",
                Vec::new(),
                &t,
                10
            )
            .await
            .unwrap_err(),
            ApprovalError::TooMany
        );
        assert!(
            a.request(
                DualControlAction::RotateMasterKey,
                "bob",
                Vec::new(),
                &tenant("u"),
                10
            )
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn approvals_lapse() {
        let t = tenant("t");
        let a = approvals(Duration::from_millis(20));
        let p = a
            .request(
                DualControlAction::ShredTenant(t.clone()),
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .await
            .unwrap();
        // Lapsed at 30 ms by the vault clock.
        assert_eq!(a.list(&t, 29).await.unwrap().len(), 1);
        assert!(a.list(&t, 1_001).await.unwrap().is_empty());
        assert_eq!(
            approve(&a, &p.id, &configured("bob", &t))
                .await
                .unwrap_err(),
            ApprovalError::NotFound
        );
    }

    /// Two replicas over one store: a request filed on one is listed and
    /// approved on the other, and of two admins approving it at once (one
    /// per replica) exactly one gets the action to run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_filed_on_one_replica_is_approved_once_on_any() {
        let t = tenant("t");
        let store = Arc::new(MemoryStore::new());
        let a = Arc::new(Approvals::new(
            Duration::from_secs(60),
            shared(Arc::clone(&store)),
        ));
        let b = Arc::new(Approvals::new(Duration::from_secs(60), shared(store)));
        for round in 0..20 {
            let p = a
                .request(
                    DualControlAction::RotateMasterKey,
                    "alice",
                    Vec::new(),
                    &t,
                    10,
                )
                .await
                .unwrap();
            assert_eq!(b.list(&t, 1_001).await.unwrap().len(), 1, "round {round}");
            let (bob, carol) = (configured("bob", &t), configured("carol", &t));
            let (x, y) = tokio::join!(approve(&a, &p.id, &bob), approve(&b, &p.id, &carol));
            let wins = usize::from(x.is_ok()) + usize::from(y.is_ok());
            assert_eq!(wins, 1, "round {round}: {x:?} {y:?}");
            let loser = x.err().or(y.err()).unwrap();
            assert_eq!(loser, ApprovalError::NotFound);
            assert!(a.list(&t, 1_001).await.unwrap().is_empty());
        }
    }

    /// A grant waits with the new principal's credentials, TOTP secret
    /// included. In the store it is sealed: the secret is not in the bytes,
    /// and bytes edited in the database make the request unreadable, never
    /// an action someone forged.
    #[tokio::test]
    async fn a_pending_grant_is_sealed_in_the_store() {
        use crate::access::totp::TotpSecret;
        use crate::domain::{Principal, Role};
        let t = tenant("t");
        let store = Arc::new(MemoryStore::new());
        let a = Approvals::new(Duration::from_secs(60), shared(Arc::clone(&store)));
        let totp = Arc::new(TotpSecret::generate().unwrap());
        let entry = PrincipalEntry {
            principal: Principal {
                name: "newadmin".into(),
                tenant: t.clone(),
                roles: [Role::Admin].into_iter().collect(),
            },
            key_hash: None,
            cert_identity: None,
            totp: Some(Arc::clone(&totp)),
            created_at_ms: 10,
            created_by: Some("alice".into()),
        };
        let p = a
            .request(
                DualControlAction::AddPrincipal(Box::new(entry)),
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .await
            .unwrap();
        let stored = crate::store::StateStore::states(store.as_ref(), StateKind::Approval)
            .await
            .unwrap();
        assert_eq!(stored.len(), 1);
        let bytes = &stored[0].1.value;
        let secret = totp.to_base32();
        let secret = secret.expose_secret().as_bytes();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret));
        assert!(!bytes.windows(8).any(|w| w == b"newadmin"));
        // Forged in the database: a flipped byte.
        let mut forged = bytes.clone();
        forged[20] ^= 1;
        crate::store::StateStore::put_state(
            store.as_ref(),
            StateKind::Approval,
            &p.id,
            Some(forged),
            Expect::Any,
        )
        .await
        .unwrap();
        let err = approve(&a, &p.id, &configured("bob", &t))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ApprovalError::Unavailable {
                    retryable: false,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// Review finding: a grant filed by an admin revoked since (perhaps on
    /// another replica, whose drop of its requests failed or raced) could
    /// still be approved, making live a principal whose credentials the
    /// revoked admin holds.
    #[tokio::test]
    async fn a_revoked_requesters_request_cannot_be_approved() {
        let t = tenant("t");
        let a = approvals(Duration::from_secs(60));
        let p = a
            .request(
                DualControlAction::RotateMasterKey,
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .await
            .unwrap();
        let refused = a
            .approve(
                &p.id,
                &configured("bob", &t),
                1_001,
                |name| name != "alice",
                |_| true,
            )
            .await
            .unwrap_err();
        assert_eq!(refused, ApprovalError::RequesterRevoked);
        assert!(a.list(&t, 1_001).await.unwrap().is_empty(), "dropped");
    }
}
