//! Sealed records on PostgreSQL: reads by id, fingerprint and tenant, and
//! re-sealed versions.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use deadpool_postgres::Object;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{COMMIT_LOCK, PgStore, commit_durably, damaged, unavailable};
use crate::domain::{Fingerprint, TenantId, TokenId};
use crate::store::{RecordStore, SealedRecord, SealedVersion, StoreError, StoredRecord, Tombstone};

/// A record with its tombstone and newest seal version, from `records r`.
const STORED: &str = "SELECT r.body, t.body, v.version, v.sealed_pan
    FROM records r
    LEFT JOIN tombstones t ON t.token_id = r.token_id
    LEFT JOIN LATERAL (
        SELECT version, sealed_pan FROM sealed_versions s
        WHERE s.token_id = r.token_id ORDER BY version DESC LIMIT 1
    ) v ON true";

/// Decodes a row of [`STORED`].
fn stored(row: &Row) -> Result<StoredRecord, StoreError> {
    let mut record = SealedRecord::decode(row.try_get(0).map_err(damaged)?)?;
    let tombstone = row
        .try_get::<_, Option<&[u8]>>(1)
        .map_err(damaged)?
        .map(Tombstone::decode)
        .transpose()?;
    let version: Option<i32> = row.try_get(2).map_err(damaged)?;
    let seal_version = match version {
        Some(version) => {
            let sealed: &[u8] = row.try_get(3).map_err(damaged)?;
            record.sealed_pan = sealed.to_vec();
            u32::try_from(version).map_err(|_| StoreError::Damaged("negative seal version"))?
        }
        None => 0,
    };
    Ok(StoredRecord {
        record,
        tombstone,
        seal_version,
    })
}

#[async_trait]
impl RecordStore for PgStore {
    async fn get(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError> {
        let query = format!("{STORED} WHERE r.token_id = $1");
        self.call(async |client| one(client, &query, &[&id.as_bytes().as_slice()]).await)
            .await
    }

    async fn find_by_fingerprint(
        &self,
        tenant: &TenantId,
        fingerprint: &Fingerprint,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let query = format!(
            "{STORED} JOIN fingerprints f ON f.token_id = r.token_id
             WHERE f.tenant = $1 AND f.fingerprint = $2"
        );
        let params: [&(dyn ToSql + Sync); 2] =
            [&tenant.as_str(), &fingerprint.as_bytes().as_slice()];
        self.call(async |client| one(client, &query, &params).await)
            .await
    }

    async fn scan_tenant(
        &self,
        tenant: &TenantId,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let query = format!(
            "{STORED} WHERE r.tenant = $1 AND r.token_id > $2 ORDER BY r.token_id LIMIT $3"
        );
        let after: &[u8] = match &after {
            Some(id) => id.as_bytes(),
            None => &[],
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(async |client| {
            client
                .query(&query, &[&tenant.as_str(), &after, &limit])
                .await
                .map_err(unavailable)?
                .iter()
                .map(stored)
                .collect()
        })
        .await
    }

    async fn scan_all(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let query = format!("{STORED} WHERE r.token_id > $1 ORDER BY r.token_id LIMIT $2");
        let after: &[u8] = match &after {
            Some(id) => id.as_bytes(),
            None => &[],
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(async |client| {
            client
                .query(&query, &[&after, &limit])
                .await
                .map_err(unavailable)?
                .iter()
                .map(stored)
                .collect()
        })
        .await
    }

    async fn is_taken(&self, id: &TokenId) -> Result<bool, StoreError> {
        let id: &[u8] = id.as_bytes();
        self.call(async |client| {
            client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM records WHERE token_id = $1)
                         OR EXISTS (SELECT 1 FROM purged_tokens WHERE token_id = $1)",
                    &[&id],
                )
                .await
                .map_err(unavailable)?
                .try_get(0)
                .map_err(damaged)
        })
        .await
    }

    async fn held_back(&self, ids: &[TokenId]) -> Result<HashSet<TokenId>, StoreError> {
        let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes().as_slice()).collect();
        let rows = self
            .call(async |client| {
                client
                    .query(
                        "SELECT token_id FROM tombstones
                         WHERE token_id = ANY($1) AND NOT tessera_graced(recorded_at, xmin)
                         UNION
                         SELECT token_id FROM (
                             SELECT DISTINCT ON (token_id) token_id, recorded_at, xmin
                             FROM sealed_versions WHERE token_id = ANY($1)
                             ORDER BY token_id, version DESC
                         ) newest WHERE NOT tessera_graced(recorded_at, xmin)",
                        &[&ids],
                    )
                    .await
                    .map_err(unavailable)
            })
            .await?;
        rows.iter()
            .map(|row| {
                TokenId::from_slice(row.try_get(0).map_err(damaged)?)
                    .ok_or(StoreError::Damaged("corrupt token id"))
            })
            .collect()
    }

    async fn seal_versions(&self, ids: &[TokenId]) -> Result<Vec<(TokenId, Vec<u32>)>, StoreError> {
        let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes().as_slice()).collect();
        let rows = self
            .call(async |client| {
                client
                    .query(
                        "SELECT token_id, array_agg(version ORDER BY version) FROM sealed_versions
                         WHERE token_id = ANY($1) GROUP BY token_id ORDER BY token_id",
                        &[&ids],
                    )
                    .await
                    .map_err(unavailable)
            })
            .await?;
        rows.iter()
            .map(|row| {
                let id = TokenId::from_slice(row.try_get(0).map_err(damaged)?)
                    .ok_or(StoreError::Damaged("corrupt token id"))?;
                let versions: Vec<i32> = row.try_get(1).map_err(damaged)?;
                let versions = versions
                    .into_iter()
                    .map(|v| {
                        u32::try_from(v).map_err(|_| StoreError::Damaged("negative seal version"))
                    })
                    .collect::<Result<Vec<u32>, StoreError>>()?;
                Ok((id, versions))
            })
            .collect()
    }

    async fn append_sealed_versions(
        &self,
        items: Vec<SealedVersion>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.call(async |client| append_sealed_versions(client, &items).await)
            .await
    }
}

/// The record `query` (a [`STORED`] query, prepared once per connection)
/// finds, if any.
async fn one(
    client: &mut Object,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<StoredRecord>, StoreError> {
    let statement = client.prepare_cached(query).await.map_err(unavailable)?;
    client
        .query_opt(&statement, params)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(stored)
        .transpose()
}

/// Appends each item whose version is its record's next, under the commit
/// lock; the outcomes come back in order.
async fn append_sealed_versions(
    client: &mut tokio_postgres::Client,
    items: &[SealedVersion],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMMIT_LOCK])
        .await
        .map_err(unavailable)?;
    let ids: Vec<&[u8]> = items
        .iter()
        .map(|item| item.id.as_bytes().as_slice())
        .collect();
    let exists = super::commit::present(&tx, "records", &ids).await?;
    let mut latest: HashMap<TokenId, u32> = HashMap::new();
    for row in tx
        .query(
            "SELECT token_id, max(version) FROM sealed_versions
             WHERE token_id = ANY($1) GROUP BY token_id",
            &[&ids],
        )
        .await
        .map_err(unavailable)?
    {
        let version: i32 = row.try_get(1).map_err(damaged)?;
        let version =
            u32::try_from(version).map_err(|_| StoreError::Damaged("negative seal version"))?;
        let id = TokenId::from_slice(row.try_get(0).map_err(damaged)?)
            .ok_or(StoreError::Damaged("corrupt token id"))?;
        latest.insert(id, version);
    }
    let mut outcomes = Vec::with_capacity(items.len());
    let (mut new_ids, mut new_versions, mut new_pans) = (Vec::new(), Vec::new(), Vec::new());
    for item in items {
        let id = item.id;
        if !exists.contains(&id) {
            outcomes.push(Err(StoreError::NotFound));
            continue;
        }
        let current = latest.get(&id).copied().unwrap_or(0);
        let version = i32::try_from(item.version).ok();
        if current.checked_add(1) != Some(item.version) || version.is_none() {
            outcomes.push(Err(StoreError::AlreadyExists));
            continue;
        }
        latest.insert(id, item.version);
        new_ids.push(item.id.as_bytes().as_slice());
        new_versions.push(version.unwrap_or_default());
        new_pans.push(item.sealed_pan.as_slice());
        outcomes.push(Ok(()));
    }
    if !new_ids.is_empty() {
        tx.execute(
            "INSERT INTO sealed_versions (token_id, version, sealed_pan)
             SELECT * FROM unnest($1::bytea[], $2::int4[], $3::bytea[])",
            &[&new_ids, &new_versions, &new_pans],
        )
        .await
        .map_err(unavailable)?;
    }
    commit_durably(tx).await?;
    Ok(outcomes)
}
