//! Configuration: parsed from defaults, a TOML file and the environment into
//! a [`RawConfig`], then turned into a checked [`Config`] ("parse, don't
//! validate"). Any error here makes `tessera serve` exit with code 64 before
//! it binds a port.

pub mod source;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::access::api_key::KeyHash;
pub use crate::access::principals::PrincipalEntry;
use crate::access::totp::TotpSecret;
use crate::domain::{Principal, Role, TenantId};
use crate::keyring::CacheLimits;
use crate::tokens::{GeneratorKind, LuhnPolicy, TokenFormat};
use crate::vault::VaultPolicy;
use source::Source;

/// Which safety rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `serve --dev`: loopback only, dev KMS, generated credentials.
    Dev,
    /// Everything else: no dev shortcuts.
    Production,
}

/// Configuration was unusable. Never contains a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or had the wrong shape.
    #[error("config is not valid: {0}")]
    Parse(String),
    /// A value is out of range or unsafe.
    #[error("config key {key}: {reason}")]
    Invalid {
        /// The key, dotted.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The configuration as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Directory for the sled store and key files.
    pub data_dir: Option<PathBuf>,
    /// Store backend.
    #[serde(default)]
    pub store: RawStore,
    /// KMS backend.
    #[serde(default)]
    pub kms: RawKms,
    /// Token defaults.
    #[serde(default)]
    pub tokens: RawTokens,
    /// Request limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Key life-cycle settings.
    #[serde(default)]
    pub keys: RawKeys,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Audit log policy.
    #[serde(default)]
    pub audit: RawAudit,
    /// Rate limits, lockout and anomaly detection.
    #[serde(default)]
    pub access: RawAccess,
    /// Principals and their API key hashes.
    #[serde(default)]
    pub principals: Vec<RawPrincipal>,
    /// TLS for the listener.
    pub tls: Option<RawTls>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Server certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Server private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA of client certificates that authenticate principals (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate (default false).
    pub require_client_cert: Option<bool>,
}

/// `[access]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    /// Sustained calls per second per principal and RPC (default 10000).
    pub rate_per_second: Option<u32>,
    /// Burst (default 2 × rate).
    pub burst: Option<u32>,
    /// Failed authentications before a key id locks: 1 to 10 (default 10).
    pub max_failed_auth: Option<u32>,
    /// Lock duration in minutes: at least 30 (default 30).
    pub lockout_minutes: Option<u64>,
    /// NOT_FOUND answers per principal per minute before an enumeration
    /// alert (default 100).
    pub not_found_per_minute: Option<u32>,
    /// Lock a principal on an enumeration alert (default true).
    pub lock_on_anomaly: Option<bool>,
    /// Minutes an anomaly lock lasts; 0 or unset: until an admin unlocks.
    pub anomaly_lock_minutes: Option<u64>,
    /// Minutes a dual-control request waits for its second admin (default 15).
    pub approval_window_minutes: Option<u64>,
    /// TOTP time step in seconds (default 30, as authenticator apps use).
    pub totp_step_seconds: Option<u64>,
    /// Detokenize-volume rule: alert when a window holds more than this
    /// many times the principal's baseline (default 10) …
    pub detokenize_spike_factor: Option<f64>,
    /// … and more than this many detokenizes (default 1000).
    pub detokenize_spike_floor: Option<u64>,
    /// Length of a volume window in seconds (default 60).
    pub volume_window_seconds: Option<u64>,
    /// Detokenizes in a principal's first window (while its baseline is
    /// learned) above which it alerts anyway (default 1000, the floor).
    pub detokenize_learning_limit: Option<u64>,
    /// Failed authentications from one network (IPv4 /24, IPv6 /64) per
    /// window before its calls are refused unauthenticated (default 100).
    pub max_failed_auth_per_network: Option<u32>,
    /// Length of that window, and of the window refused calls are counted
    /// in for one aggregated audit event, in seconds (default 60).
    pub refusal_window_seconds: Option<u64>,
    /// Lifetime of an admin session in minutes: 1 to 60 (default 15).
    pub session_minutes: Option<u64>,
    /// Alert on a call from a network new to the principal (default true).
    pub alert_on_new_network: Option<bool>,
    /// Also lock the principal then (default false).
    pub lock_on_new_network: Option<bool>,
    /// The 32-byte key that seals shared state (principals, approvals,
    /// sessions, locks) in the store. Every replica of one vault needs the
    /// same file. Default: `DATA_DIR/state.key`, created when missing,
    /// which suits one node; required in production with PostgreSQL.
    pub state_key_file: Option<PathBuf>,
    /// How often a replica polls the store for changes made by the others
    /// (PostgreSQL), in milliseconds: 100 to 60000 (default 1000).
    pub shared_poll_ms: Option<u64>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Let tokenize succeed when its audit event cannot be written
    /// (default false: fail closed like detokenize and admin calls).
    pub tokenize_fail_open: Option<bool>,
    /// Second sink: append every event as a JSON line to this file.
    pub jsonl_file: Option<PathBuf>,
    /// Second sink: send every event to this syslog socket (e.g. /dev/log).
    pub syslog_socket: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address for the Prometheus endpoint; unset = no endpoint.
    pub listen: Option<String>,
    /// TLS for the endpoint (`[metrics.tls]`, the keys of `[tls]`):
    /// required off loopback.
    pub tls: Option<RawTls>,
}

/// `[keys]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Cryptoperiod of a data key version in days (default 365).
    pub data_key_max_age_days: Option<u64>,
    /// Re-encryption throttle in records per second (0 or unset = no limit).
    pub reencrypt_records_per_second: Option<u32>,
    /// Seconds an unwrapped key serves from memory before it is unwrapped
    /// again (default 3600): how long a KMS outage goes unnoticed by calls
    /// on warm keys, and how long a revoked master key still serves.
    pub cache_lifetime_s: Option<u64>,
}

/// `keys.cache_lifetime_s` and `kms.timeout_ms`.
fn check_key_cache(keys: &RawKeys, kms: &RawKms) -> Result<CacheLimits, ConfigError> {
    let mut limits = CacheLimits::default();
    if let Some(s) = keys.cache_lifetime_s {
        if !(1..=86_400).contains(&s) {
            return Err(invalid("keys.cache_lifetime_s", "must be 1 to 86400"));
        }
        limits.lifetime = std::time::Duration::from_secs(s);
    }
    if let Some(ms) = kms.timeout_ms {
        if !(100..=60_000).contains(&ms) {
            return Err(invalid("kms.timeout_ms", "must be 100 to 60000"));
        }
        limits.kms_timeout = std::time::Duration::from_millis(ms);
    }
    Ok(limits)
}

/// sled's page cache unless `store.cache_mb` says otherwise.
pub const DEFAULT_SLED_CACHE_MB: u64 = 64;

/// fjall's block cache unless `store.cache_mb` says otherwise: the server's
/// memory is about this, plus twice the write-buffer budget
/// ([`crate::store::fjall::WRITE_BUFFER_BUDGET`]), plus 70 MiB of runtime
/// and allocator slack; 48 keeps a 10-million-token store under load within
/// the 200 MiB target, where 64 reached 203 (BENCHMARKS.md, "What the RSS is").
pub const DEFAULT_FJALL_CACHE_MB: u64 = 48;

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sled` (default) or `fjall`.
    pub backend: Option<String>,
    /// Dev only: every sled commit waits this many microseconds after its
    /// flush, to show group commit on a slow disk (cloud volumes flush in
    /// 1–2 ms) on a machine whose disk is fast. Refused outside `--dev`.
    pub simulated_flush_delay_us: Option<u64>,
    /// The embedded store's cache in MiB (default 64; sled's page cache or
    /// fjall's block cache): the bulk of the server's memory; the OS page
    /// cache holds the rest of a large store.
    pub cache_mb: Option<u64>,
    /// postgres: a libpq URL or key=value string, several hosts allowed
    /// (`host=a,b target_session_attrs=read-write`); never a password.
    pub url: Option<String>,
    /// postgres: the file holding the database password.
    pub password_file: Option<PathBuf>,
    /// postgres: connections in the pool (default 16).
    pub pool_size: Option<usize>,
    /// postgres: the server-side bound on each statement (default 5000).
    pub statement_timeout_ms: Option<u64>,
    /// postgres: Tessera's own bound on each commit, COMMIT included
    /// (default 10000); `statement_timeout` does not cover the wait for a
    /// synchronous standby.
    pub commit_deadline_ms: Option<u64>,
    /// postgres: the bound on opening a connection (default 2000).
    pub connect_timeout_ms: Option<u64>,
    /// postgres: apply missing migrations at start-up (default false:
    /// `tessera migrate` does it, and `serve` refuses an old schema).
    pub migrate: Option<bool>,
    /// postgres: the CA certificates (PEM) that sign the database's
    /// certificate. Set, TLS is required and verified (host name
    /// included); required in production unless every host is loopback.
    pub ca_file: Option<PathBuf>,
}

/// `[kms]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKms {
    /// `dev` (only with --dev).
    pub backend: Option<String>,
    /// Dev key file; default `DATA_DIR/dev-master.key`.
    pub key_file: Option<PathBuf>,
    /// PKCS#11 module path.
    pub module: Option<PathBuf>,
    /// PKCS#11 token label.
    pub token_label: Option<String>,
    /// Label of the KEK on the token (default `tessera-kek`).
    pub key_label: Option<String>,
    /// File holding the HSM user PIN.
    pub pin_file: Option<PathBuf>,
    /// AWS KMS key id, ARN or alias.
    pub key_id: Option<String>,
    /// AWS region.
    pub region: Option<String>,
    /// AWS KMS endpoint override.
    pub endpoint: Option<String>,
    /// Longest wait for one KMS call in milliseconds (default 5000).
    pub timeout_ms: Option<u64>,
}

/// `[tokens]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// `random` (default) or `ff1`.
    pub generator: Option<String>,
    /// 0, 6 (default) or 8.
    pub keep_leading: Option<u32>,
    /// 0 or 4 (default).
    pub keep_trailing: Option<u32>,
    /// `invalid` (default), `valid` or `any`.
    pub luhn: Option<String>,
    /// Deterministic by default (false).
    pub deterministic: Option<bool>,
    /// Seconds a dead token (deleted, consumed, expired) is kept before
    /// compaction may purge it, counted from its tombstone: 0 to 315360000
    /// (default 604800, a week).
    pub purge_grace_s: Option<u64>,
    /// Compaction throttle in records examined per second (0 or unset = no
    /// limit).
    pub compact_records_per_second: Option<u32>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Items per batch call (default 1000).
    pub max_batch_items: Option<usize>,
    /// Metadata bytes per token (default 2048).
    pub max_metadata_bytes: Option<usize>,
    /// Metadata entries per token (default 16).
    pub max_metadata_entries: Option<usize>,
}

/// `[[principals]]`.
#[derive(Debug, Deserialize)]
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
    /// admin and audit roles.
    pub totp_secret_file: Option<PathBuf>,
}

/// Checks `[store]` for the postgres backend; every bound has a default.
/// In production, a database reached over the network needs `ca_file`:
/// card data's keys and records do not cross a network in the clear.
pub fn postgres_settings(
    raw: &RawStore,
    profile: Profile,
) -> Result<PostgresSettings, ConfigError> {
    if raw.simulated_flush_delay_us.is_some() || raw.cache_mb.is_some() {
        let field = if raw.cache_mb.is_some() {
            "store.cache_mb"
        } else {
            "store.simulated_flush_delay_us"
        };
        return Err(invalid(field, "applies only to the embedded backends"));
    }
    let url = raw
        .url
        .clone()
        .ok_or_else(|| invalid("store.url", "required with backend = \"postgres\""))?;
    let parsed =
        crate::store::postgres::parse_url(&url).map_err(|e| invalid("store.url", e.to_string()))?;
    if profile == Profile::Production
        && raw.ca_file.is_none()
        && !crate::store::postgres::all_hosts_local(&parsed)
    {
        return Err(invalid(
            "store.ca_file",
            "required when the database is not on this host: TLS to it, verified",
        ));
    }
    let millis = |field: &str, value: Option<u64>, default: u64, max: u64| match value {
        None => Ok(std::time::Duration::from_millis(default)),
        Some(ms @ 1..) if ms <= max => Ok(std::time::Duration::from_millis(ms)),
        Some(_) => Err(invalid(field, format!("between 1 and {max}"))),
    };
    let pool_size = match raw.pool_size {
        None => 16,
        Some(n @ 1..=1024) => n,
        Some(_) => return Err(invalid("store.pool_size", "between 1 and 1024")),
    };
    let statement_timeout = millis(
        "store.statement_timeout_ms",
        raw.statement_timeout_ms,
        5_000,
        600_000,
    )?;
    let commit_deadline = millis(
        "store.commit_deadline_ms",
        raw.commit_deadline_ms,
        10_000,
        600_000,
    )?;
    if statement_timeout >= commit_deadline {
        // Otherwise every statement that runs long is cut off by the
        // client first, and its server session lingers.
        return Err(invalid(
            "store.statement_timeout_ms",
            "must be below store.commit_deadline_ms",
        ));
    }
    Ok(PostgresSettings {
        url,
        password_file: raw.password_file.clone(),
        pool_size,
        statement_timeout,
        commit_deadline,
        connect_timeout: millis(
            "store.connect_timeout_ms",
            raw.connect_timeout_ms,
            2_000,
            60_000,
        )?,
        migrate: raw.migrate.unwrap_or(false),
        ca_file: raw.ca_file.clone(),
    })
}

/// Store backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// sled in `DATA_DIR/store`.
    Sled {
        /// Dev only: added to every commit's flush (see
        /// [`RawStore::simulated_flush_delay_us`]).
        simulated_flush_delay: Option<std::time::Duration>,
        /// sled's page cache, bytes.
        cache_bytes: u64,
    },
    /// fjall (an LSM tree) in `DATA_DIR/fjall`.
    Fjall {
        /// Dev only: added to every commit's sync (see
        /// [`RawStore::simulated_flush_delay_us`]).
        simulated_flush_delay: Option<std::time::Duration>,
        /// fjall's block cache, bytes.
        cache_bytes: u64,
    },
    /// PostgreSQL, shared by every replica.
    Postgres(PostgresSettings),
}

/// `[store] backend = "postgres"`: where the database is and how to bound
/// the calls to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The connection string (checked: parses, holds no password).
    pub url: String,
    /// The file holding the password.
    pub password_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// The server-side bound on each statement.
    pub statement_timeout: std::time::Duration,
    /// Tessera's own bound on each commit.
    pub commit_deadline: std::time::Duration,
    /// The bound on opening a connection.
    pub connect_timeout: std::time::Duration,
    /// Apply missing migrations at start-up.
    pub migrate: bool,
    /// The CA that signs the database's certificate: TLS required.
    pub ca_file: Option<PathBuf>,
}

impl StoreBackend {
    /// Every embedded backend's name and its directory under `DATA_DIR`.
    pub const EMBEDDED: [(&'static str, &'static str); 2] = [("sled", "store"), ("fjall", "fjall")];

    /// The name `[store] backend` gives this backend.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sled { .. } => "sled",
            Self::Fjall { .. } => "fjall",
            Self::Postgres(_) => "postgres",
        }
    }

    /// This backend's directory under `DATA_DIR`; `None` for a database
    /// server.
    pub fn dir(&self) -> Option<&'static str> {
        match self {
            Self::Sled { .. } => Some(Self::EMBEDDED[0].1),
            Self::Fjall { .. } => Some(Self::EMBEDDED[1].1),
            Self::Postgres(_) => None,
        }
    }
}

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

/// Checked configuration.
#[derive(Debug)]
pub struct Config {
    /// Dev or production.
    pub profile: Profile,
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Store.
    pub store: StoreBackend,
    /// KMS.
    pub kms: KmsBackend,
    /// Vault policy.
    pub policy: VaultPolicy,
    /// Configured principals (dev mode adds generated ones).
    pub principals: Vec<PrincipalEntry>,
    /// Where and how to serve Prometheus metrics, if anywhere.
    pub metrics: Option<crate::telemetry::exporter::MetricsEndpoint>,
    /// Rate limits, lockout, anomaly detection.
    pub limits: crate::access::limits::LimitsConfig,
    /// How long a dual-control request waits for its second admin.
    pub approval_window: std::time::Duration,
    /// TLS for the listener; `None` (plaintext) only in dev on loopback.
    pub tls: Option<crate::tls::TlsSettings>,
    /// TOTP time step.
    pub otp_step: std::time::Duration,
    /// Second audit sinks.
    pub audit_sinks: Vec<crate::audit::sink::SinkTarget>,
    /// The state key's file, and whether it may be created.
    pub state_key: StateKeyFile,
    /// How often replicas poll for each other's changes.
    pub shared_poll: std::time::Duration,
}

/// Where the key sealing shared state is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKeyFile {
    /// The file.
    pub path: PathBuf,
    /// Whether it is created when missing (the default file in the data
    /// directory); a configured file must exist, so replicas never each
    /// make their own.
    pub create: bool,
}

/// Default listen address: loopback, so nothing is exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

impl RawConfig {
    /// Reads `path` (if any), then applies the environment.
    pub fn load(path: Option<&Path>, env: &dyn Source) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Parse(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        source::apply_env(&mut table, env);
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))
    }

    /// Checks every value and builds the [`Config`] for `profile`.
    pub fn check(self, profile: Profile) -> Result<Config, ConfigError> {
        let listen: SocketAddr = self
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .map_err(|_| invalid("listen", "not a socket address (HOST:PORT)"))?;
        if profile == Profile::Dev && !listen.ip().is_loopback() {
            return Err(invalid("listen", "--dev binds loopback addresses only"));
        }
        let data_dir = self
            .data_dir
            .ok_or_else(|| invalid("data_dir", "required"))?;
        let cache_bytes = |default_mb: u64| match self.store.cache_mb.unwrap_or(default_mb) {
            mb @ 8..=65_536 => Ok(mb * 1024 * 1024),
            _ => Err(invalid("store.cache_mb", "between 8 and 65536")),
        };
        let simulated_flush_delay = match self.store.simulated_flush_delay_us {
            None => None,
            Some(_) if profile == Profile::Production => {
                return Err(invalid(
                    "store.simulated_flush_delay_us",
                    "a benchmark aid that runs only with --dev",
                ));
            }
            Some(us) if us > 100_000 => {
                return Err(invalid("store.simulated_flush_delay_us", "at most 100000"));
            }
            Some(us) => Some(std::time::Duration::from_micros(us)),
        };
        let store = match self.store.backend.as_deref().unwrap_or("sled") {
            "sled" => StoreBackend::Sled {
                simulated_flush_delay,
                cache_bytes: cache_bytes(DEFAULT_SLED_CACHE_MB)?,
            },
            "fjall" => StoreBackend::Fjall {
                simulated_flush_delay,
                cache_bytes: cache_bytes(DEFAULT_FJALL_CACHE_MB)?,
            },
            "postgres" => StoreBackend::Postgres(postgres_settings(&self.store, profile)?),
            other => {
                return Err(invalid(
                    "store.backend",
                    format!("unknown backend {other:?}; expected sled, fjall or postgres"),
                ));
            }
        };
        if !matches!(store, StoreBackend::Postgres(_)) {
            let postgres_only = [
                ("store.url", self.store.url.is_some()),
                ("store.password_file", self.store.password_file.is_some()),
                ("store.pool_size", self.store.pool_size.is_some()),
                (
                    "store.statement_timeout_ms",
                    self.store.statement_timeout_ms.is_some(),
                ),
                (
                    "store.commit_deadline_ms",
                    self.store.commit_deadline_ms.is_some(),
                ),
                (
                    "store.connect_timeout_ms",
                    self.store.connect_timeout_ms.is_some(),
                ),
                ("store.migrate", self.store.migrate.is_some()),
                ("store.ca_file", self.store.ca_file.is_some()),
            ];
            if let Some((field, _)) = postgres_only.iter().find(|(_, set)| *set) {
                return Err(invalid(field, "applies only to backend = \"postgres\""));
            }
        }
        let default_backend = match profile {
            Profile::Dev => Some("dev"),
            Profile::Production => None,
        };
        let key_cache = check_key_cache(&self.keys, &self.kms)?;
        let kms = match self.kms.backend.as_deref().or(default_backend) {
            Some("dev") if profile == Profile::Production => {
                return Err(invalid("kms.backend", "the dev KMS runs only with --dev"));
            }
            Some("dev") => KmsBackend::Dev {
                key_file: self
                    .kms
                    .key_file
                    .unwrap_or_else(|| data_dir.join("dev-master.key")),
            },
            Some("shamir") => KmsBackend::Shamir,
            Some("aws-kms") => KmsBackend::AwsKms(crate::kms::AwsKmsConfig {
                key_id: self
                    .kms
                    .key_id
                    .ok_or_else(|| invalid("kms.key_id", "required for aws-kms"))?,
                region: self
                    .kms
                    .region
                    .ok_or_else(|| invalid("kms.region", "required for aws-kms"))?,
                endpoint: self.kms.endpoint,
            }),
            Some("pkcs11") => {
                let module = self
                    .kms
                    .module
                    .ok_or_else(|| invalid("kms.module", "required for pkcs11"))?;
                let token_label = self
                    .kms
                    .token_label
                    .ok_or_else(|| invalid("kms.token_label", "required for pkcs11"))?;
                let pin_file = self
                    .kms
                    .pin_file
                    .ok_or_else(|| invalid("kms.pin_file", "required for pkcs11"))?;
                KmsBackend::Pkcs11(crate::kms::pkcs11::Pkcs11Config {
                    module,
                    token_label,
                    key_label: self
                        .kms
                        .key_label
                        .unwrap_or_else(|| "tessera-kek".to_owned()),
                    pin_file,
                })
            }
            Some(other) => {
                return Err(invalid(
                    "kms.backend",
                    format!("unknown backend {other:?}; expected dev, shamir, pkcs11 or aws-kms"),
                ));
            }
            None => {
                return Err(invalid(
                    "kms.backend",
                    "required outside --dev (shamir, pkcs11 or aws-kms)",
                ));
            }
        };
        let mut policy = check_policy(&self.tokens, &self.limits)?;
        let max_age_days = self.keys.data_key_max_age_days.unwrap_or(365);
        if !(1..=3650).contains(&max_age_days) {
            return Err(invalid("keys.data_key_max_age_days", "must be 1 to 3650"));
        }
        policy.data_key_max_age = std::time::Duration::from_secs(max_age_days * 24 * 3600);
        policy.reencrypt_records_per_second =
            self.keys.reencrypt_records_per_second.filter(|r| *r > 0);
        policy.key_cache = key_cache;
        policy.audit_tokenize_fail_closed = !self.audit.tokenize_fail_open.unwrap_or(false);
        let metrics = check_metrics(self.metrics)?;
        let limits = check_access(&self.access)?;
        let approval_minutes = self.access.approval_window_minutes.unwrap_or(15);
        if !(1..=24 * 60).contains(&approval_minutes) {
            return Err(invalid(
                "access.approval_window_minutes",
                "must be 1 to 1440",
            ));
        }
        let approval_window = std::time::Duration::from_secs(approval_minutes * 60);
        let state_key = match &self.access.state_key_file {
            Some(path) => StateKeyFile {
                path: path.clone(),
                create: false,
            },
            None if profile == Profile::Production
                && matches!(store, StoreBackend::Postgres(_)) =>
            {
                return Err(invalid(
                    "access.state_key_file",
                    "required with backend = \"postgres\": every replica needs the same key \
                     (32 random bytes, mode 0600)",
                ));
            }
            None => StateKeyFile {
                path: data_dir.join(crate::shared::seal::FILE_NAME),
                create: true,
            },
        };
        let shared_poll_ms = self.access.shared_poll_ms.unwrap_or(1000);
        if !(100..=60_000).contains(&shared_poll_ms) {
            return Err(invalid("access.shared_poll_ms", "must be 100 to 60000"));
        }
        let shared_poll = std::time::Duration::from_millis(shared_poll_ms);
        let audit_sinks = self
            .audit
            .jsonl_file
            .map(crate::audit::sink::SinkTarget::JsonLines)
            .into_iter()
            .chain(
                self.audit
                    .syslog_socket
                    .map(crate::audit::sink::SinkTarget::Syslog),
            )
            .collect();
        let tls = check_tls(self.tls, profile)?;
        let otp_step_seconds = self.access.totp_step_seconds.unwrap_or(30);
        if !(1..=300).contains(&otp_step_seconds) {
            return Err(invalid("access.totp_step_seconds", "must be 1 to 300"));
        }
        let mut names = BTreeSet::new();
        let principals = self
            .principals
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                if !names.insert(p.name.clone()) {
                    return Err(invalid(&format!("principals[{i}].name"), "duplicate name"));
                }
                let verifies_clients = tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
                if p.cert_identity.is_some() && !verifies_clients {
                    return Err(invalid(
                        &format!("principals[{i}].cert_identity"),
                        "needs tls.client_ca_file: without it no client certificate is verified",
                    ));
                }
                check_principal(i, p)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            profile,
            listen,
            data_dir,
            store,
            kms,
            policy,
            principals,
            metrics,
            limits,
            approval_window,
            state_key,
            shared_poll,
            tls,
            otp_step: std::time::Duration::from_secs(otp_step_seconds),
            audit_sinks,
        })
    }
}

fn check_tls(
    raw: Option<RawTls>,
    profile: Profile,
) -> Result<Option<crate::tls::TlsSettings>, ConfigError> {
    let Some(raw) = raw else {
        return match profile {
            Profile::Dev => Ok(None),
            Profile::Production => Err(invalid(
                "tls.cert_file",
                "required outside --dev: plaintext is served only by --dev on loopback",
            )),
        };
    };
    tls_settings(raw, "tls").map(Some)
}

/// `[metrics]`: plaintext only on loopback, where a local agent scrapes
/// it; any other address needs `[metrics.tls]`, in every profile.
fn check_metrics(
    raw: RawMetrics,
) -> Result<Option<crate::telemetry::exporter::MetricsEndpoint>, ConfigError> {
    let Some(listen) = raw.listen else {
        return match raw.tls {
            Some(_) => Err(invalid("metrics.listen", "required with [metrics.tls]")),
            None => Ok(None),
        };
    };
    let listen = listen
        .parse::<SocketAddr>()
        .map_err(|_| invalid("metrics.listen", "not a socket address (HOST:PORT)"))?;
    let tls = raw
        .tls
        .map(|t| tls_settings(t, "metrics.tls"))
        .transpose()?;
    if tls.is_none() && !listen.ip().is_loopback() {
        return Err(invalid(
            "metrics.listen",
            "off loopback the endpoint needs [metrics.tls] (cert_file, key_file, and \
             client_ca_file to require scraper certificates)",
        ));
    }
    Ok(Some(crate::telemetry::exporter::MetricsEndpoint {
        listen,
        tls,
    }))
}

/// The keys of a TLS table (`[tls]`, `[metrics.tls]`), named under
/// `section` in errors.
fn tls_settings(raw: RawTls, section: &str) -> Result<crate::tls::TlsSettings, ConfigError> {
    let key = |name: &str| format!("{section}.{name}");
    let cert_file = raw
        .cert_file
        .ok_or_else(|| invalid(&key("cert_file"), format!("required in [{section}]")))?;
    let key_file = raw
        .key_file
        .ok_or_else(|| invalid(&key("key_file"), format!("required in [{section}]")))?;
    let require_client_cert = raw.require_client_cert.unwrap_or(false);
    if require_client_cert && raw.client_ca_file.is_none() {
        return Err(invalid(
            &key("require_client_cert"),
            format!("needs {section}.client_ca_file to verify client certificates"),
        ));
    }
    Ok(crate::tls::TlsSettings {
        cert_file,
        key_file,
        client_ca_file: raw.client_ca_file,
        require_client_cert,
    })
}

fn check_access(raw: &RawAccess) -> Result<crate::access::limits::LimitsConfig, ConfigError> {
    let defaults = crate::access::limits::LimitsConfig::default();
    let rate = raw
        .rate_per_second
        .map_or(defaults.rate_per_second, f64::from);
    if rate <= 0.0 {
        return Err(invalid("access.rate_per_second", "must be positive"));
    }
    let burst = raw.burst.map_or(rate * 2.0, f64::from).max(1.0);
    let max_failed_auth = raw.max_failed_auth.unwrap_or(defaults.max_failed_auth);
    if !(1..=10).contains(&max_failed_auth) {
        return Err(invalid(
            "access.max_failed_auth",
            "must be 1 to 10 (PCI DSS 8.3.4)",
        ));
    }
    let lockout_minutes = raw.lockout_minutes.unwrap_or(30);
    if lockout_minutes < 30 {
        return Err(invalid(
            "access.lockout_minutes",
            "must be at least 30 (PCI DSS 8.3.4)",
        ));
    }
    let factor = raw
        .detokenize_spike_factor
        .unwrap_or(defaults.volume.factor);
    if !(factor.is_finite() && factor >= 1.0) {
        return Err(invalid(
            "access.detokenize_spike_factor",
            "must be at least 1",
        ));
    }
    let window = raw
        .volume_window_seconds
        .unwrap_or(defaults.volume.window.as_secs());
    if !(1..=3600).contains(&window) {
        return Err(invalid("access.volume_window_seconds", "must be 1 to 3600"));
    }
    let volume = crate::access::anomaly::VolumeRule {
        window: std::time::Duration::from_secs(window),
        factor,
        floor: raw.detokenize_spike_floor.unwrap_or(defaults.volume.floor),
        learning_limit: raw
            .detokenize_learning_limit
            .unwrap_or(defaults.volume.learning_limit),
    };
    let refusal_window = raw
        .refusal_window_seconds
        .unwrap_or(defaults.refusal_window.as_secs());
    if !(1..=3600).contains(&refusal_window) {
        return Err(invalid(
            "access.refusal_window_seconds",
            "must be 1 to 3600",
        ));
    }
    let session_minutes = raw
        .session_minutes
        .unwrap_or(defaults.session_ttl.as_secs() / 60);
    if !(1..=60).contains(&session_minutes) {
        return Err(invalid("access.session_minutes", "must be 1 to 60"));
    }
    Ok(crate::access::limits::LimitsConfig {
        rate_per_second: rate,
        burst,
        max_failed_auth,
        lockout: std::time::Duration::from_secs(lockout_minutes * 60),
        not_found_per_minute: raw
            .not_found_per_minute
            .unwrap_or(defaults.not_found_per_minute)
            .max(1),
        lock_on_anomaly: raw.lock_on_anomaly.unwrap_or(defaults.lock_on_anomaly),
        anomaly_lock: raw
            .anomaly_lock_minutes
            .filter(|m| *m > 0)
            .map(|m| std::time::Duration::from_secs(m.saturating_mul(60))),
        volume,
        alert_on_new_network: raw
            .alert_on_new_network
            .unwrap_or(defaults.alert_on_new_network),
        lock_on_new_network: raw
            .lock_on_new_network
            .unwrap_or(defaults.lock_on_new_network),
        max_failed_auth_per_network: raw
            .max_failed_auth_per_network
            .unwrap_or(defaults.max_failed_auth_per_network)
            .max(1),
        refusal_window: std::time::Duration::from_secs(refusal_window),
        session_ttl: std::time::Duration::from_secs(session_minutes * 60),
    })
}

fn check_policy(tokens: &RawTokens, limits: &RawLimits) -> Result<VaultPolicy, ConfigError> {
    let generator = match tokens.generator.as_deref().unwrap_or("random") {
        "random" => GeneratorKind::Random,
        "ff1" => GeneratorKind::Ff1,
        _ => return Err(invalid("tokens.generator", "expected random or ff1")),
    };
    let luhn = match tokens.luhn.as_deref().unwrap_or("invalid") {
        "invalid" => LuhnPolicy::Invalid,
        "valid" => LuhnPolicy::Valid,
        "any" => LuhnPolicy::Any,
        _ => return Err(invalid("tokens.luhn", "expected invalid, valid or any")),
    };
    let default_format = TokenFormat::new(
        generator,
        tokens.keep_leading.unwrap_or(6),
        tokens.keep_trailing.unwrap_or(4),
        luhn,
    )
    .map_err(|e| invalid("tokens", e.to_string()))?;
    let defaults = VaultPolicy::default();
    let max_batch_items = limits.max_batch_items.unwrap_or(defaults.max_batch_items);
    if !(1..=10_000).contains(&max_batch_items) {
        return Err(invalid("limits.max_batch_items", "must be 1 to 10000"));
    }
    let max_metadata_bytes = limits
        .max_metadata_bytes
        .unwrap_or(defaults.max_metadata_bytes);
    if max_metadata_bytes > 65_536 {
        return Err(invalid(
            "limits.max_metadata_bytes",
            "must be at most 65536",
        ));
    }
    let max_metadata_entries = limits
        .max_metadata_entries
        .unwrap_or(defaults.max_metadata_entries);
    if max_metadata_entries > 256 {
        return Err(invalid(
            "limits.max_metadata_entries",
            "must be at most 256",
        ));
    }
    let purge_grace_s = tokens
        .purge_grace_s
        .unwrap_or(defaults.purge_grace.as_secs());
    if purge_grace_s > 315_360_000 {
        return Err(invalid(
            "tokens.purge_grace_s",
            "must be at most 315360000 (ten years)",
        ));
    }
    Ok(VaultPolicy {
        default_format,
        purge_grace: std::time::Duration::from_secs(purge_grace_s),
        compact_records_per_second: tokens.compact_records_per_second.filter(|r| *r > 0),
        deterministic_by_default: tokens.deterministic.unwrap_or(false),
        max_batch_items,
        max_metadata_bytes,
        max_metadata_entries,
        ..defaults
    })
}

fn check_principal(i: usize, p: RawPrincipal) -> Result<PrincipalEntry, ConfigError> {
    let key = |field: &str| format!("principals[{i}].{field}");
    crate::domain::principal::check_name(&p.name)
        .map_err(|e| invalid(&key("name"), e.to_string()))?;
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
            name: p.name,
            tenant,
            roles,
        },
        key_hash,
        cert_identity: p.cert_identity,
        totp,
        created_at_ms: 0,
        created_by: None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<RawConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RawConfig::load(Some(&path), &env)
    }

    #[test]
    fn dev_config_with_defaults() {
        let cfg = load("data_dir = \"/tmp/x\"", &[])
            .unwrap()
            .check(Profile::Dev)
            .unwrap();
        assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            cfg.store,
            StoreBackend::Sled {
                simulated_flush_delay: None,
                cache_bytes: 64 * 1024 * 1024,
            }
        );
        assert_eq!(cfg.policy.default_format, TokenFormat::default());
    }

    #[test]
    fn a_simulated_slow_flush_is_a_dev_only_benchmark_aid() {
        let toml = "data_dir = \"/tmp/x\"\n[store]\nsimulated_flush_delay_us = 1500\n";
        let dev = load(toml, &[]).unwrap().check(Profile::Dev).unwrap();
        assert_eq!(
            dev.store,
            StoreBackend::Sled {
                simulated_flush_delay: Some(std::time::Duration::from_micros(1500)),
                cache_bytes: 64 * 1024 * 1024,
            }
        );
        let err = load(toml, &[])
            .unwrap()
            .check(Profile::Production)
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.simulated_flush_delay_us"), "{err}");
    }

    #[test]
    fn the_fjall_backend_is_chosen_by_name_with_its_cache() {
        let toml = "data_dir = \"/tmp/x\"\n[store]\nbackend = \"fjall\"\ncache_mb = 32\n";
        let cfg = load(toml, &[]).unwrap().check(Profile::Dev).unwrap();
        assert_eq!(
            cfg.store,
            StoreBackend::Fjall {
                simulated_flush_delay: None,
                cache_bytes: 32 * 1024 * 1024,
            }
        );
        for bad in [
            "simulated_flush_delay_us = 100001",
            "cache_mb = 1",
            "backend = \"rocks\"",
        ] {
            let toml = format!("data_dir = \"/tmp/x\"\n[store]\n{bad}\n");
            assert!(
                load(&toml, &[]).unwrap().check(Profile::Dev).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_postgres_backend_checks_its_url_bounds_and_tls() {
        let store = |lines: &str| {
            let toml = format!("data_dir = \"/tmp/x\"\n[store]\nbackend = \"postgres\"\n{lines}\n");
            load(&toml, &[]).unwrap()
        };
        let cfg = store("url = \"host=127.0.0.1 dbname=vault\"")
            .check(Profile::Dev)
            .unwrap();
        let StoreBackend::Postgres(settings) = cfg.store else {
            panic!("not postgres")
        };
        assert_eq!(settings.pool_size, 16);
        assert!(settings.statement_timeout < settings.commit_deadline);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        // Each of these is refused, naming its key.
        for (lines, key) in [
            ("", "store.url"),
            ("url = \"postgres://u:pw@127.0.0.1/v\"", "store.url"),
            (
                "url = \"host=127.0.0.1\"\nstatement_timeout_ms = 10000\ncommit_deadline_ms = 10000",
                "store.statement_timeout_ms",
            ),
            ("url = \"host=127.0.0.1\"\ncache_mb = 32", "store.cache_mb"),
            ("url = \"host=127.0.0.1\"\npool_size = 0", "store.pool_size"),
        ] {
            let err = store(lines).check(Profile::Dev).unwrap_err().to_string();
            assert!(err.contains(key), "{lines}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
        // A database over the network needs verified TLS in production;
        // one on this host does not.
        let remote = "url = \"host=db1.internal,db2.internal dbname=vault\"";
        let production = |lines: &str| postgres_settings(&store(lines).store, Profile::Production);
        let err = production(remote).unwrap_err().to_string();
        assert!(err.contains("store.ca_file"), "{err}");
        assert!(production(&format!("{remote}\nca_file = \"/etc/tessera/db-ca.pem\"")).is_ok());
        // hostaddr is what is dialled: a remote one, or none named at all,
        // is not local.
        for remote in [
            "url = \"hostaddr=10.0.0.5 dbname=vault\"",
            "url = \"host=localhost hostaddr=10.0.0.5\"",
            "url = \"dbname=vault\"",
        ] {
            assert!(production(remote).is_err(), "{remote}");
        }
        for local in ["host=127.0.0.1", "host=localhost", "host=/run/postgresql"] {
            assert!(production(&format!("url = \"{local}\"")).is_ok(), "{local}");
        }
        // Keys of the postgres backend on another backend are refused.
        let toml = "data_dir = \"/tmp/x\"\n[store]\nurl = \"host=127.0.0.1\"\n";
        let err = load(toml, &[])
            .unwrap()
            .check(Profile::Dev)
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.url"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let cfg = load(
            "data_dir = \"/tmp/x\"\n[tokens]\nkeep_leading = 6\n",
            &[
                ("TESSERA__TOKENS__KEEP_LEADING", "8"),
                ("TESSERA__LISTEN", "127.0.0.1:7000"),
            ],
        )
        .unwrap()
        .check(Profile::Dev)
        .unwrap();
        assert_eq!(cfg.policy.default_format.keep_leading(), 8);
        assert_eq!(cfg.listen.port(), 7000);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(load("bogus = 1", &[]), Err(ConfigError::Parse(_))));
        let bad = [
            "data_dir = \"/x\"\nlisten = \"nope\"",
            "data_dir = \"/x\"\nlisten = \"0.0.0.0:1\"",
            "data_dir = \"/x\"\n[tokens]\nkeep_leading = 3",
            "data_dir = \"/x\"\n[tokens]\nluhn = \"maybe\"",
            "data_dir = \"/x\"\n[store]\nbackend = \"mongo\"",
            "data_dir = \"/x\"\n[limits]\nmax_batch_items = 0",
            "data_dir = \"/x\"\n[access]\nmax_failed_auth = 11",
            "data_dir = \"/x\"\n[access]\nlockout_minutes = 5",
            "data_dir = \"/x\"\n[[principals]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"root\"]\napi_key_hash = \"sha256:00\"",
            "data_dir = \"/x\"\n[[principals]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"tokenize\"]",
            "data_dir = \"/x\"\n[[principals]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"admin\"]\ncert_identity = \"spiffe://x/a\"",
            "data_dir = \"/x\"\n[[principals]]\nname = \"a\"\ntenant = \"t\"\nroles = [\"tokenize\"]\ncert_identity = \"spiffe://x/a\"",
            "data_dir = \"/x\"\n[access]\ntotp_step_seconds = 0",
            "data_dir = \"/x\"\n[metrics]\nlisten = \"0.0.0.0:9464\"",
            "listen = \"127.0.0.1:1\"",
        ];
        for text in bad {
            assert!(
                load(text, &[]).unwrap().check(Profile::Dev).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn production_refuses_dev_kms_and_needs_a_backend() {
        for text in [
            "data_dir = \"/x\"\nlisten = \"0.0.0.0:1\"",
            "data_dir = \"/x\"\nlisten = \"0.0.0.0:1\"\n[kms]\nbackend = \"dev\"",
        ] {
            let err = load(text, &[])
                .unwrap()
                .check(Profile::Production)
                .unwrap_err();
            assert!(err.to_string().contains("kms.backend"), "{err}");
        }
        let shamir = "data_dir = \"/x\"\nlisten = \"0.0.0.0:1\"\n[kms]\nbackend = \"shamir\"\n";
        let plaintext = load(shamir, &[])
            .unwrap()
            .check(Profile::Production)
            .unwrap_err();
        assert!(
            plaintext.to_string().contains("tls.cert_file"),
            "{plaintext}"
        );
        let tls = "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        let ok = load(&format!("{shamir}{tls}"), &[])
            .unwrap()
            .check(Profile::Production)
            .unwrap();
        assert_eq!(ok.kms, KmsBackend::Shamir);
        assert!(ok.tls.is_some_and(|t| !t.require_client_cert));
        let required_without_ca = load(&format!("{shamir}{tls}require_client_cert = true\n"), &[])
            .unwrap()
            .check(Profile::Production)
            .unwrap_err();
        assert!(required_without_ca.to_string().contains("client_ca_file"));
    }

    #[test]
    fn principals_parse() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            "data_dir = \"/x\"\n[[principals]]\nname = \"pos\"\ntenant = \"default\"\nroles = [\"tokenize\", \"read_info\"]\napi_key_hash = \"{hash}\"\n"
        );
        let cfg = load(&text, &[]).unwrap().check(Profile::Dev).unwrap();
        assert_eq!(cfg.principals.len(), 1);
        assert!(cfg.principals[0].principal.has(Role::Tokenize));
        assert!(!cfg.principals[0].principal.has(Role::Detokenize));
    }

    /// Metrics leave loopback only over TLS, with the keys of `[tls]`.
    #[test]
    fn metrics_off_loopback_need_tls() {
        let base = "data_dir = \"/x\"\n[metrics]\n";
        let plain_off_loopback = load(&format!("{base}listen = \"0.0.0.0:9464\""), &[])
            .unwrap()
            .check(Profile::Dev)
            .unwrap_err();
        assert!(plain_off_loopback.to_string().contains("[metrics.tls]"));
        let tls = "[metrics.tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        let config = load(&format!("{base}listen = \"0.0.0.0:9464\"\n{tls}"), &[])
            .unwrap()
            .check(Profile::Dev)
            .unwrap();
        let endpoint = config.metrics.unwrap();
        assert_eq!(endpoint.listen.port(), 9464);
        assert!(endpoint.tls.is_some_and(|t| !t.require_client_cert));
        let loopback = load(&format!("{base}listen = \"127.0.0.1:9464\""), &[])
            .unwrap()
            .check(Profile::Dev)
            .unwrap();
        assert!(loopback.metrics.is_some_and(|m| m.tls.is_none()));
        for bad in [
            format!("data_dir = \"/x\"\n{tls}"),
            format!("{base}listen = \"0.0.0.0:1\"\n{tls}require_client_cert = true\n"),
            format!("{base}listen = \"0.0.0.0:1\"\n[metrics.tls]\ncert_file = \"/c.pem\"\n"),
        ] {
            let err = load(&bad, &[]).unwrap().check(Profile::Dev).unwrap_err();
            assert!(err.to_string().contains("metrics."), "{bad}: {err}");
        }
    }
}
