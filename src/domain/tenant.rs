//! Tenants: the unit of isolation. Each tenant has its own keys, and no
//! principal ever reaches another tenant's tokens.

use std::fmt;
use std::sync::Arc;

/// The reserved id of the vault's own keys.
const SYSTEM: &str = "_system";

/// Longest tenant id accepted.
pub const MAX_TENANT_LEN: usize = 64;

/// A tenant id was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tenant id must be 1 to 64 characters of a-z, 0-9, '-' or '_', not starting with '_'")]
pub struct TenantIdError;

/// A tenant identifier: 1–64 characters of `a-z 0-9 - _`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates and wraps a tenant id. Ids starting with `_` are reserved
    /// for the vault's own keys.
    pub fn new(id: &str) -> Result<Self, TenantIdError> {
        let ok = !id.is_empty()
            && !id.starts_with('_')
            && id.len() <= MAX_TENANT_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            // A tenant id is in every audit event and metric label of its
            // tenant: never a card number (review finding).
            && !crate::leak::card_shaped(id);
        if ok {
            Ok(Self(id.into()))
        } else {
            Err(TenantIdError)
        }
    }

    /// The system scope: the vault's own keys (audit key) and the
    /// operators. No request can name it as a tenant.
    pub fn system() -> Self {
        Self(SYSTEM.into())
    }

    /// Whether this is the system scope.
    pub fn is_system(&self) -> bool {
        &*self.0 == SYSTEM
    }

    /// The id of the system scope, as configuration names it.
    pub const SYSTEM_NAME: &'static str = SYSTEM;

    /// Reads an id back from storage, where the system tenant may appear.
    pub fn from_stored(id: &str) -> Result<Self, TenantIdError> {
        if id == SYSTEM {
            Ok(Self::system())
        } else {
            Self::new(id)
        }
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_charset_and_length() {
        assert!(TenantId::new("default").is_ok());
        assert!(TenantId::new("acme-eu_1").is_ok());
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("Acme").is_err());
        assert!(TenantId::new("a/b").is_err());
        assert!(TenantId::new("_system").is_err(), "reserved");
        assert!(TenantId::new(&"a".repeat(65)).is_err());
    }
}
