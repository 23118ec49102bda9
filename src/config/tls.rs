//! `[tls]` (the gRPC listener) and the same keys under `[metrics.tls]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Profile;
use super::problems::Problems;
use crate::tls::TlsSettings;

/// A TLS table.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTls {
    /// Server certificate chain (PEM). Required.
    pub cert_file: Option<PathBuf>,
    /// Server private key (PEM). Required.
    pub key_file: Option<PathBuf>,
    /// CA of client certificates that authenticate principals (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate (needs `client_ca_file`).
    pub require_client_cert: bool,
}

impl RawTls {
    /// Checks the table found at `section`.
    pub fn check(&self, section: &str, problems: &mut Problems) -> Option<TlsSettings> {
        let key = |name: &str| format!("{section}.{name}");
        if self.cert_file.is_none() {
            problems.add(&key("cert_file"), format!("required in [{section}]"));
        }
        if self.key_file.is_none() {
            problems.add(&key("key_file"), format!("required in [{section}]"));
        }
        if self.require_client_cert && self.client_ca_file.is_none() {
            problems.add(
                &key("require_client_cert"),
                format!("needs {section}.client_ca_file to verify client certificates"),
            );
            return None;
        }
        Some(TlsSettings {
            cert_file: self.cert_file.clone()?,
            key_file: self.key_file.clone()?,
            client_ca_file: self.client_ca_file.clone(),
            require_client_cert: self.require_client_cert,
        })
    }
}

/// `[tls]` for the gRPC listener: required outside `--dev`. `Some(None)`
/// is a checked plaintext listener.
pub fn check_listener(
    raw: Option<&RawTls>,
    profile: Profile,
    problems: &mut Problems,
) -> Option<Option<TlsSettings>> {
    match (raw, profile) {
        (Some(raw), _) => raw.check("tls", problems).map(Some),
        (None, Profile::Dev) => Some(None),
        (None, Profile::Production) => {
            problems.add(
                "tls.cert_file",
                "required outside --dev: plaintext is served only by --dev on loopback",
            );
            None
        }
    }
}
