//! PostgreSQL: the production store, which many stateless Tessera replicas
//! share (tokio-postgres with a deadpool pool, runtime queries).
//!
//! The schema is `migrations/` ([`migrate`]). Every commit of the write
//! pipeline is one transaction (`commit.rs`): multi-row inserts from arrays
//! (`unnest`), acknowledged only after COMMIT returns, which on a Patroni
//! cluster with synchronous replication means the standby has it too.
//!
//! Commits of every replica are serialized by one transaction-scoped
//! advisory lock, taken first in each commit: the uniqueness checks (token
//! id, live fingerprint, one tombstone) and the audit log's next position
//! are read under it, so they hold across replicas exactly as the embedded
//! stores' commit lock makes them hold across one process's writers. A
//! replica commits one batch of many callers at a time, so the lock is
//! taken once per batch, not per call.
//!
//! Every commit is bounded by Tessera's own deadline: `statement_timeout`
//! does not cover the wait for a synchronous standby at COMMIT, and a
//! primary cut off from its cluster can hold that wait forever. A commit
//! past the deadline is reported as [`StoreError::Unavailable`] with its
//! outcome unknown, and its connection is closed rather than reused.
//!
//! Errors carry PostgreSQL's SQLSTATE and message, never its DETAIL (which
//! can quote row values).
//!
//! The SQL keeps to what PostgreSQL-compatible distributed databases accept
//! where that costs little (`unnest` of several arrays, `LEFT JOIN
//! LATERAL`, `ON CONFLICT`). Not portable, by choice: the advisory lock
//! that serializes commits (CockroachDB has none; a distributed database
//! would rely on its serializable transactions and retry on conflict
//! instead) and the PL/pgSQL triggers that make tables append-only (there,
//! grants alone would enforce it).

mod audit;
mod commit;
mod jobs;
mod keys;
pub mod migrate;
mod records;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use zeroize::Zeroizing;

use crate::store::{CommitError, Engine, StoreError, WriteBatch};

/// The advisory lock every commit (and re-seal) takes: `"tessera\x01"`.
const COMMIT_LOCK: i64 = 0x7465_7373_6572_6101;
/// The advisory lock migrations take: `"tessera\x02"`.
const MIGRATION_LOCK: i64 = 0x7465_7373_6572_6102;

/// How to reach the database.
pub struct PgOptions {
    /// A libpq URL or key=value string; several hosts allowed
    /// (`host=a,b target_session_attrs=read-write`). Never a password.
    pub url: String,
    /// The password, read from `password_file`.
    pub password: Option<Zeroizing<Vec<u8>>>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// The server-side bound on each statement.
    pub statement_timeout: Duration,
    /// Tessera's own bound on a whole commit, COMMIT included.
    pub commit_deadline: Duration,
    /// The bound on opening a connection (each host, when there are several).
    pub connect_timeout: Duration,
}

impl PgOptions {
    /// The defaults for `url`: 16 connections, statements bounded at 5 s,
    /// commits at 10 s, connections at 2 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            commit_deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a connection string was refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// It did not parse.
    #[error("not a PostgreSQL connection string (libpq URL or key=value)")]
    Invalid,
    /// It holds a password; the password belongs in `password_file`.
    #[error("holds a password; put it in store.password_file")]
    HasPassword,
}

/// Parses and checks a connection string without connecting.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, UrlError> {
    let config: tokio_postgres::Config = url.parse().map_err(|_| UrlError::Invalid)?;
    if config.get_password().is_some() {
        return Err(UrlError::HasPassword);
    }
    Ok(config)
}

/// The PostgreSQL store; cheap to clone (one pool).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    commit_deadline: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

impl PgStore {
    /// A pool on `options`; connects lazily, so a database that is down
    /// at start-up shows as `Unavailable` on first use, not a crash.
    pub fn new(options: &PgOptions) -> Result<Self, StoreError> {
        let mut config = parse_url(&options.url)
            .map_err(|e| StoreError::Unavailable(format!("store.url: {e}")))?;
        if let Some(password) = &options.password {
            config.password(password.as_slice());
        }
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("tessera");
        }
        let timeout = format!(
            "-c statement_timeout={}",
            options.statement_timeout.as_millis()
        );
        let server_options = match config.get_options() {
            Some(given) => format!("{given} {timeout}"),
            None => timeout,
        };
        config.options(&server_options);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let wait = Some(options.connect_timeout);
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(wait)
            .create_timeout(wait)
            .recycle_timeout(wait)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))?;
        Ok(Self {
            pool,
            commit_deadline: options.commit_deadline,
        })
    }

    /// Applies the migrations the database lacks; returns their versions.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut client = self.client().await?;
        migrate::apply(&mut client).await
    }

    /// Checks the database holds the schema this build expects; start-up
    /// refuses to serve on an older or newer one.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let expected = Some(migrate::latest());
        let found = migrate::current(&client).await?;
        if found == expected {
            return Ok(());
        }
        Err(StoreError::Unavailable(match found {
            None => "postgres: the schema is missing; run `tessera migrate`".to_owned(),
            Some(v) => format!(
                "postgres: schema version {v}, this build needs {}; run `tessera migrate`",
                migrate::latest()
            ),
        }))
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            StoreError::Unavailable(match e {
                deadpool_postgres::PoolError::Backend(e) => describe(&e),
                deadpool_postgres::PoolError::Timeout(_) => {
                    "postgres: no connection within the timeout".to_owned()
                }
                other => format!("postgres pool: {other}"),
            })
        })
    }

    /// Runs `write` on one connection within the commit deadline. Past the
    /// deadline the connection is closed, not returned to the pool: its
    /// transaction may still be waiting at COMMIT.
    async fn bounded<T>(
        &self,
        write: impl for<'c> AsyncFnOnce(&'c mut Object) -> Result<T, CommitError>,
    ) -> Result<T, CommitError> {
        let mut client = self.client().await?;
        match tokio::time::timeout(self.commit_deadline, write(&mut client)).await {
            Ok(result) => result,
            Err(_) => {
                drop(Object::take(client));
                Err(CommitError::Batch(StoreError::Unavailable(
                    "postgres: commit deadline passed; its outcome is unknown".to_owned(),
                )))
            }
        }
    }
}

/// A PostgreSQL error as text without row values: the SQLSTATE and
/// message of a server error, or what happened to the connection.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None if e.is_closed() => "postgres: connection closed".to_owned(),
        None => format!("postgres: {e}"),
    }
}

/// Maps a PostgreSQL error: the server or the connection, which a retry
/// may fix (a failover, a restart, a statement timeout).
fn unavailable(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

/// A column that did not hold the type the schema gives it.
fn damaged(_: tokio_postgres::Error) -> StoreError {
    StoreError::Damaged("postgres column of an unexpected type")
}

#[async_trait]
impl Engine for PgStore {
    async fn commit(&self, batch: std::sync::Arc<WriteBatch>) -> Result<(), CommitError> {
        self.bounded(async |client| commit::write(client, &batch).await)
            .await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // A reader sees only committed rows, and a commit becomes visible
        // after its COMMIT (with synchronous replication, after the
        // standby has it): whatever a reader found is already durable.
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
