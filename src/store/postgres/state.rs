//! Shared state on PostgreSQL: one row per entry, one change counter.
//!
//! A put first increments the counter's one row, which row-locks it until
//! the transaction ends: puts take numbers one at a time and commit in that
//! order, so a poller reading `version > n` never skips a change that
//! commits late with a smaller number. The entry is read after that lock,
//! so the conditional check sees every earlier put.

use async_trait::async_trait;

use super::{PgStore, commit_durably, damaged, unavailable};
use crate::store::StoreError;
use crate::store::state::{self, Expect, StateChange, StateEntry, StateKind, StateStore};

/// A `(version, value)` row as an entry (`None` once deleted).
fn entry(row: &tokio_postgres::Row) -> Result<Option<StateEntry>, StoreError> {
    let version = version(row.try_get(0))?;
    let value: Option<Vec<u8>> = row.try_get(1).map_err(damaged)?;
    Ok(value.map(|value| StateEntry { version, value }))
}

/// A change number column.
fn version(column: Result<i64, tokio_postgres::Error>) -> Result<u64, StoreError> {
    u64::try_from(column.map_err(damaged)?)
        .map_err(|_| StoreError::Damaged("negative state version"))
}

#[async_trait]
impl StateStore for PgStore {
    async fn state(&self, kind: StateKind, key: &str) -> Result<Option<StateEntry>, StoreError> {
        self.call(async |client| {
            match client
                .query_opt(
                    "SELECT version, value FROM state WHERE kind = $1 AND key = $2",
                    &[&kind.name(), &key],
                )
                .await
                .map_err(unavailable)?
            {
                Some(row) => entry(&row),
                None => Ok(None),
            }
        })
        .await
    }

    async fn states(&self, kind: StateKind) -> Result<Vec<(String, StateEntry)>, StoreError> {
        self.call(async |client| {
            let mut out = Vec::new();
            for row in client
                .query(
                    "SELECT version, value, key FROM state
                     WHERE kind = $1 AND value IS NOT NULL ORDER BY key",
                    &[&kind.name()],
                )
                .await
                .map_err(unavailable)?
            {
                if let Some(found) = entry(&row)? {
                    out.push((row.try_get(2).map_err(damaged)?, found));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_state(
        &self,
        kind: StateKind,
        key: &str,
        value: Option<Vec<u8>>,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        state::check_key(key)?;
        self.call(async |client| put(client, kind, key, value.as_deref(), expect).await)
            .await
    }

    async fn state_changes(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<StateChange>, StoreError> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(async |client| {
            client
                .query(
                    // Never past the counter: a row whose number was
                    // raised in the database would move every poller
                    // beyond the changes that follow it.
                    "SELECT version, kind, key, value IS NULL FROM state
                     WHERE version > $1 AND version <= (SELECT version FROM state_clock)
                     ORDER BY version LIMIT $2",
                    &[&since, &limit],
                )
                .await
                .map_err(unavailable)?
                .iter()
                .map(|row| {
                    let kind: &str = row.try_get(1).map_err(damaged)?;
                    Ok(StateChange {
                        version: version(row.try_get(0))?,
                        kind: StateKind::from_name(kind)
                            .ok_or(StoreError::Damaged("unknown state kind"))?,
                        key: row.try_get(2).map_err(damaged)?,
                        deleted: row.try_get(3).map_err(damaged)?,
                    })
                })
                .collect()
        })
        .await
    }
}

/// One conditional put in one transaction; see the module docs for the
/// order of its statements.
async fn put(
    client: &mut tokio_postgres::Client,
    kind: StateKind,
    key: &str,
    value: Option<&[u8]>,
    expect: Expect,
) -> Result<u64, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    let next = version(
        tx.query_one(
            "UPDATE state_clock SET version = version + 1 RETURNING version",
            &[],
        )
        .await
        .map_err(unavailable)?
        .try_get(0),
    )?;
    let found = match tx
        .query_opt(
            "SELECT version, value FROM state WHERE kind = $1 AND key = $2",
            &[&kind.name(), &key],
        )
        .await
        .map_err(unavailable)?
    {
        Some(row) => entry(&row)?.map(|e| e.version),
        None => None,
    };
    if !expect.holds(found) {
        // Dropping the transaction rolls the counter back.
        return Err(StoreError::Conflict);
    }
    let stored = i64::try_from(next).map_err(|_| StoreError::Damaged("state version"))?;
    tx.execute(
        "INSERT INTO state (kind, key, version, value) VALUES ($1, $2, $3, $4)
         ON CONFLICT (kind, key) DO UPDATE
         SET version = excluded.version, value = excluded.value",
        &[&kind.name(), &key, &stored, &value],
    )
    .await
    .map_err(unavailable)?;
    commit_durably(tx).await?;
    Ok(next)
}
