//! The stored form of run-time principals: the principals file
//! (`principals.json`, written by `tessera init`) and the sealed shared
//! entry replicas read (see `persist`).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::PrincipalEntry;
use crate::access::api_key::KeyHash;
use crate::access::totp::TotpSecret;
use crate::domain::{Principal, Role, TenantId};

/// The run-time part of the book: `principals.json`, and the shared entry.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BookFile {
    pub(crate) added: Vec<StoredPrincipal>,
    pub(crate) revoked: BTreeSet<String>,
    /// Raised by every change. A replica never takes a book older than the
    /// one it holds: an old sealed book copied back into the database (to
    /// bring back a revoked principal) is refused.
    #[serde(default)]
    pub(crate) generation: u64,
}

/// A run-time principal as stored: in the principals file, and inside a
/// pending grant in shared state (sealed there).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredPrincipal {
    name: String,
    tenant: String,
    roles: Vec<String>,
    api_key_hash: Option<String>,
    cert_identity: Option<String>,
    /// Base32; the server must read it to verify codes, so it is kept in
    /// this 0600 file rather than hashed.
    totp_secret: Option<String>,
    /// Absent in files written before creation was recorded: such a
    /// principal's creation time is unknown, so it is never an eligible
    /// approver (it may have been minted by one admin alone).
    #[serde(default = "unknown_creation")]
    created_at_ms: u64,
    #[serde(default)]
    created_by: Option<String>,
}

/// The creation time of a principal added before creation was recorded.
fn unknown_creation() -> u64 {
    u64::MAX
}

impl StoredPrincipal {
    pub(crate) fn from_entry(e: &PrincipalEntry) -> Self {
        Self {
            name: e.principal.name.clone(),
            tenant: e.principal.tenant.as_str().to_owned(),
            roles: e
                .principal
                .roles
                .iter()
                .map(|r| r.name().to_owned())
                .collect(),
            api_key_hash: e.key_hash.as_ref().map(KeyHash::to_config_string),
            cert_identity: e.cert_identity.clone(),
            totp_secret: e
                .totp
                .as_ref()
                .map(|t| t.to_base32().expose_secret().to_owned()),
            created_at_ms: e.created_at_ms,
            created_by: e.created_by.clone(),
        }
    }

    pub(crate) fn into_entry(self) -> Result<PrincipalEntry, String> {
        let tenant = TenantId::from_stored(&self.tenant).map_err(|e| e.to_string())?;
        let roles = self
            .roles
            .iter()
            .map(|r| Role::parse(r))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key_hash = self
            .api_key_hash
            .as_deref()
            .map(|h| KeyHash::parse(h).ok_or("bad api_key_hash"))
            .transpose()?;
        let totp = self
            .totp_secret
            .as_deref()
            .map(|s| {
                TotpSecret::from_base32(s)
                    .map(Arc::new)
                    .ok_or("bad totp_secret")
            })
            .transpose()?;
        Ok(PrincipalEntry {
            principal: Principal {
                name: self.name,
                tenant,
                roles,
            },
            key_hash,
            cert_identity: self.cert_identity,
            totp,
            created_at_ms: self.created_at_ms,
            created_by: self.created_by,
        })
    }
}
