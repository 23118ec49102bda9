//! Who is calling: a principal belongs to one tenant and holds roles.

use std::collections::BTreeSet;
use std::fmt;

use crate::domain::tenant::TenantId;

/// A permission. Each RPC needs exactly one (PCI DSS 7.2.1, least privilege).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// Tokenize and TokenizeBatch.
    Tokenize,
    /// Detokenize and DetokenizeBatch: sees PANs.
    Detokenize,
    /// GetTokenInfo: public facts only.
    ReadInfo,
    /// DeleteToken.
    Delete,
    /// Key administration.
    Admin,
    /// Reading and verifying the audit log.
    Audit,
    /// Vault-wide actions: seal, unseal, master-key rotation and their
    /// approvals. Held only in the system scope ([`TenantId::system`]).
    Operator,
}

/// A role name was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}; expected tokenize, detokenize, read_info, delete, admin, audit or operator"
)]
pub struct UnknownRole(pub String);

impl Role {
    /// Every role, for matrices and help text.
    pub const ALL: [Self; 7] = [
        Self::Tokenize,
        Self::Detokenize,
        Self::ReadInfo,
        Self::Delete,
        Self::Admin,
        Self::Audit,
        Self::Operator,
    ];

    /// The role's configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokenize => "tokenize",
            Self::Detokenize => "detokenize",
            Self::ReadInfo => "read_info",
            Self::Delete => "delete",
            Self::Admin => "admin",
            Self::Audit => "audit",
            Self::Operator => "operator",
        }
    }

    /// Whether granting this role needs a second admin's approval: it reads
    /// PANs (`detokenize`) or holds power (`admin`, `audit`, `operator`);
    /// SECURITY.md §5.1.
    pub fn grant_needs_approval(self) -> bool {
        matches!(
            self,
            Self::Detokenize | Self::Admin | Self::Audit | Self::Operator
        )
    }

    /// Whether a principal of `tenant` may hold this role: the system scope
    /// holds `operator` and `audit` only, and `operator` exists nowhere else.
    pub fn allowed_in(self, tenant: &TenantId) -> bool {
        if tenant.is_system() {
            matches!(self, Self::Operator | Self::Audit)
        } else {
            self != Self::Operator
        }
    }

    /// Parses a configuration name.
    pub fn parse(name: &str) -> Result<Self, UnknownRole> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| UnknownRole(name.to_owned()))
    }
}

/// Longest principal name.
pub const MAX_NAME_LEN: usize = 64;

/// Why a principal name was refused. No variant carries the input, so a
/// refused name never reaches an error, a log line or the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty or longer than [`MAX_NAME_LEN`].
    #[error("must be 1 to 64 characters")]
    Length,
    /// A character outside `A–Z a–z 0–9 . _ - @`.
    #[error("may contain only letters, digits and . _ - @")]
    Character,
    /// Shaped like a card number (separators stripped).
    #[error("must not be a card number")]
    CardShaped,
}

/// Checks a principal name before anything logs, audits or stores it:
/// 1 to 64 characters from `A–Z a–z 0–9 . _ - @` (what SPIFFE path
/// segments, e-mail style ids and host names need), never card-shaped.
///
/// ```
/// use tessera::domain::principal::{NameError, check_name};
/// assert!(check_name("pos-terminal.eu@acme").is_ok());
/// assert_eq!(check_name("a b"), Err(NameError::Character));
/// assert_eq!(check_name("5555-5555-5555-4444"), Err(NameError::CardShaped));
/// ```
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(NameError::Length);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return Err(NameError::Character);
    }
    if crate::leak::contains_card_number(name) {
        return Err(NameError::CardShaped);
    }
    Ok(())
}

/// An authenticated caller.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// Unique name, recorded in every audit event (PCI DSS 8.2.1).
    pub name: String,
    /// The one tenant whose tokens this principal may reach.
    pub tenant: TenantId,
    /// What it may do.
    pub roles: BTreeSet<Role>,
}

impl Principal {
    /// Whether the principal holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the principal belongs to the system scope (operators).
    pub fn is_system(&self) -> bool {
        self.tenant.is_system()
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("roles", &self.roles)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 8: a 2.5 MB name made of card numbers reached the store and
    /// the audit log before it was refused.
    #[test]
    fn names_are_bounded_and_never_card_shaped() {
        assert_eq!(check_name(&"a".repeat(65)), Err(NameError::Length));
        assert_eq!(check_name(""), Err(NameError::Length));
        assert!(check_name(&"a".repeat(64)).is_ok());
        assert_eq!(check_name("4111111111111111"), Err(NameError::CardShaped));
        assert_eq!(check_name("3782-822463-10005"), Err(NameError::CardShaped));
        assert_eq!(
            check_name("4111_1111_1111_1111"),
            Err(NameError::CardShaped)
        );
        assert_eq!(check_name("x\n"), Err(NameError::Character));
        assert_eq!(check_name("admin\u{202e}"), Err(NameError::Character));
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()).unwrap(), role);
        }
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn operator_lives_only_in_the_system_scope() {
        let acme = TenantId::new("acme").unwrap();
        let system = TenantId::system();
        assert!(!Role::Operator.allowed_in(&acme));
        assert!(Role::Operator.allowed_in(&system));
        assert!(Role::Audit.allowed_in(&system));
        for role in [
            Role::Tokenize,
            Role::Detokenize,
            Role::ReadInfo,
            Role::Delete,
            Role::Admin,
        ] {
            assert!(
                role.allowed_in(&acme) && !role.allowed_in(&system),
                "{role:?}"
            );
        }
    }
}
