//! Wrapped keys on PostgreSQL: the one table a rotation rewraps in place and
//! crypto-shredding deletes from.

use async_trait::async_trait;

use super::{PgStore, commit_durably, damaged, execute_durably, unavailable};
use crate::domain::TenantId;
use crate::domain::key::KeyContext;
use crate::store::{KeyStore, StoreError, WrappedKeyRecord};

/// Decodes `body` columns.
fn decode_all(rows: &[tokio_postgres::Row]) -> Result<Vec<WrappedKeyRecord>, StoreError> {
    rows.iter()
        .map(|row| Ok(WrappedKeyRecord::decode(row.try_get(0).map_err(damaged)?)?))
        .collect()
}

#[async_trait]
impl KeyStore for PgStore {
    async fn put_wrapped_key(&self, key: WrappedKeyRecord) -> Result<(), StoreError> {
        let store_key = WrappedKeyRecord::store_key(&key.context);
        let body = key.encode();
        let inserted = self
            .call(async |client| {
                execute_durably(
                    client,
                    "INSERT INTO wrapped_keys (store_key, tenant, body) VALUES ($1, $2, $3)
                     ON CONFLICT (store_key) DO NOTHING",
                    &[&store_key, &key.context.tenant.as_str(), &body],
                )
                .await
            })
            .await?;
        match inserted {
            0 => Err(StoreError::AlreadyExists),
            _ => Ok(()),
        }
    }

    async fn wrapped_key(&self, ctx: &KeyContext) -> Result<Option<WrappedKeyRecord>, StoreError> {
        let store_key = WrappedKeyRecord::store_key(ctx);
        self.call(async |client| {
            client
                .query_opt(
                    "SELECT body FROM wrapped_keys WHERE store_key = $1",
                    &[&store_key],
                )
                .await
                .map_err(unavailable)?
                .map(|row| Ok(WrappedKeyRecord::decode(row.try_get(0).map_err(damaged)?)?))
                .transpose()
        })
        .await
    }

    async fn wrapped_keys(&self, tenant: &TenantId) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        self.call(async |client| {
            let rows = client
                .query(
                    "SELECT body FROM wrapped_keys WHERE tenant = $1 ORDER BY store_key",
                    &[&tenant.as_str()],
                )
                .await
                .map_err(unavailable)?;
            decode_all(&rows)
        })
        .await
    }

    async fn all_wrapped_keys(&self) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        self.call(async |client| {
            let rows = client
                .query("SELECT body FROM wrapped_keys ORDER BY store_key", &[])
                .await
                .map_err(unavailable)?;
            decode_all(&rows)
        })
        .await
    }

    async fn replace_wrapped_key(
        &self,
        expected: &WrappedKeyRecord,
        new: WrappedKeyRecord,
    ) -> Result<(), StoreError> {
        if new.context != expected.context {
            return Err(StoreError::AlreadyExists);
        }
        let key = WrappedKeyRecord::store_key(&expected.context);
        let (expected, new) = (expected.encode(), new.encode());
        self.call(async |client| replace(client, &key, &expected, &new).await)
            .await
    }

    async fn destroy_wrapped_keys(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let destroyed = self
            .call(async |client| {
                execute_durably(
                    client,
                    "DELETE FROM wrapped_keys WHERE tenant = $1",
                    &[&tenant.as_str()],
                )
                .await
            })
            .await?;
        usize::try_from(destroyed).map_err(|_| StoreError::Damaged("key count out of range"))
    }

    async fn destroy_wrapped_key(&self, ctx: &KeyContext) -> Result<(), StoreError> {
        let store_key = WrappedKeyRecord::store_key(ctx);
        let destroyed = self
            .call(async |client| {
                execute_durably(
                    client,
                    "DELETE FROM wrapped_keys WHERE store_key = $1",
                    &[&store_key],
                )
                .await
            })
            .await?;
        match destroyed {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }
}

/// Replaces the key stored under `key` with `new` if it is still
/// `expected`: `AlreadyExists` when it changed, `NotFound` when it is gone.
async fn replace(
    client: &mut tokio_postgres::Client,
    key: &[u8],
    expected: &[u8],
    new: &[u8],
) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    let replaced = tx
        .execute(
            "UPDATE wrapped_keys SET body = $3 WHERE store_key = $1 AND body = $2",
            &[&key, &expected, &new],
        )
        .await
        .map_err(unavailable)?;
    if replaced > 0 {
        return commit_durably(tx).await;
    }
    let present = tx
        .query_opt("SELECT 1 FROM wrapped_keys WHERE store_key = $1", &[&key])
        .await
        .map_err(unavailable)?
        .is_some();
    Err(if present {
        StoreError::AlreadyExists
    } else {
        StoreError::NotFound
    })
}
