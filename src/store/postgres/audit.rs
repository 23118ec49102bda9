//! The audit log on PostgreSQL: one row per chained event, and the signed
//! head. Appends go through the write pipeline's commits.

use async_trait::async_trait;

use super::{PgStore, damaged, unavailable};
use crate::store::{AuditStore, StoreError};

/// The log's last event, as a `(seq, body)` row.
const LAST_EVENT: &str = "SELECT seq, body FROM audit_events ORDER BY seq DESC LIMIT 1";

/// A `(seq, body)` row as a position and its event.
pub(super) fn event(row: &tokio_postgres::Row) -> Result<(u64, Vec<u8>), StoreError> {
    let seq: i64 = row.try_get(0).map_err(damaged)?;
    let seq = u64::try_from(seq).map_err(|_| StoreError::Damaged("negative audit position"))?;
    Ok((seq, row.try_get(1).map_err(damaged)?))
}

#[async_trait]
impl AuditStore for PgStore {
    async fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let Ok(from) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(async |client| {
            client
                .query(
                    "SELECT seq, body FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2",
                    &[&from, &limit],
                )
                .await
                .map_err(unavailable)?
                .iter()
                .map(event)
                .collect()
        })
        .await
    }

    async fn last_audit_record(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.call(async |client| {
            client
                .query_opt(LAST_EVENT, &[])
                .await
                .map_err(unavailable)?
                .as_ref()
                .map(event)
                .transpose()
        })
        .await
    }

    async fn audit_head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(async |client| {
            client
                .query_opt("SELECT body FROM audit_head", &[])
                .await
                .map_err(unavailable)?
                .map(|row| row.try_get(0).map_err(damaged))
                .transpose()
        })
        .await
    }
}
