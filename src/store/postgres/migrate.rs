//! The schema in `migrations/`, compiled in and applied in order.
//!
//! Each migration runs once, in its own transaction, recorded in
//! `tessera_migrations`. A transaction-scoped advisory lock makes replicas
//! that start together apply each migration once: the second waits, then
//! finds it applied.

use tokio_postgres::Client;

use super::{MIGRATION_LOCK, unavailable};
use crate::store::StoreError;

/// One schema step: its number, name and SQL.
pub struct Migration {
    /// Applied in increasing order; never renumbered.
    pub version: i32,
    /// The file's name without its number.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "store",
    sql: include_str!("../../../migrations/0001_store.sql"),
}];

/// The version this build's schema ends at.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the migrations `client`'s database lacks; returns their versions.
pub async fn apply(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(unavailable)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tessera_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let tx = client.transaction().await.map_err(unavailable)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(unavailable)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM tessera_migrations WHERE version = $1",
                &[&migration.version],
            )
            .await
            .map_err(unavailable)?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(migration.sql).await.map_err(unavailable)?;
        tx.execute(
            "INSERT INTO tessera_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        applied.push(migration.version);
    }
    Ok(applied)
}

/// The newest migration applied to `client`'s database, if any.
pub async fn current(client: &Client) -> Result<Option<i32>, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('tessera_migrations') IS NOT NULL", &[])
        .await
        .map_err(unavailable)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    client
        .query_one("SELECT max(version) FROM tessera_migrations", &[])
        .await
        .map_err(unavailable)
        .map(|row| row.get(0))
}
