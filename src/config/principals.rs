//! `[[principals]]`: who may call, with which roles, authenticated how.
//! Reloaded on SIGHUP (see `tessera serve`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::problems::{Problem, Problems, invalid};
use crate::access::api_key::KeyHash;
pub use crate::access::principals::PrincipalEntry;
use crate::access::totp::TotpSecret;
use crate::domain::{Principal, Role, TenantId};

/// `[[principals]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipal {
    /// Unique name.
    pub name: String,
    /// Tenant id.
    pub tenant: String,
    /// Role names.
    pub roles: Vec<String>,
    /// `sha256:<hex>` of the API key (`tessera` never stores the key).
    pub api_key_hash: Option<String>,
    /// Client-certificate identity (SAN URI or DNS name) under mTLS.
    pub cert_identity: Option<String>,
    /// File holding the RFC 6238 TOTP secret (base32); required for the
    /// admin, audit and operator roles.
    pub totp_secret_file: Option<PathBuf>,
}

/// Checks every principal; `verifies_clients` says whether a client CA is
/// configured (a `cert_identity` means nothing without one).
pub fn check_principals(
    raw: &[RawPrincipal],
    verifies_clients: bool,
    problems: &mut Problems,
) -> Option<Vec<PrincipalEntry>> {
    let before = problems.count();
    let mut names = BTreeSet::new();
    let mut entries = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        if !names.insert(p.name.as_str()) {
            problems.add(&format!("principals[{i}].name"), "duplicate name");
            continue;
        }
        if p.cert_identity.is_some() && !verifies_clients {
            problems.add(
                &format!("principals[{i}].cert_identity"),
                "needs tls.client_ca_file: without it no client certificate is verified",
            );
            continue;
        }
        if let Some(entry) = problems.take(check_principal(i, p)) {
            entries.push(entry);
        }
    }
    (problems.count() == before).then_some(entries)
}

fn check_principal(i: usize, p: &RawPrincipal) -> Result<PrincipalEntry, Problem> {
    let key = |field: &str| format!("principals[{i}].{field}");
    crate::domain::principal::check_name(&p.name)
        .map_err(|e| invalid(&key("name"), e.to_string()))?;
    // A tenant id is a metric label and in every audit event: never a
    // card number (review finding).
    if crate::telemetry::card_shaped(&p.tenant) {
        return Err(invalid(&key("tenant"), "must not look like a card number"));
    }
    // Operators live in the system scope, which only configuration can name.
    let tenant =
        TenantId::from_stored(&p.tenant).map_err(|e| invalid(&key("tenant"), e.to_string()))?;
    let roles = p
        .roles
        .iter()
        .map(|r| Role::parse(r))
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|e| invalid(&key("roles"), e.to_string()))?;
    if roles.is_empty() {
        return Err(invalid(&key("roles"), "at least one role"));
    }
    if let Some(role) = roles.iter().find(|r| !r.allowed_in(&tenant)) {
        return Err(invalid(
            &key("roles"),
            format!(
                "{} cannot be held in tenant {tenant}: operator belongs to tenant {} only, which holds operator and audit only",
                role.name(),
                TenantId::SYSTEM_NAME
            ),
        ));
    }
    let key_hash = p
        .api_key_hash
        .as_deref()
        .map(|h| {
            KeyHash::parse(h)
                .ok_or_else(|| invalid(&key("api_key_hash"), "expected sha256:<64 hex digits>"))
        })
        .transpose()?;
    if key_hash.is_none() && p.cert_identity.is_none() {
        return Err(invalid(
            &key("api_key_hash"),
            "a principal needs an api_key_hash, a cert_identity or both",
        ));
    }
    if p.cert_identity.as_deref().is_some_and(str::is_empty) {
        return Err(invalid(&key("cert_identity"), "must not be empty"));
    }
    let needs_otp = roles
        .iter()
        .any(|r| matches!(r, Role::Admin | Role::Audit | Role::Operator));
    if needs_otp && p.totp_secret_file.is_none() {
        return Err(invalid(
            &key("totp_secret_file"),
            "required for the admin and audit roles (PCI DSS 8.4: MFA for administrative access)",
        ));
    }
    let totp = p
        .totp_secret_file
        .as_deref()
        .map(|path| {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| invalid(&key("totp_secret_file"), e.to_string()))?,
            );
            TotpSecret::from_base32(&text)
                .map(std::sync::Arc::new)
                .ok_or_else(|| invalid(&key("totp_secret_file"), "expected base32 (80+ bits)"))
        })
        .transpose()?;
    Ok(PrincipalEntry {
        principal: Principal {
            name: p.name.clone(),
            tenant,
            roles,
        },
        key_hash,
        cert_identity: p.cert_identity.clone(),
        totp,
        created_at_ms: 0,
        created_by: None,
    })
}
