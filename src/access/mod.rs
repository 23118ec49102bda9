//! Authentication and authorization.
//!
//! Principals authenticate with `authorization: Bearer <api key>` or a
//! client certificate (mTLS); each RPC then needs one of its [`Role`]s,
//! checked before any lookup, and KeyAdmin, Audit and Principals calls a
//! second factor as well (a TOTP code, or an admin session opened with one).
//!
//! Scopes: a principal belongs to a tenant, or to the system scope
//! ([`crate::domain::TenantId::system`]) whose `operator` role alone owns the
//! vault-wide actions. Granting a role that reads PANs or holds power waits
//! for a second, eligible admin ([`approvals`]); SECURITY.md §5.1–5.2.

pub mod anomaly;
pub mod api_key;
pub mod approvals;
pub mod exports;
pub mod limits;
pub mod principals;
pub mod refusals;
pub mod sessions;
pub mod shared_locks;
pub mod totp;

use crate::domain::{Principal, Role};

/// Authentication or authorization failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// No credentials were sent.
    #[error("missing credentials: send `authorization: Bearer <api key>`")]
    MissingCredentials,
    /// The credentials are not valid.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The principal lacks the role the RPC needs.
    #[error("the caller lacks the {} role", .0.name())]
    MissingRole(Role),
    /// The second factor is missing, wrong or replayed.
    #[error(transparent)]
    SecondFactor(#[from] totp::OtpError),
}

/// Checks that `principal` holds one of `roles` (an RPC open to tenant
/// admins and operators lists both; each acts in its own scope).
pub fn require(principal: &Principal, roles: &[Role]) -> Result<(), AccessError> {
    match roles.iter().find(|r| principal.has(**r)) {
        Some(_) => Ok(()),
        None => Err(AccessError::MissingRole(
            roles.first().copied().unwrap_or(Role::Admin),
        )),
    }
}
