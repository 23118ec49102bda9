//! Configuration: defaults, then a TOML file, then the environment, into a
//! [`RawConfig`]; then checked into a [`Config`] ("parse, don't validate").
//! Any problem here makes `tessera serve` exit with code 64 before it binds
//! a port, and `tessera config check` lists every problem at once.
//!
//! One module per section, in the manner of linkerd2-proxy's per-section
//! config modules: each holds its raw table, whose `Default` is the one
//! place its defaults live (so `tessera config print` shows them), and the
//! short check that turns it into the settings the server uses.
//!
//! | section | module |
//! |---|---|
//! | `listen`, `data_dir` | here |
//! | `[store]` | [`store`] |
//! | `[kms]`, `[keys]` | [`kms`] |
//! | `[tokens]`, `[limits]` | [`tokens`] |
//! | `[access]`, `[audit]` | [`access`] |
//! | `[[principals]]` | [`principals`] |
//! | `[tls]`, `[metrics.tls]` | [`tls`] |
//! | `[metrics]` | [`metrics`] |
//! | `[log]`, `[health]` | [`log`] |

pub mod access;
pub mod kms;
pub mod log;
pub mod metrics;
pub mod principals;
pub mod problems;
pub mod source;
pub mod store;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::access::{AccessSettings, RawAccess, RawAudit};
pub use self::kms::{KmsBackend, RawKeys, RawKms};
pub use self::log::{RawHealth, RawLog};
pub use self::metrics::RawMetrics;
pub use self::principals::{PrincipalEntry, RawPrincipal};
pub use self::problems::{Problem, Problems};
pub use self::store::{
    DEFAULT_FJALL_CACHE_MB, DEFAULT_SLED_CACHE_MB, PostgresSettings, RawStore, StoreBackend,
};
pub use self::tls::RawTls;
pub use self::tokens::{RawLimits, RawTokens};
use crate::telemetry::logging::LogSettings;
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
    /// Several values are: every one found, in the order of the sections.
    #[error("{} configuration problems:\n{}", .0.len(), list(.0))]
    Several(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every problem, whatever the variant (`Read` and `Parse` are one).
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Several(problems) => problems.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

impl From<Problems> for ConfigError {
    fn from(problems: Problems) -> Self {
        let mut all = problems.into_vec();
        match all.len() {
            1 => {
                let Problem { key, reason } = all.remove(0);
                Self::Invalid { key, reason }
            }
            _ => Self::Several(all),
        }
    }
}

impl From<Problem> for ConfigError {
    fn from(Problem { key, reason }: Problem) -> Self {
        Self::Invalid { key, reason }
    }
}

/// A TOML error without any text of the file: its line (when `source` is
/// known) and its message with every quoted value cut out. The parser's
/// own rendering quotes the offending line, and the message quotes values:
/// a misquoted key hash or a URL with a password would reach a terminal
/// or, on a reload, the log (review finding).
fn quoting_nothing(e: &toml::de::Error, source: Option<&str>) -> String {
    let mut message = String::new();
    let mut quote: Option<char> = None;
    for c in e.message().chars() {
        match (quote, c) {
            (None, '"' | '`' | '\'') => {
                quote = Some(c);
                message.push('…');
            }
            (Some(open), c) if c == open => quote = None,
            (Some(_), _) => {}
            (None, c) => message.push(c),
        }
    }
    match (source, e.span()) {
        (Some(text), Some(span)) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {message}")
        }
        _ => message,
    }
}

/// Default listen address: loopback, so nothing is exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// The configuration as written, every default filled in.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on.
    pub listen: String,
    /// Directory for the embedded store and key files. Required.
    pub data_dir: Option<PathBuf>,
    /// Store backend.
    pub store: RawStore,
    /// KMS backend.
    pub kms: RawKms,
    /// Token defaults.
    pub tokens: RawTokens,
    /// Request limits.
    pub limits: RawLimits,
    /// Key life-cycle settings.
    pub keys: RawKeys,
    /// Prometheus metrics.
    pub metrics: RawMetrics,
    /// Logs and traces.
    pub log: RawLog,
    /// The plaintext health listener for probes.
    pub health: RawHealth,
    /// Audit log policy.
    pub audit: RawAudit,
    /// Rate limits, lockout and anomaly detection.
    pub access: RawAccess,
    /// TLS for the listener.
    pub tls: Option<RawTls>,
    /// Principals and their API key hashes (last: TOML writes arrays of
    /// tables after plain tables).
    pub principals: Vec<RawPrincipal>,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            data_dir: None,
            store: RawStore::default(),
            kms: RawKms::default(),
            tokens: RawTokens::default(),
            limits: RawLimits::default(),
            keys: RawKeys::default(),
            metrics: RawMetrics::default(),
            log: RawLog::default(),
            health: RawHealth::default(),
            audit: RawAudit::default(),
            access: RawAccess::default(),
            tls: None,
            principals: Vec::new(),
        }
    }
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
    /// Where to serve plaintext health for probes, if anywhere.
    pub health_listen: Option<SocketAddr>,
    /// Log format, filter and trace export.
    pub log: LogSettings,
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
    /// How long an approved export serves its operator.
    pub export_lifetime: std::time::Duration,
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

/// Checks `[store]` for the postgres backend (for `tessera migrate`, which
/// needs no other section).
pub fn postgres_settings(
    raw: &RawStore,
    profile: Profile,
) -> Result<PostgresSettings, ConfigError> {
    raw.postgres(profile).map_err(ConfigError::from)
}

/// Whether an endpoint URL carries credentials (`scheme://user:pw@host`).
/// Credentials come from files or the platform, never a URL in the
/// configuration: the check refuses them, and `config print` hides them.
pub fn has_credentials(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    authority.contains('@')
}

/// What `config print` shows instead of a value that could help an
/// attacker.
pub const REDACTED: &str = "<redacted>";

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
                    .map_err(|e| ConfigError::Parse(quoting_nothing(&e, Some(&text))))?
            }
            None => toml::Table::new(),
        };
        source::apply_env(&mut table, env);
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(quoting_nothing(&e, None)))
    }

    /// Checks every section and builds the [`Config`] for `profile`; on
    /// failure, every problem found.
    pub fn check(self, profile: Profile) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let listen = match self.listen.parse::<SocketAddr>() {
            Err(_) => {
                problems.add("listen", "not a socket address (HOST:PORT)");
                None
            }
            Ok(addr) if profile == Profile::Dev && !addr.ip().is_loopback() => {
                problems.add("listen", "--dev binds loopback addresses only");
                None
            }
            Ok(addr) => Some(addr),
        };
        if self.data_dir.is_none() {
            problems.add("data_dir", "required");
        }
        let store = self.store.check(profile, &mut problems);
        let kms = self
            .kms
            .check(profile, self.data_dir.as_deref(), &mut problems);
        let key_life = self.keys.check(&self.kms, &mut problems);
        let policy = tokens::check_policy(&self.tokens, &self.limits, &mut problems);
        let access = self.access.check(&mut problems);
        let tls = tls::check_listener(self.tls.as_ref(), profile, &mut problems);
        let verifies_clients = tls
            .as_ref()
            .and_then(Option::as_ref)
            .is_some_and(|t| t.client_ca_file.is_some());
        let principals =
            principals::check_principals(&self.principals, verifies_clients, &mut problems);
        let metrics = self.metrics.check(profile, &mut problems);
        let health_listen = self.health.check(profile, &mut problems);
        let log = self.log.check(profile, &mut problems);
        // Two listeners on one port: `serve` would fail to bind the second.
        let listeners = [
            ("listen", listen),
            ("health.listen", health_listen.flatten()),
            (
                "metrics.listen",
                metrics.as_ref().and_then(|m| m.as_ref().map(|m| m.listen)),
            ),
        ];
        for (i, (key, addr)) in listeners.iter().enumerate() {
            let clash = listeners[..i]
                .iter()
                .find(|(_, other)| match (addr, other) {
                    (Some(a), Some(b)) => {
                        a.port() == b.port()
                            && a.port() != 0
                            && (a.ip() == b.ip()
                                || a.ip().is_unspecified()
                                || b.ip().is_unspecified())
                    }
                    _ => false,
                });
            if let Some((other, _)) = clash {
                problems.add(key, format!("the same port as {other}"));
            }
        }
        let state_key = match (&self.access.state_key_file, &store, &self.data_dir) {
            (Some(path), _, _) => Some(StateKeyFile {
                path: path.clone(),
                create: false,
            }),
            (None, Some(StoreBackend::Postgres(_)), _) if profile == Profile::Production => {
                problems.add(
                    "access.state_key_file",
                    "required with backend = \"postgres\": every replica needs the same key \
                     (32 random bytes, mode 0600)",
                );
                None
            }
            (None, _, Some(data_dir)) => Some(StateKeyFile {
                path: data_dir.join(crate::shared::seal::FILE_NAME),
                create: true,
            }),
            (None, _, None) => None,
        };
        let checked = (|| {
            let key_life = key_life?;
            let access = access?;
            let mut policy = policy?;
            policy.data_key_max_age = key_life.data_key_max_age;
            policy.reencrypt_records_per_second = key_life.reencrypt_records_per_second;
            policy.key_cache = key_life.cache;
            policy.audit_tokenize_fail_closed = !self.audit.tokenize_fail_open;
            Some(Config {
                profile,
                listen: listen?,
                data_dir: self.data_dir.clone()?,
                store: store?,
                kms: kms?,
                policy,
                principals: principals?,
                metrics: metrics?,
                health_listen: health_listen?,
                log: log?,
                limits: access.limits,
                approval_window: access.approval_window,
                tls: tls?,
                otp_step: access.otp_step,
                audit_sinks: self.audit.sinks(),
                state_key: state_key?,
                shared_poll: access.shared_poll,
                export_lifetime: access.export_lifetime,
            })
        })();
        match checked {
            Some(config) if problems.count() == 0 => Ok(config),
            _ => Err(problems.into()),
        }
    }

    /// This configuration with what could help an attacker replaced by
    /// [`REDACTED`]: API key hashes (a weak key falls to a guess checked
    /// offline against its hash) and any password in the store URL (which
    /// the check refuses, but a wrong file may still hold).
    pub fn redacted(mut self) -> Self {
        for principal in &mut self.principals {
            if principal.api_key_hash.is_some() {
                principal.api_key_hash = Some(REDACTED.to_owned());
            }
        }
        if let Some(url) = &self.store.url {
            self.store.url = Some(crate::store::postgres::redact_password(url));
        }
        for endpoint in [&mut self.kms.endpoint, &mut self.log.otlp_endpoint] {
            if endpoint.as_deref().is_some_and(has_credentials) {
                *endpoint = Some(REDACTED.to_owned());
            }
        }
        self
    }

    /// The effective configuration as TOML (for `config print`).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Parse(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::Role;
    use crate::tokens::TokenFormat;

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
        let production = "data_dir = \"/x\"\nlisten = \"0.0.0.0:1\"\n[kms]\nbackend = \"shamir\"\n[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\n";
        let base = format!("{production}[metrics]\n");
        let check = |text: &str| load(text, &[]).unwrap().check(Profile::Production);
        let plain_off_loopback = check(&format!("{base}listen = \"0.0.0.0:9464\"")).unwrap_err();
        assert!(plain_off_loopback.to_string().contains("[metrics.tls]"));
        let tls = "[metrics.tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        let config = check(&format!("{base}listen = \"0.0.0.0:9464\"\n{tls}")).unwrap();
        let endpoint = config.metrics.unwrap();
        assert_eq!(endpoint.listen.port(), 9464);
        assert!(endpoint.tls.is_some_and(|t| !t.require_client_cert));
        let mutual = format!(
            "{base}listen = \"0.0.0.0:9464\"\n{tls}client_ca_file = \"/ca.pem\"\nrequire_client_cert = true\n"
        );
        assert!(
            check(&mutual)
                .unwrap()
                .metrics
                .unwrap()
                .tls
                .unwrap()
                .require_client_cert
        );
        let loopback = check(&format!("{base}listen = \"127.0.0.1:9464\"")).unwrap();
        assert!(loopback.metrics.is_some_and(|m| m.tls.is_none()));
        for bad in [
            format!("{production}{tls}"),
            format!("{base}listen = \"0.0.0.0:1\"\n{tls}require_client_cert = true\n"),
            format!("{base}listen = \"0.0.0.0:1\"\n[metrics.tls]\ncert_file = \"/c.pem\"\n"),
            // Review finding: a CA without required certificates let any
            // scraper in.
            format!("{base}listen = \"0.0.0.0:1\"\n{tls}client_ca_file = \"/ca.pem\"\n"),
        ] {
            let err = check(&bad).unwrap_err();
            assert!(err.to_string().contains("metrics."), "{bad}: {err}");
        }
        // --dev keeps every listener on loopback, metrics included.
        let dev = load(
            &format!("data_dir = \"/x\"\n[metrics]\nlisten = \"0.0.0.0:9464\"\n{tls}"),
            &[],
        )
        .unwrap()
        .check(Profile::Dev)
        .unwrap_err();
        assert!(dev.to_string().contains("--dev binds loopback"), "{dev}");
    }

    /// `config check` lists every problem, from every section, at once.
    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let text = "listen = \"nope\"\n[tokens]\nluhn = \"maybe\"\n[access]\nmax_failed_auth = 11\nlockout_minutes = 5\n[store]\nbackend = \"mongo\"\n[log]\nformat = \"xml\"\n";
        let err = load(text, &[]).unwrap().check(Profile::Dev).unwrap_err();
        let problems = err.problems();
        for key in [
            "listen",
            "data_dir",
            "tokens.luhn",
            "access.max_failed_auth",
            "access.lockout_minutes",
            "store.backend",
            "log.format",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(&format!("key {key}:"))),
                "{key} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(err.to_string().starts_with("7 configuration problems:\n"));
    }

    /// `config print` shows the effective configuration, defaults filled
    /// in, that loads back to the same thing; a key hash never shows.
    #[test]
    fn the_effective_config_prints_redacted_and_loads_back() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            "data_dir = \"/x\"\n[store]\nbackend = \"fjall\"\n[[principals]]\nname = \"pos\"\ntenant = \"default\"\nroles = [\"tokenize\"]\napi_key_hash = \"{hash}\"\n"
        );
        let raw = load(&text, &[("TESSERA__TOKENS__KEEP_LEADING", "8")]).unwrap();
        let printed = raw.redacted().to_toml().unwrap();
        assert!(!printed.contains(&"ab".repeat(32)), "{printed}");
        assert!(printed.contains(REDACTED));
        for line in [
            "listen = \"127.0.0.1:50051\"",
            "backend = \"fjall\"",
            "keep_leading = 8",
            "max_batch_items = 1000",
            "format = \"human\"",
            "rate_per_second = 10000",
        ] {
            assert!(printed.contains(line), "{line} missing from\n{printed}");
        }
        let again = load(&printed, &[]).unwrap();
        assert_eq!(again.to_toml().unwrap(), printed);
        // A password in the store URL never prints.
        let with_password = load(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://u:hunter2@db/v\"\n",
            &[],
        )
        .unwrap();
        let printed = with_password.redacted().to_toml().unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    /// Review finding: a parse error quoted the offending line, so a
    /// misquoted key hash or password reached stderr and the reload log.
    #[test]
    fn parse_errors_quote_no_value() {
        for (text, secret) in [
            ("api_key = sha256:2d63aa\n", "2d63aa"),
            ("[store]\nurl = \"postgres://u:hunter2@db/x\n", "hunter2"),
            (
                "listen = \"hunter2\"\n[[principals]]\nname = 7\n",
                "hunter2",
            ),
            ("[kms]\ntimeout_ms = \"hunter2\"\n", "hunter2"),
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(err.starts_with("config is not valid:"), "{err}");
        }
        let err = load("a = 1\nb = sha256:2d63\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    /// Review finding: credentials in an endpoint URL printed in clear and
    /// passed the check.
    #[test]
    fn credentials_in_endpoint_urls_are_refused_and_never_printed() {
        let text = "data_dir = \"/x\"\n[kms]\nbackend = \"aws-kms\"\nkey_id = \"k\"\nregion = \"r\"\nendpoint = \"https://AKIA:s3cr3tpw@kms.local\"\n[log]\notlp_endpoint = \"https://user:otlpSecretPw@collector:4317\"\n";
        let raw = load(text, &[]).unwrap();
        let printed = raw.clone().redacted().to_toml().unwrap();
        assert!(
            !printed.contains("s3cr3tpw") && !printed.contains("otlpSecretPw"),
            "{printed}"
        );
        let problems = raw.check(Profile::Dev).unwrap_err().problems();
        for key in ["kms.endpoint", "log.otlp_endpoint"] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains(&format!("key {key}: holds credentials"))),
                "{problems:?}"
            );
        }
        assert!(!has_credentials(
            "https://kms.eu-west-1.amazonaws.com/path@x"
        ));
        // Spans cross a network only over TLS in production.
        let plain = "data_dir = \"/x\"\n[kms]\nbackend = \"shamir\"\n[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\n[log]\notlp_endpoint = \"http://collector:4317\"\n";
        let err = load(plain, &[])
            .unwrap()
            .check(Profile::Production)
            .unwrap_err();
        assert!(err.to_string().contains("log.otlp_endpoint"), "{err}");
    }

    /// Review finding: listeners sharing a port passed the check and
    /// failed at start.
    #[test]
    fn two_listeners_on_one_port_are_refused() {
        let text = "data_dir = \"/x\"\nlisten = \"127.0.0.1:7000\"\n[health]\nlisten = \"127.0.0.1:7000\"\n[metrics]\nlisten = \"127.0.0.1:7001\"\n";
        let err = load(text, &[]).unwrap().check(Profile::Dev).unwrap_err();
        assert!(
            err.to_string()
                .contains("health.listen: the same port as listen"),
            "{err}"
        );
        let apart = text.replace("127.0.0.1:7000\"\n[metrics]", "127.0.0.1:7002\"\n[metrics]");
        assert!(load(&apart, &[]).unwrap().check(Profile::Dev).is_ok());
        let tenant = "data_dir = \"/x\"\n[[principals]]\nname = \"a\"\ntenant = \"5555555555554444\"\nroles = [\"tokenize\"]\napi_key_hash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n";
        let err = load(tenant, &[]).unwrap().check(Profile::Dev).unwrap_err();
        assert!(err.to_string().contains("principals[0].tenant"), "{err}");
    }
}
