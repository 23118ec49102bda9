//! A batch's records, tombstones and keys encoded for an embedded engine's
//! trees, once, before the engine's write (which may run more than once).

use crate::domain::TokenId;
use crate::store::record::{fingerprint_key, tenant_prefix};
use crate::store::{WrappedKeyRecord, WriteUnit};

/// A record's tree keys and bytes, encoded once outside the transaction.
pub(crate) struct PreparedRecord {
    pub(crate) id: TokenId,
    pub(crate) fingerprint_key: Option<Vec<u8>>,
    pub(crate) tenant_key: Vec<u8>,
    pub(crate) bytes: Vec<u8>,
}

/// One unit, encoded.
pub(crate) struct PreparedUnit {
    pub(crate) records: Vec<PreparedRecord>,
    pub(crate) tombstones: Vec<(TokenId, Vec<u8>)>,
    /// Wrapped keys: key-table key and bytes.
    pub(crate) keys: Vec<(Vec<u8>, Vec<u8>)>,
}

impl PreparedUnit {
    pub(crate) fn new(unit: &WriteUnit) -> Self {
        let records = unit
            .records
            .iter()
            .map(|record| {
                let mut tenant_key = tenant_prefix(&record.tenant);
                tenant_key.extend_from_slice(record.token_id.as_bytes());
                PreparedRecord {
                    id: record.token_id,
                    fingerprint_key: record
                        .fingerprint
                        .as_ref()
                        .map(|fp| fingerprint_key(&record.tenant, fp)),
                    tenant_key,
                    bytes: record.encode(),
                }
            })
            .collect();
        let tombstones = unit
            .tombstones
            .iter()
            .map(|(id, tombstone)| (*id, tombstone.encode()))
            .collect();
        let keys = unit
            .keys
            .iter()
            .map(|key| (WrappedKeyRecord::store_key(&key.context), key.encode()))
            .collect();
        Self {
            records,
            tombstones,
            keys,
        }
    }
}
