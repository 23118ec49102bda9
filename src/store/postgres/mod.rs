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
//! Every call, reads included, is bounded by Tessera's own deadline
//! (`commit_deadline`), the wait for a pooled connection with it. A call
//! past the deadline is [`StoreError::Unavailable`], a write's outcome
//! unknown, and its connection is closed rather than reused. A COMMIT
//! waits for the synchronous standby for as long as it takes (a cancel of
//! that wait makes PostgreSQL report the transaction committed with only a
//! warning, and a failover would then lose it), and the caller hears
//! UNAVAILABLE at the deadline; a primary cut off from its cluster holds
//! such a commit (and the commit lock) until Patroni demotes it. Every
//! write turns `statement_timeout` off for its COMMIT so that no timeout
//! can be that cancel: PostgreSQL 15 did not cancel the wait on a
//! statement timeout when tried here, but nothing documents that it never
//! will.
//!
//! A session whose client vanished mid-transaction is ended by the server
//! (`idle_in_transaction_session_timeout`, the commit deadline) and TCP
//! keepalives on both sides, so a frozen replica cannot hold the commit
//! lock for long.
//!
//! With `ca_file`, connections use TLS (rustls), always verified against
//! that CA and the host name, and never fall back to plaintext.
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
mod state;
mod tls;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
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
    /// The CA certificates (PEM) that sign the database's certificate.
    /// Set, TLS is required and verified; unset, connections are plain.
    pub ca_file: Option<std::path::PathBuf>,
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
            ca_file: None,
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

/// `url` when it parses and holds no password; otherwise a placeholder,
/// so that printing a configuration never shows a password (a string that
/// does not parse could hold one anywhere).
pub fn redact_password(url: &str) -> String {
    match parse_url(url) {
        Ok(_) => url.to_owned(),
        Err(_) => crate::config::REDACTED.to_owned(),
    }
}

/// Whether every host of a parsed connection string is this machine
/// (loopback addresses, `localhost`, or a Unix socket directory). A
/// string naming no host, or any `hostaddr` (which is what is dialled when
/// given) off this machine, is not.
pub fn all_hosts_local(config: &tokio_postgres::Config) -> bool {
    !config.get_hosts().is_empty()
        && config
            .get_hostaddrs()
            .iter()
            .all(std::net::IpAddr::is_loopback)
        && config.get_hosts().iter().all(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            tokio_postgres::config::Host::Unix(_) => true,
        })
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
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        if config.get_application_name().is_none() {
            config.application_name("tessera");
        }
        let timeout = format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={} \
             -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3",
            options.statement_timeout.as_millis(),
            options.commit_deadline.as_millis(),
        );
        let server_options = match config.get_options() {
            Some(given) => format!("{given} {timeout}"),
            None => timeout,
        };
        config.options(&server_options);
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &options.ca_file {
            Some(ca_file) => {
                if config.get_ssl_mode() == SslMode::Disable {
                    return Err(StoreError::Unavailable(
                        "store.url says sslmode=disable but store.ca_file is set".to_owned(),
                    ));
                }
                config.ssl_mode(SslMode::Require);
                let tls = MakeRustlsConnect::new(tls::client_config(ca_file)?);
                Manager::from_config(config, tls, recycling)
            }
            None => {
                if config.get_ssl_mode() == SslMode::Require {
                    return Err(StoreError::Unavailable(
                        "store.url says sslmode=require: set store.ca_file to verify the server"
                            .to_owned(),
                    ));
                }
                Manager::from_config(config, NoTls, recycling)
            }
        };
        // Opening a connection tries each host in turn, each within the
        // connect timeout: a dead first host must leave time for the next.
        let hosts = u32::try_from(host_count(&options.url)).unwrap_or(u32::MAX);
        let create = options
            .connect_timeout
            .saturating_mul(hosts)
            .saturating_add(Duration::from_secs(1));
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.commit_deadline))
            .create_timeout(Some(create))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))?;
        Ok(Self {
            pool,
            commit_deadline: options.commit_deadline,
        })
    }

    /// Applies the migrations the database lacks; returns their versions.
    /// Not bounded by the commit deadline: a migration may take long.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut client = self.client().await?;
        migrate::apply(&mut client).await
    }

    /// Grants `role` what serving needs and no more: SELECT and INSERT on
    /// the append-only tables, updates only where the schema changes rows
    /// in place. Serving as that role, not as the tables' owner, is what
    /// keeps the service from disabling the append-only triggers.
    pub async fn grant(&self, role: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        migrate::grant(&client, role).await
    }

    /// Checks the database holds the schema this build expects: start-up
    /// refuses an older one (or none) and serves a newer one, which a
    /// rolling upgrade's first new replica migrated to, with a warning.
    /// Warns too when serving as the tables' owner, and refuses a serving
    /// role that lacks this schema's grants or may create objects in it.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let found = migrate::current(&client).await?;
        match found {
            Some(v) if v == migrate::latest() => {}
            Some(v) if v > migrate::latest() => tracing::warn!(
                schema = v,
                build = migrate::latest(),
                "postgres: the schema is newer than this build; upgrade this replica"
            ),
            None => {
                return Err(StoreError::Unavailable(
                    "postgres: the schema is missing; run `tessera migrate`".to_owned(),
                ));
            }
            Some(v) => {
                return Err(StoreError::Unavailable(format!(
                    "postgres: schema version {v}, this build needs {}; run `tessera migrate`",
                    migrate::latest()
                )));
            }
        }
        if migrate::owns_schema(&client).await? {
            tracing::warn!(
                "postgres: serving as the owner of the tables, which can disable their \
                 append-only triggers; serve as a role given `tessera migrate --grant-to`"
            );
        } else {
            migrate::check_grants(&client).await?;
        }
        Ok(())
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

    /// Runs `op` on a pooled connection within the deadline, the wait for
    /// the connection included. Past the deadline the connection is
    /// closed, not returned to the pool: its transaction may still be
    /// waiting at COMMIT.
    async fn call<T, E: From<StoreError>>(
        &self,
        op: impl for<'c> AsyncFnOnce(&'c mut Object) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut slot: Option<Object> = None;
        let run = async {
            let client = slot.insert(self.client().await?);
            op(client).await
        };
        match tokio::time::timeout(self.commit_deadline, run).await {
            Ok(result) => result,
            Err(_) => {
                if let Some(client) = slot.take() {
                    drop(Object::take(client));
                }
                Err(E::from(StoreError::Unavailable(
                    "postgres: no answer within the deadline; a write's outcome is unknown"
                        .to_owned(),
                )))
            }
        }
    }
}

/// Commits `tx` with `statement_timeout` off for the COMMIT, so a COMMIT
/// waiting for the synchronous standby is never cancelled into a success
/// the standby did not see (see the module docs).
async fn commit_durably(tx: tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)
}

/// Runs one write statement in its own transaction, committed durably;
/// returns the rows it touched.
async fn execute_durably(
    client: &mut tokio_postgres::Client,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    let rows = tx.execute(statement, params).await.map_err(unavailable)?;
    commit_durably(tx).await?;
    Ok(rows)
}

/// How many hosts a connection string names (1 when it does not parse).
fn host_count(url: &str) -> usize {
    parse_url(url).map_or(1, |config| config.get_hosts().len().max(1))
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
        self.call(async |client| commit::write(client, &batch).await)
            .await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // A reader sees only committed rows, and a commit becomes visible
        // once its COMMIT returns, after the synchronous standby has it
        // (statement_timeout is off for every COMMIT, so no cancelled wait
        // makes a transaction visible early): what a reader found is
        // already durable.
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(async |client| {
            client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
    }
}
