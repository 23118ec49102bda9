//! Wrapped keys on PostgreSQL: the one table a rotation rewraps in place and
//! crypto-shredding deletes from.

use async_trait::async_trait;

use super::{PgStore, damaged, unavailable};
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
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO wrapped_keys (store_key, tenant, body) VALUES ($1, $2, $3)
                 ON CONFLICT (store_key) DO NOTHING",
                &[
                    &WrappedKeyRecord::store_key(&key.context),
                    &key.context.tenant.as_str(),
                    &key.encode(),
                ],
            )
            .await
            .map_err(unavailable)?;
        match inserted {
            0 => Err(StoreError::AlreadyExists),
            _ => Ok(()),
        }
    }

    async fn wrapped_key(&self, ctx: &KeyContext) -> Result<Option<WrappedKeyRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT body FROM wrapped_keys WHERE store_key = $1",
                &[&WrappedKeyRecord::store_key(ctx)],
            )
            .await
            .map_err(unavailable)?
            .map(|row| Ok(WrappedKeyRecord::decode(row.try_get(0).map_err(damaged)?)?))
            .transpose()
    }

    async fn wrapped_keys(&self, tenant: &TenantId) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT body FROM wrapped_keys WHERE tenant = $1 ORDER BY store_key",
                &[&tenant.as_str()],
            )
            .await
            .map_err(unavailable)?;
        decode_all(&rows)
    }

    async fn all_wrapped_keys(&self) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT body FROM wrapped_keys ORDER BY store_key", &[])
            .await
            .map_err(unavailable)?;
        decode_all(&rows)
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
        let client = self.client().await?;
        let replaced = client
            .execute(
                "UPDATE wrapped_keys SET body = $3 WHERE store_key = $1 AND body = $2",
                &[&key, &expected.encode(), &new.encode()],
            )
            .await
            .map_err(unavailable)?;
        if replaced > 0 {
            return Ok(());
        }
        let present = client
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

    async fn destroy_wrapped_keys(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let destroyed = client
            .execute(
                "DELETE FROM wrapped_keys WHERE tenant = $1",
                &[&tenant.as_str()],
            )
            .await
            .map_err(unavailable)?;
        usize::try_from(destroyed).map_err(|_| StoreError::Damaged("key count out of range"))
    }

    async fn destroy_wrapped_key(&self, ctx: &KeyContext) -> Result<(), StoreError> {
        let client = self.client().await?;
        let destroyed = client
            .execute(
                "DELETE FROM wrapped_keys WHERE store_key = $1",
                &[&WrappedKeyRecord::store_key(ctx)],
            )
            .await
            .map_err(unavailable)?;
        match destroyed {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }
}
