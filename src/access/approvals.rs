//! Dual control (PCI DSS 3.6.1.2, 3.7.6): destructive admin actions — master
//! key rotation and tenant shredding — wait as a pending approval until a
//! second, distinct admin of the same tenant approves them within a window.
//! Sealing stays a one-person emergency brake.
//!
//! Pending approvals live in the server's memory: a restart drops them (they
//! must simply be requested again).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::csprng;
use crate::domain::TenantId;

/// Random bytes in an approval id (shown as twice as many hex digits).
const ID_BYTES: usize = 8;

/// Whether `id` has the shape of an approval id (16 lowercase hex digits),
/// checked before an id from a request is looked up, logged or audited.
pub fn is_well_formed_id(id: &str) -> bool {
    id.len() == 2 * ID_BYTES && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An action that needs two admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DualControlAction {
    /// Rewrap every data key under a new master key version.
    RotateMasterKey,
    /// Destroy every key of a tenant.
    ShredTenant(TenantId),
}

impl DualControlAction {
    /// The RPC name, as audit events and `ListApprovals` show it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RotateMasterKey => "RotateMasterKey",
            Self::ShredTenant(_) => "ShredTenant",
        }
    }
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

    /// Records a request; returns it with its id.
    pub fn request(
        &self,
        action: DualControlAction,
        requested_by: &str,
        tenant: &TenantId,
        now_ms: u64,
    ) -> Pending {
        let mut bytes = [0u8; ID_BYTES];
        // Ids need uniqueness, not secrecy; a failed RNG still yields a usable id.
        let _ = csprng::fill(&mut bytes);
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let pending = Pending {
            id: hex::encode(bytes),
            action,
            requested_by: requested_by.to_owned(),
            tenant: tenant.clone(),
            expires: Instant::now() + self.window,
            expires_at_ms: now_ms.saturating_add(window_ms),
        };
        self.pending().insert(pending.id.clone(), pending.clone());
        pending
    }

    /// Approves `id` on behalf of `approver`; returns the action to run.
    pub fn approve(
        &self,
        id: &str,
        approver: &str,
        tenant: &TenantId,
    ) -> Result<Pending, ApprovalError> {
        let mut pending = self.pending();
        let now = Instant::now();
        pending.retain(|_, p| p.expires > now);
        let entry = pending
            .get(id)
            .filter(|p| p.tenant == *tenant)
            .ok_or(ApprovalError::NotFound)?;
        if entry.requested_by == approver {
            return Err(ApprovalError::SameAdmin);
        }
        pending.remove(id).ok_or(ApprovalError::NotFound)
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

    #[test]
    fn second_distinct_admin_of_the_same_tenant_approves_once() {
        let a = Approvals::new(Duration::from_secs(60));
        let p = a.request(DualControlAction::RotateMasterKey, "alice", &tenant("t"), 0);
        assert_eq!(a.list(&tenant("t")).len(), 1);
        assert!(a.list(&tenant("u")).is_empty());
        assert_eq!(
            a.approve(&p.id, "alice", &tenant("t")).unwrap_err(),
            ApprovalError::SameAdmin
        );
        assert_eq!(
            a.approve(&p.id, "bob", &tenant("u")).unwrap_err(),
            ApprovalError::NotFound
        );
        assert_eq!(
            a.approve(&p.id, "bob", &tenant("t")).unwrap().action,
            DualControlAction::RotateMasterKey
        );
        assert_eq!(
            a.approve(&p.id, "carol", &tenant("t")).unwrap_err(),
            ApprovalError::NotFound,
            "used once"
        );
    }

    #[test]
    fn approvals_lapse() {
        let a = Approvals::new(Duration::from_millis(20));
        let p = a.request(
            DualControlAction::ShredTenant(tenant("t")),
            "alice",
            &tenant("t"),
            0,
        );
        std::thread::sleep(Duration::from_millis(40));
        assert!(a.list(&tenant("t")).is_empty());
        assert_eq!(
            a.approve(&p.id, "bob", &tenant("t")).unwrap_err(),
            ApprovalError::NotFound
        );
    }
}
