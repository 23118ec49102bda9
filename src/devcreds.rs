//! `DIR/dev-credentials.json`: the generated principals of `serve --dev`.
//!
//! Written once per data dir (mode 0600) and read back on every restart, so
//! scripts keep working. It holds API keys in clear, which is why it exists
//! only in dev mode. Layout per DESIGN.md §8.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::access::api_key::{self, KeyHash};
use crate::config::PrincipalEntry;
use crate::csprng::{self, RngError};
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

fn spec() -> [(&'static str, &'static str, &'static [Role], bool); 5] {
    const POS: &[Role] = &[Role::Tokenize, Role::ReadInfo];
    const PROCESSOR: &[Role] = &[
        Role::Tokenize,
        Role::Detokenize,
        Role::ReadInfo,
        Role::Delete,
    ];
    const ADMIN: &[Role] = &[Role::Admin, Role::Audit];
    [
        ("pos", "default", POS, false),
        ("processor", "default", PROCESSOR, false),
        ("admin", "default", ADMIN, true),
        ("admin2", "default", ADMIN, true),
        ("other", "other", PROCESSOR, false),
    ]
}

/// RFC 4648 base32 without padding (the otpauth:// convention).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(
                ALPHABET[usize::try_from((buffer >> bits) & 31).unwrap_or(0)],
            ));
        }
    }
    if bits > 0 {
        out.push(char::from(
            ALPHABET[usize::try_from((buffer << (5 - bits)) & 31).unwrap_or(0)],
        ));
    }
    out
}

/// Loads the file in `dir`, creating it on first start.
pub fn load_or_create(dir: &Path) -> Result<BTreeMap<String, DevCredential>, DevCredsError> {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| DevCredsError::Malformed(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut creds = BTreeMap::new();
            for (name, tenant, roles, admin) in spec() {
                let key = api_key::generate()?;
                let totp_secret = if admin {
                    let mut secret = [0u8; 20];
                    csprng::fill(&mut secret)?;
                    Some(base32(&secret))
                } else {
                    None
                };
                creds.insert(
                    name.to_owned(),
                    DevCredential {
                        api_key: key.key.expose_secret().to_owned(),
                        totp_secret,
                        tenant: tenant.to_owned(),
                        roles: roles.iter().map(|r| r.name().to_owned()).collect(),
                    },
                );
            }
            write_private(
                &path,
                &serde_json::to_vec_pretty(&creds)
                    .map_err(|e| DevCredsError::Malformed(e.to_string()))?,
            )?;
            Ok(creds)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

/// The principals the file describes.
pub fn principals(
    creds: &BTreeMap<String, DevCredential>,
) -> Result<Vec<PrincipalEntry>, DevCredsError> {
    creds
        .iter()
        .map(|(name, c)| {
            let tenant =
                TenantId::new(&c.tenant).map_err(|e| DevCredsError::Malformed(e.to_string()))?;
            let roles = c
                .roles
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<BTreeSet<_>, _>>()
                .map_err(|e| DevCredsError::Malformed(e.to_string()))?;
            Ok(PrincipalEntry {
                principal: Principal {
                    name: name.clone(),
                    tenant,
                    roles,
                },
                key_hash: KeyHash::of(&c.api_key),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 5);
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
