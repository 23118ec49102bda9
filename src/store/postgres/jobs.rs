//! Job checkpoints on PostgreSQL.

use async_trait::async_trait;

use super::{PgStore, damaged, execute_durably, unavailable};
use crate::store::{JobStore, StoreError};

#[async_trait]
impl JobStore for PgStore {
    async fn put_checkpoint(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.call(async |client| {
            execute_durably(
                client,
                "INSERT INTO checkpoints (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )
            .await
            .map(|_| ())
        })
        .await
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(async |client| {
            client
                .query_opt("SELECT value FROM checkpoints WHERE name = $1", &[&name])
                .await
                .map_err(unavailable)?
                .map(|row| row.try_get(0).map_err(damaged))
                .transpose()
        })
        .await
    }

    async fn checkpoints(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // Byte order, as the embedded stores list them.
        self.call(async |client| {
            client
                .query(
                    "SELECT name FROM checkpoints WHERE starts_with(name, $1)
                     ORDER BY name COLLATE \"C\"",
                    &[&prefix],
                )
                .await
                .map_err(unavailable)?
                .iter()
                .map(|row| row.try_get(0).map_err(damaged))
                .collect()
        })
        .await
    }

    async fn delete_checkpoint(&self, name: &str) -> Result<(), StoreError> {
        self.call(async |client| {
            execute_durably(client, "DELETE FROM checkpoints WHERE name = $1", &[&name])
                .await
                .map(|_| ())
        })
        .await
    }
}
