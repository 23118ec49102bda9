//! `[store]`: which store holds the vault, and its bounds.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Profile;
use super::problems::{Problem, Problems, invalid};

/// sled's page cache unless `store.cache_mb` says otherwise.
pub const DEFAULT_SLED_CACHE_MB: u64 = 64;

/// fjall's block cache unless `store.cache_mb` says otherwise: the server's
/// memory is about this, plus twice the write-buffer budget
/// ([`crate::store::fjall::WRITE_BUFFER_BUDGET`]), plus 70 MiB of runtime
/// and allocator slack; 48 keeps a 10-million-token store under load within
/// the 200 MiB target, where 64 reached 203 (BENCHMARKS.md, "What the RSS is").
pub const DEFAULT_FJALL_CACHE_MB: u64 = 48;

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStore {
    /// `sled`, `fjall` or `postgres`.
    pub backend: String,
    /// Dev only: every commit waits this many microseconds after its
    /// flush, to show group commit on a slow disk (cloud volumes flush in
    /// 1–2 ms) on a machine whose disk is fast. Refused outside `--dev`.
    pub simulated_flush_delay_us: Option<u64>,
    /// The embedded store's cache in MiB (sled's page cache, default
    /// [`DEFAULT_SLED_CACHE_MB`]; fjall's block cache, default
    /// [`DEFAULT_FJALL_CACHE_MB`]): the bulk of the server's memory; the OS
    /// page cache holds the rest of a large store.
    pub cache_mb: Option<u64>,
    /// postgres: a libpq URL or key=value string, several hosts allowed
    /// (`host=a,b target_session_attrs=read-write`); never a password.
    pub url: Option<String>,
    /// postgres: the file holding the database password.
    pub password_file: Option<PathBuf>,
    /// postgres: connections in the pool.
    pub pool_size: usize,
    /// postgres: the server-side bound on each statement.
    pub statement_timeout_ms: u64,
    /// postgres: Tessera's own bound on each commit, COMMIT included;
    /// `statement_timeout` does not cover the wait for a synchronous
    /// standby.
    pub commit_deadline_ms: u64,
    /// postgres: the bound on opening a connection.
    pub connect_timeout_ms: u64,
    /// postgres: apply missing migrations at start-up (`tessera migrate`
    /// does it otherwise, and `serve` refuses an old schema).
    pub migrate: bool,
    /// postgres: the CA certificates (PEM) that sign the database's
    /// certificate. Set, TLS is required and verified (host name
    /// included); required in production unless every host is loopback.
    pub ca_file: Option<PathBuf>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            backend: "sled".to_owned(),
            simulated_flush_delay_us: None,
            cache_mb: None,
            url: None,
            password_file: None,
            pool_size: 16,
            statement_timeout_ms: 5_000,
            commit_deadline_ms: 10_000,
            connect_timeout_ms: 2_000,
            migrate: false,
            ca_file: None,
        }
    }
}

/// Store backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// sled in `DATA_DIR/store`.
    Sled {
        /// Dev only: added to every commit's flush (see
        /// [`RawStore::simulated_flush_delay_us`]).
        simulated_flush_delay: Option<Duration>,
        /// sled's page cache, bytes.
        cache_bytes: u64,
    },
    /// fjall (an LSM tree) in `DATA_DIR/fjall`.
    Fjall {
        /// Dev only: added to every commit's sync (see
        /// [`RawStore::simulated_flush_delay_us`]).
        simulated_flush_delay: Option<Duration>,
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
    pub statement_timeout: Duration,
    /// Tessera's own bound on each commit.
    pub commit_deadline: Duration,
    /// The bound on opening a connection.
    pub connect_timeout: Duration,
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

impl RawStore {
    /// Checks every key for the chosen backend.
    pub fn check(&self, profile: Profile, problems: &mut Problems) -> Option<StoreBackend> {
        match self.backend.as_str() {
            "sled" | "fjall" => self.check_embedded(profile, problems),
            "postgres" => problems
                .take(self.postgres(profile))
                .map(StoreBackend::Postgres),
            other => {
                problems.add(
                    "store.backend",
                    format!("unknown backend {other:?}; expected sled, fjall or postgres"),
                );
                None
            }
        }
    }

    fn check_embedded(&self, profile: Profile, problems: &mut Problems) -> Option<StoreBackend> {
        let before = problems.count();
        let defaults = Self::default();
        // Keys of the postgres backend, set on another, are a mistake
        // (a backend left out by a typo, most likely).
        let postgres_only = [
            ("store.url", self.url.is_some()),
            ("store.password_file", self.password_file.is_some()),
            ("store.pool_size", self.pool_size != defaults.pool_size),
            (
                "store.statement_timeout_ms",
                self.statement_timeout_ms != defaults.statement_timeout_ms,
            ),
            (
                "store.commit_deadline_ms",
                self.commit_deadline_ms != defaults.commit_deadline_ms,
            ),
            (
                "store.connect_timeout_ms",
                self.connect_timeout_ms != defaults.connect_timeout_ms,
            ),
            ("store.migrate", self.migrate != defaults.migrate),
            ("store.ca_file", self.ca_file.is_some()),
        ];
        for (key, _) in postgres_only.iter().filter(|(_, set)| *set) {
            problems.add(key, "applies only to backend = \"postgres\"");
        }
        let simulated_flush_delay = match self.simulated_flush_delay_us {
            None => None,
            Some(_) if profile == Profile::Production => {
                problems.add(
                    "store.simulated_flush_delay_us",
                    "a benchmark aid that runs only with --dev",
                );
                None
            }
            Some(us) => problems
                .in_range(
                    "store.simulated_flush_delay_us",
                    us,
                    0..=100_000,
                    "at most 100000",
                )
                .map(Duration::from_micros),
        };
        let sled = self.backend == "sled";
        let default_mb = if sled {
            DEFAULT_SLED_CACHE_MB
        } else {
            DEFAULT_FJALL_CACHE_MB
        };
        let cache_bytes = problems
            .in_range(
                "store.cache_mb",
                self.cache_mb.unwrap_or(default_mb),
                8..=65_536,
                "between 8 and 65536",
            )
            .map(|mb| mb * 1024 * 1024);
        if problems.count() != before {
            return None;
        }
        let cache_bytes = cache_bytes?;
        Some(if sled {
            StoreBackend::Sled {
                simulated_flush_delay,
                cache_bytes,
            }
        } else {
            StoreBackend::Fjall {
                simulated_flush_delay,
                cache_bytes,
            }
        })
    }

    /// The postgres backend's settings; every bound has a default. In
    /// production, a database reached over the network needs `ca_file`:
    /// card data's keys and records do not cross a network in the clear.
    pub fn postgres(&self, profile: Profile) -> Result<PostgresSettings, Problem> {
        if let Some(key) = [
            ("store.cache_mb", self.cache_mb.is_some()),
            (
                "store.simulated_flush_delay_us",
                self.simulated_flush_delay_us.is_some(),
            ),
        ]
        .iter()
        .find_map(|(key, set)| set.then_some(*key))
        {
            return Err(invalid(key, "applies only to the embedded backends"));
        }
        let url = self
            .url
            .clone()
            .ok_or_else(|| invalid("store.url", "required with backend = \"postgres\""))?;
        let parsed = crate::store::postgres::parse_url(&url)
            .map_err(|e| invalid("store.url", e.to_string()))?;
        if profile == Profile::Production
            && self.ca_file.is_none()
            && !crate::store::postgres::all_hosts_local(&parsed)
        {
            return Err(invalid(
                "store.ca_file",
                "required when the database is not on this host: TLS to it, verified",
            ));
        }
        let millis = |key: &str, ms: u64, max: u64| {
            if (1..=max).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(invalid(key, format!("between 1 and {max}")))
            }
        };
        if !(1..=1024).contains(&self.pool_size) {
            return Err(invalid("store.pool_size", "between 1 and 1024"));
        }
        let statement_timeout = millis(
            "store.statement_timeout_ms",
            self.statement_timeout_ms,
            600_000,
        )?;
        let commit_deadline = millis("store.commit_deadline_ms", self.commit_deadline_ms, 600_000)?;
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
            password_file: self.password_file.clone(),
            pool_size: self.pool_size,
            statement_timeout,
            commit_deadline,
            connect_timeout: millis("store.connect_timeout_ms", self.connect_timeout_ms, 60_000)?,
            migrate: self.migrate,
            ca_file: self.ca_file.clone(),
        })
    }
}
