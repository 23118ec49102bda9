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
//! Pending approvals live in the server's memory: a restart drops them (they
//! must simply be requested again).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::access::principals::PrincipalEntry;
use crate::csprng;
use crate::domain::TenantId;

/// Most requests pending at once in one scope: the map is keyed by what
/// callers ask for, so it is bounded (SECURITY.md §5.6).
pub const MAX_PENDING_PER_SCOPE: usize = 32;

/// Random bytes in an approval id (shown as twice as many hex digits).
const ID_BYTES: usize = 8;

/// Whether `id` has the shape of an approval id (16 lowercase hex digits),
/// checked before an id from a request is looked up, logged or audited.
pub fn is_well_formed_id(id: &str) -> bool {
    id.len() == 2 * ID_BYTES && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
}

impl DualControlAction {
    /// The RPC name, as audit events and `ListApprovals` show it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RotateMasterKey => "RotateMasterKey",
            Self::ShredTenant(_) => "ShredTenant",
            Self::Unseal => "Unseal",
            Self::AddPrincipal(_) => "AddPrincipal",
        }
    }

    /// What exactly would run, for the approver to read.
    pub fn detail(&self) -> String {
        match self {
            Self::RotateMasterKey | Self::Unseal => String::new(),
            Self::ShredTenant(tenant) => format!("tenant {tenant}"),
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
    /// When it lapses.
    pub expires: Instant,
    /// When it lapses, as wall-clock milliseconds (for display).
    pub expires_at_ms: u64,
}

/// Why an approval was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// No pending approval has this id in the caller's tenant (or it lapsed).
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
}

/// Pending approvals.
#[derive(Debug)]
pub struct Approvals {
    window: Duration,
    pending: Mutex<BTreeMap<String, Pending>>,
}

impl Approvals {
    /// Approvals lapse after `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            pending: Mutex::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a request of `requested_by` (whose lineage is
    /// `requester_lineage`); returns it with its id.
    pub fn request(
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
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let pending = Pending {
            id: hex::encode(bytes),
            action,
            requested_by: requested_by.to_owned(),
            tenant: tenant.clone(),
            requested_at_ms: now_ms,
            requester_lineage,
            expires: Instant::now() + self.window,
            expires_at_ms: now_ms.saturating_add(window_ms),
        };
        let mut map = self.pending();
        let now = Instant::now();
        map.retain(|_, p| p.expires > now);
        if map.values().filter(|p| p.tenant == *tenant).count() >= MAX_PENDING_PER_SCOPE {
            return Err(ApprovalError::TooMany);
        }
        if map.contains_key(&pending.id) {
            // 64 random bits collided: never overwrite a pending request.
            return Err(ApprovalError::NoRandomness);
        }
        map.insert(pending.id.clone(), pending.clone());
        Ok(pending)
    }

    /// Approves `id` on behalf of `approver`; returns the action to run.
    /// `runnable` may still refuse it (for example while sealed), and then
    /// the request stays pending.
    pub fn approve(
        &self,
        id: &str,
        approver: &Approver<'_>,
        runnable: impl FnOnce(&DualControlAction) -> bool,
    ) -> Result<Option<Pending>, ApprovalError> {
        let mut pending = self.pending();
        let now = Instant::now();
        pending.retain(|_, p| p.expires > now);
        let entry = pending
            .get(id)
            .filter(|p| p.tenant == *approver.tenant)
            .ok_or(ApprovalError::NotFound)?;
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
        if !runnable(&entry.action) {
            return Ok(None);
        }
        pending.remove(id).map(Some).ok_or(ApprovalError::NotFound)
    }

    /// Drops the pending requests `matching` says (a revoked requester's,
    /// the unseal requests a seal makes stale); how many.
    pub fn drop_where(&self, matching: impl Fn(&Pending) -> bool) -> usize {
        let mut pending = self.pending();
        let before = pending.len();
        pending.retain(|_, p| !matching(p));
        before - pending.len()
    }

    /// The tenant's pending approvals, oldest first.
    pub fn list(&self, tenant: &TenantId) -> Vec<Pending> {
        let now = Instant::now();
        let mut list: Vec<Pending> = self
            .pending()
            .values()
            .filter(|p| p.tenant == *tenant && p.expires > now)
            .cloned()
            .collect();
        list.sort_by_key(|p| p.expires);
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn approve(a: &Approvals, id: &str, who: &Approver<'_>) -> Result<Pending, ApprovalError> {
        a.approve(id, who, |_| true).map(|p| p.unwrap())
    }

    #[test]
    fn second_distinct_admin_of_the_same_tenant_approves_once() {
        let (t, u) = (tenant("t"), tenant("u"));
        let a = Approvals::new(Duration::from_secs(60));
        let p = a
            .request(
                DualControlAction::RotateMasterKey,
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .unwrap();
        assert_eq!(a.list(&t).len(), 1);
        assert!(a.list(&u).is_empty());
        assert_eq!(
            approve(&a, &p.id, &configured("alice", &t)).unwrap_err(),
            ApprovalError::SameAdmin
        );
        assert_eq!(
            approve(&a, &p.id, &configured("bob", &u)).unwrap_err(),
            ApprovalError::NotFound
        );
        assert!(matches!(
            approve(&a, &p.id, &configured("bob", &t)).unwrap().action,
            DualControlAction::RotateMasterKey
        ));
        assert_eq!(
            approve(&a, &p.id, &configured("carol", &t)).unwrap_err(),
            ApprovalError::NotFound,
            "used once"
        );
    }

    /// SECURITY.md §5.1: an approver made by the requester, or made after
    /// the request, is no second person.
    #[test]
    fn approvers_created_by_the_requester_or_after_the_request_are_ineligible() {
        let t = tenant("t");
        let a = Approvals::new(Duration::from_secs(60));
        let p = a
            .request(
                DualControlAction::ShredTenant(t.clone()),
                "alice",
                Vec::new(),
                &t,
                1_000,
            )
            .unwrap();
        let alice = ["alice".to_owned()];
        let minted = Approver {
            name: "mallory",
            tenant: &t,
            created_at_ms: 500,
            lineage: &alice,
        };
        assert!(matches!(
            approve(&a, &p.id, &minted),
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
            approve(&a, &p.id, &late),
            Err(ApprovalError::Ineligible(_))
        ));
        let eligible = Approver {
            created_at_ms: 999,
            ..late
        };
        assert!(approve(&a, &p.id, &eligible).is_ok());
    }

    /// Review finding: alice had an admin `m1` approved by bob, then used
    /// m1 to request what alice herself approved; siblings minted by one
    /// admin approved each other.
    #[test]
    fn puppets_and_siblings_are_ineligible() {
        let t = tenant("t");
        let a = Approvals::new(Duration::from_secs(60));
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
            .unwrap();
        assert!(matches!(
            approve(&a, &p.id, &configured("alice", &t)),
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
            approve(&a, &p.id, &sibling),
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
            approve(&a, &p.id, &grandchild),
            Err(ApprovalError::Ineligible(_))
        ));
        // bob, unrelated, may.
        assert!(approve(&a, &p.id, &configured("bob", &t)).is_ok());
    }

    #[test]
    fn an_action_that_cannot_run_stays_pending() {
        let t = tenant("t");
        let a = Approvals::new(Duration::from_secs(60));
        let p = a
            .request(
                DualControlAction::RotateMasterKey,
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .unwrap();
        assert!(
            a.approve(&p.id, &configured("bob", &t), |_| false)
                .unwrap()
                .is_none()
        );
        assert_eq!(a.list(&t).len(), 1);
    }

    #[test]
    fn pending_requests_per_scope_are_bounded() {
        let t = tenant("t");
        let a = Approvals::new(Duration::from_secs(60));
        for _ in 0..MAX_PENDING_PER_SCOPE {
            a.request(
                DualControlAction::RotateMasterKey,
                "alice",
                Vec::new(),
                &t,
                10,
            )
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
            .is_ok()
        );
    }

    #[test]
    fn approvals_lapse() {
        let t = tenant("t");
        let a = Approvals::new(Duration::from_millis(20));
        let p = a
            .request(
                DualControlAction::ShredTenant(t.clone()),
                "alice",
                Vec::new(),
                &t,
                10,
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(a.list(&t).is_empty());
        assert_eq!(
            approve(&a, &p.id, &configured("bob", &t)).unwrap_err(),
            ApprovalError::NotFound
        );
    }
}
