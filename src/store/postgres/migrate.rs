//! The schema in `migrations/`, compiled in and applied in order.
//!
//! Each migration runs once, in its own transaction, recorded in
//! `tessera_migrations`. A transaction-scoped advisory lock makes replicas
//! that start together apply each migration once: the second waits, then
//! finds it applied.

use tokio_postgres::{Client, Transaction};

use super::{MIGRATION_LOCK, commit_durably, damaged, unavailable};
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
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "store",
        sql: include_str!("../../../migrations/0001_store.sql"),
    },
    Migration {
        version: 2,
        name: "state",
        sql: include_str!("../../../migrations/0002_state.sql"),
    },
    Migration {
        version: 3,
        name: "compaction",
        sql: include_str!("../../../migrations/0003_compaction.sql"),
    },
];

/// The version this build's schema ends at.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// A transaction holding the migration lock, without a statement timeout:
/// a migration may take long, and a replica may wait for another's.
async fn locked(client: &mut Client) -> Result<Transaction<'_>, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(unavailable)?;
    Ok(tx)
}

/// Applies the migrations `client`'s database lacks; returns their versions.
pub async fn apply(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let tx = locked(client).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tessera_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(unavailable)?;
    commit_durably(tx).await?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let tx = locked(client).await?;
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
        commit_durably(tx).await?;
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
        .try_get(0)
        .map_err(damaged)?;
    if !exists {
        return Ok(None);
    }
    client
        .query_one("SELECT max(version) FROM tessera_migrations", &[])
        .await
        .map_err(unavailable)?
        .try_get(0)
        .map_err(damaged)
}

/// Whether the connected role owns the tables (it can then disable their
/// triggers).
pub async fn owns_schema(client: &Client) -> Result<bool, StoreError> {
    client
        .query_one(
            "SELECT coalesce(bool_or(tableowner = current_user), false) FROM pg_tables
             WHERE tablename = 'records' AND schemaname = current_schema()",
            &[],
        )
        .await
        .map_err(unavailable)?
        .try_get(0)
        .map_err(damaged)
}

/// Checks that a serving role that does not own the schema holds what
/// serving needs (a migration applied without `--grant-to` again would
/// otherwise fail every write) and cannot create objects beside the tables
/// (which the owner's compaction functions could be made to call).
pub async fn check_grants(client: &Client) -> Result<(), StoreError> {
    let row = client
        .query_one(
            "SELECT has_schema_privilege(current_schema(), 'CREATE'),
                    has_table_privilege('purged_tokens', 'SELECT'),
                    has_function_privilege('tessera_purge(bytea[], bigint)', 'EXECUTE'),
                    has_function_privilege('tessera_drop_seal_versions(bytea[], integer[])', 'EXECUTE'),
                    has_function_privilege('tessera_graced(timestamptz, xid)', 'EXECUTE')",
            &[],
        )
        .await
        .map_err(unavailable)?;
    let granted = |i| row.try_get::<_, bool>(i).map_err(damaged);
    if granted(0)? {
        return Err(StoreError::Unavailable(
            "postgres: the serving role may create objects in the schema, which could take the \
             place of functions the compaction job runs as the owner; REVOKE CREATE ON SCHEMA \
             from it (and from PUBLIC)"
                .to_owned(),
        ));
    }
    for column in 1..=4 {
        if !granted(column)? {
            return Err(StoreError::Unavailable(
                "postgres: the serving role lacks grants of this build's schema; run \
                 `tessera migrate --grant-to ROLE` as the owner"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// Whether `role` is a plain lower-case identifier, the only role names
/// `grant` writes into SQL.
fn is_plain_identifier(role: &str) -> bool {
    let mut chars = role.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && role.len() <= 63
}

/// Grants `role` what serving needs: SELECT and INSERT on the append-only
/// tables, changes in place only where the schema makes them (the
/// fingerprint index, the audit head, wrapped keys, checkpoints, shared
/// state), and removal from the record tables only through the two
/// compaction functions, which delete nothing that does not qualify.
pub async fn grant(client: &Client, role: &str) -> Result<(), StoreError> {
    if !is_plain_identifier(role) {
        return Err(StoreError::Unavailable(
            "postgres: --grant-to takes a plain lower-case role name".to_owned(),
        ));
    }
    client
        .batch_execute(&format!(
            "GRANT SELECT, INSERT ON records, tombstones, sealed_versions, audit_events TO \"{role}\";
             GRANT SELECT, INSERT, UPDATE ON fingerprints, audit_head, state, state_clock TO \"{role}\";
             GRANT SELECT, INSERT, UPDATE, DELETE ON wrapped_keys, checkpoints TO \"{role}\";
             GRANT SELECT ON tessera_migrations, purged_tokens, compaction_policy TO \"{role}\";
             GRANT EXECUTE ON FUNCTION tessera_purge(bytea[], bigint),
                 tessera_drop_seal_versions(bytea[], integer[]),
                 tessera_graced(timestamptz, xid) TO \"{role}\";"
        ))
        .await
        .map_err(unavailable)
}
