//! `DIR/dev-credentials.json`: the generated principals of `serve --dev`.
//!
//! Written once per data dir (mode 0600) and read back on every restart, so
//! scripts keep working. It holds API keys in clear, which is why it exists
//! only in dev mode. Layout per DESIGN.md §8.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access::api_key::{self, KeyHash};
use crate::access::principals::PrincipalEntry;
use crate::access::totp::TotpSecret;
use crate::csprng::RngError;
use crate::domain::{Principal, Role, TenantId};

/// File name inside the data dir.
pub const FILE_NAME: &str = "dev-credentials.json";

/// One generated principal.
#[derive(Serialize, Deserialize)]
pub struct DevCredential {
    /// The API key, in clear (dev only).
    pub api_key: String,
    /// RFC 6238 TOTP secret (base32) for admin principals.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub totp_secret: Option<String>,
    /// Tenant.
    pub tenant: String,
    /// Roles.
    pub roles: Vec<String>,
}

/// Reading or writing the file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevCredsError {
    /// I/O.
    #[error("dev credentials file: {0}")]
    Io(#[from] std::io::Error),
    /// Bad JSON or content.
    #[error("dev credentials file is malformed: {0}")]
    Malformed(String),
    /// No randomness.
    #[error(transparent)]
    Rng(#[from] RngError),
}

fn spec() -> [(&'static str, &'static str, &'static [Role], bool); 7] {
    const POS: &[Role] = &[Role::Tokenize, Role::ReadInfo];
    const PROCESSOR: &[Role] = &[
        Role::Tokenize,
        Role::Detokenize,
        Role::ReadInfo,
        Role::Delete,
    ];
    const ADMIN: &[Role] = &[Role::Admin, Role::Audit];
    const OPERATOR: &[Role] = &[Role::Operator, Role::Audit];
    [
        ("pos", "default", POS, false),
        ("processor", "default", PROCESSOR, false),
        ("admin", "default", ADMIN, true),
        ("admin2", "default", ADMIN, true),
        ("other", "other", PROCESSOR, false),
        // The system scope: seal, unseal, master key rotation (two of them,
        // so dual control can be tried by hand).
        ("operator", TenantId::SYSTEM_NAME, OPERATOR, true),
        ("operator2", TenantId::SYSTEM_NAME, OPERATOR, true),
    ]
}

/// A fresh credential per the spec row.
fn generate(tenant: &str, roles: &[Role], admin: bool) -> Result<DevCredential, DevCredsError> {
    let key = api_key::generate()?;
    let totp_secret = if admin {
        let secret = TotpSecret::generate()?;
        Some(secret.to_base32().expose_secret().to_owned())
    } else {
        None
    };
    Ok(DevCredential {
        api_key: key.key.expose_secret().to_owned(),
        totp_secret,
        tenant: tenant.to_owned(),
        roles: roles.iter().map(|r| r.name().to_owned()).collect(),
    })
}

/// Loads the file in `dir`, creating it on first start. A file written
/// before a principal joined the spec (the operators) gets it added.
pub fn load_or_create(dir: &Path) -> Result<BTreeMap<String, DevCredential>, DevCredsError> {
    let path = dir.join(FILE_NAME);
    let mut creds: BTreeMap<String, DevCredential> = match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| DevCredsError::Malformed(e.to_string()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e.into()),
    };
    let mut changed = false;
    for (name, tenant, roles, admin) in spec() {
        if !creds.contains_key(name) {
            creds.insert(name.to_owned(), generate(tenant, roles, admin)?);
            changed = true;
        }
    }
    if changed {
        crate::private_file::replace(
            &path,
            &serde_json::to_vec_pretty(&creds)
                .map_err(|e| DevCredsError::Malformed(e.to_string()))?,
        )?;
    }
    Ok(creds)
}

/// The principals the file describes.
pub fn principals(
    creds: &BTreeMap<String, DevCredential>,
) -> Result<Vec<PrincipalEntry>, DevCredsError> {
    creds
        .iter()
        .map(|(name, c)| {
            let tenant = TenantId::from_stored(&c.tenant)
                .map_err(|e| DevCredsError::Malformed(e.to_string()))?;
            let roles = c
                .roles
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<BTreeSet<_>, _>>()
                .map_err(|e| DevCredsError::Malformed(e.to_string()))?;
            let totp = c
                .totp_secret
                .as_deref()
                .map(|t| {
                    TotpSecret::from_base32(t)
                        .map(Arc::new)
                        .ok_or_else(|| DevCredsError::Malformed("bad totp_secret".into()))
                })
                .transpose()?;
            Ok(PrincipalEntry {
                principal: Principal {
                    name: name.clone(),
                    tenant,
                    roles,
                },
                key_hash: Some(KeyHash::of(&c.api_key)),
                cert_identity: Some(format!("spiffe://tessera/{name}")),
                totp,
                created_at_ms: 0,
                created_by: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 7);
        assert_eq!(first["operator"].tenant, TenantId::SYSTEM_NAME);
        assert!(first["operator"].totp_secret.is_some());
        for (name, c) in &first {
            assert_eq!(c.api_key, second[name].api_key);
        }
        assert!(first["admin"].totp_secret.is_some());
        assert!(first["pos"].totp_secret.is_none());
        assert_eq!(first["other"].tenant, "other");
        let entries = principals(&first).unwrap();
        let pos = entries.iter().find(|e| e.principal.name == "pos").unwrap();
        assert!(pos.principal.has(Role::Tokenize) && !pos.principal.has(Role::Detokenize));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
