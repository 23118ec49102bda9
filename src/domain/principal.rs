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
}

/// A role name was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; expected tokenize, detokenize, read_info, delete, admin or audit")]
pub struct UnknownRole(pub String);

impl Role {
    /// Every role, for matrices and help text.
    pub const ALL: [Self; 6] = [
        Self::Tokenize,
        Self::Detokenize,
        Self::ReadInfo,
        Self::Delete,
        Self::Admin,
        Self::Audit,
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

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()).unwrap(), role);
        }
        assert!(Role::parse("root").is_err());
    }
}
