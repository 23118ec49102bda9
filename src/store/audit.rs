//! The audit log's storage: chained events by position, and the signed head.
//! Chaining and signing happen above (`crate::audit`, `crate::pipeline`);
//! the store keeps the bytes in order, never lets a position be written
//! twice or out of order, and runs the pipeline's chaining step under its
//! commit lock ([`crate::store::ChainStep`]).

use std::sync::Arc;

use async_trait::async_trait;

use crate::store::{AuditAppend, AuditWrite, Engine, StoreError, WriteBatch};

/// Audit events in order. Contract checked by
/// `tests/store_conformance/audit.rs`.
#[async_trait]
pub trait AuditStore: Engine {
    /// Audit records from position `from`, at most `limit`, in order.
    async fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// The newest audit record, to continue the chain after a restart.
    async fn last_audit_record(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// The signed chain head, if one was written.
    async fn audit_head(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Appends audit record `seq`, which must be the next position (the
    /// log's length); otherwise `AlreadyExists` and nothing is written.
    /// With `head`, the signed chain head is replaced in the same atomic
    /// write. A commit of a batch holding only this event.
    async fn append_audit(
        &self,
        seq: u64,
        record: Vec<u8>,
        head: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let batch = WriteBatch {
            units: Vec::new(),
            audit: AuditWrite::At(AuditAppend {
                from: seq,
                events: vec![record],
                head,
            }),
        };
        self.commit(Arc::new(batch))
            .await
            .map_err(|e| e.into_store())
    }
}
