//! `[kms]` and `[keys]`: where the master key lives, and the life of the
//! keys under it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Profile;
use super::problems::Problems;
use crate::keyring::{CacheLimits, DEFAULT_CACHE_LIFETIME, DEFAULT_KMS_TIMEOUT};

/// KMS backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsBackend {
    /// A key file (dev only).
    Dev {
        /// The key file.
        key_file: PathBuf,
    },
    /// A Shamir-split master key; setup in `DATA_DIR/shamir.json`.
    Shamir,
    /// A PKCS#11 HSM.
    Pkcs11(crate::kms::pkcs11::Pkcs11Config),
    /// AWS KMS.
    AwsKms(crate::kms::AwsKmsConfig),
}

/// `[kms]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawKms {
    /// `dev` (the default under `--dev`, refused otherwise), `shamir`,
    /// `pkcs11` or `aws-kms`. Required outside `--dev`.
    pub backend: Option<String>,
    /// dev: the key file; default `DATA_DIR/dev-master.key`.
    pub key_file: Option<PathBuf>,
    /// pkcs11: the module path.
    pub module: Option<PathBuf>,
    /// pkcs11: the token label.
    pub token_label: Option<String>,
    /// pkcs11: the label of the KEK on the token.
    pub key_label: String,
    /// pkcs11: the file holding the user PIN.
    pub pin_file: Option<PathBuf>,
    /// aws-kms: key id, ARN or alias.
    pub key_id: Option<String>,
    /// aws-kms: region.
    pub region: Option<String>,
    /// aws-kms: endpoint override (a VPC endpoint).
    pub endpoint: Option<String>,
    /// Longest wait for one KMS call in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RawKms {
    fn default() -> Self {
        Self {
            backend: None,
            key_file: None,
            module: None,
            token_label: None,
            key_label: "tessera-kek".to_owned(),
            pin_file: None,
            key_id: None,
            region: None,
            endpoint: None,
            timeout_ms: u64::try_from(DEFAULT_KMS_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

fn required<T: Clone>(
    value: &Option<T>,
    key: &str,
    backend: &str,
    problems: &mut Problems,
) -> Option<T> {
    if value.is_none() {
        problems.add(key, format!("required for {backend}"));
    }
    value.clone()
}

impl RawKms {
    /// Checks the backend's keys.
    pub fn check(
        &self,
        profile: Profile,
        data_dir: Option<&Path>,
        problems: &mut Problems,
    ) -> Option<KmsBackend> {
        let default_backend = (profile == Profile::Dev).then_some("dev");
        match self.backend.as_deref().or(default_backend) {
            Some("dev") if profile == Profile::Production => {
                problems.add("kms.backend", "the dev KMS runs only with --dev");
                None
            }
            Some("dev") => Some(KmsBackend::Dev {
                key_file: match &self.key_file {
                    Some(file) => file.clone(),
                    None => data_dir?.join("dev-master.key"),
                },
            }),
            Some("shamir") => Some(KmsBackend::Shamir),
            Some(backend @ "aws-kms") => {
                if self.endpoint.as_deref().is_some_and(super::has_credentials) {
                    problems.add(
                        "kms.endpoint",
                        "holds credentials; AWS credentials come from the environment or the instance role",
                    );
                }
                let key_id = required(&self.key_id, "kms.key_id", backend, problems);
                let region = required(&self.region, "kms.region", backend, problems);
                Some(KmsBackend::AwsKms(crate::kms::AwsKmsConfig {
                    key_id: key_id?,
                    region: region?,
                    endpoint: self.endpoint.clone(),
                }))
            }
            Some(backend @ "pkcs11") => {
                let module = required(&self.module, "kms.module", backend, problems);
                let token_label = required(&self.token_label, "kms.token_label", backend, problems);
                let pin_file = required(&self.pin_file, "kms.pin_file", backend, problems);
                Some(KmsBackend::Pkcs11(crate::kms::pkcs11::Pkcs11Config {
                    module: module?,
                    token_label: token_label?,
                    key_label: self.key_label.clone(),
                    pin_file: pin_file?,
                }))
            }
            Some(other) => {
                problems.add(
                    "kms.backend",
                    format!("unknown backend {other:?}; expected dev, shamir, pkcs11 or aws-kms"),
                );
                None
            }
            None => {
                problems.add(
                    "kms.backend",
                    "required outside --dev (shamir, pkcs11 or aws-kms)",
                );
                None
            }
        }
    }
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawKeys {
    /// Cryptoperiod of a data key version in days (PCI DSS 3.6.4).
    pub data_key_max_age_days: u64,
    /// Re-encryption throttle in records per second (0: no limit).
    pub reencrypt_records_per_second: u32,
    /// Seconds an unwrapped key serves from memory before it is unwrapped
    /// again: how long a KMS outage goes unnoticed by calls on warm keys,
    /// and how long a revoked master key still serves.
    pub cache_lifetime_s: u64,
}

impl Default for RawKeys {
    fn default() -> Self {
        Self {
            data_key_max_age_days: 365,
            reencrypt_records_per_second: 0,
            cache_lifetime_s: DEFAULT_CACHE_LIFETIME.as_secs(),
        }
    }
}

/// The checked `[keys]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLife {
    /// Cryptoperiod of a data key version.
    pub data_key_max_age: Duration,
    /// Re-encryption throttle; `None`: no limit.
    pub reencrypt_records_per_second: Option<u32>,
    /// Key cache lifetime and KMS call bound.
    pub cache: CacheLimits,
}

impl RawKeys {
    /// Checks `[keys]` with `kms.timeout_ms`, which bounds the same cache.
    pub fn check(&self, kms: &RawKms, problems: &mut Problems) -> Option<KeyLife> {
        let max_age_days = problems.in_range(
            "keys.data_key_max_age_days",
            self.data_key_max_age_days,
            1..=3650,
            "must be 1 to 3650",
        );
        let lifetime = problems.in_range(
            "keys.cache_lifetime_s",
            self.cache_lifetime_s,
            1..=86_400,
            "must be 1 to 86400",
        );
        let kms_timeout = problems.in_range(
            "kms.timeout_ms",
            kms.timeout_ms,
            100..=60_000,
            "must be 100 to 60000",
        );
        Some(KeyLife {
            data_key_max_age: Duration::from_secs(max_age_days? * 24 * 3600),
            reencrypt_records_per_second: Some(self.reencrypt_records_per_second)
                .filter(|r| *r > 0),
            cache: CacheLimits {
                lifetime: Duration::from_secs(lifetime?),
                kms_timeout: Duration::from_millis(kms_timeout?),
            },
        })
    }
}
