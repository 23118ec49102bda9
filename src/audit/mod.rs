//! The tamper-evident audit log (PCI DSS 10.2, 10.3.2).
//!
//! Every tokenize, detokenize, info, delete, admin action, approval, auth
//! failure and seal/unseal becomes an [`AuditEvent`] with the PCI DSS
//! 10.2.2 fields — who, what, when (UTC), outcome, origin, affected resource
//! — plus tenant and request id. Never a PAN, never a token: resources are
//! named by keyed token ids. Events are hash-chained ([`chain`]) and appended
//! durably to the store; the chain head is HMAC-signed with the audit key,
//! which is derived from a KMS-wrapped system key and therefore exists only
//! while the vault is unsealed. Events written while sealed (auth failures,
//! unseal attempts) are chained at once and covered by the next signature.
//!
//! Fail closed (SECURITY.md §1.5): the service refuses detokenize, admin and
//! (by default) tokenize calls whose event cannot be written.
//!
//! **A missing head is tampering** (SECURITY.md §5.4). A store's first
//! wrapped key is the audit key's root, and it is written in the same
//! commit as the first signed head (an `AuditKeyCreated` event; every other
//! key is made after it). So a log that has events and a store that has
//! wrapped keys but no head lost its head: [`verify`]
//! reports it and [`AuditLog::record`] refuses to append (the forged chain
//! is never signed over) until an operator runs [`AuditLog::recover`], which
//! appends an `AuditRecovered` event naming what was found and signs from
//! there. Verification keeps reporting any edited event before it.
//!
//! The limit of a log kept in the store it protects: an attacker who can
//! write the store and deletes *every* event, the head and the keys that
//! date them makes it look new. The second sink ([`sink`], a SIEM outside
//! the vault's host) is the anchor against that: its copy has what the
//! store lost.

pub mod chain;
pub mod sink;
pub mod verify;

use std::sync::Arc;

use crate::codec::DecodeError;
use crate::pipeline::{Pipeline, Submission, WriteError};
use crate::secret::DataKey;
use crate::store::{Store, StoreError, WrappedKeyRecord, WriteUnit};
use chain::{ChainHash, ChainedEvent, SignedHead};

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEvent {
    /// When, milliseconds since the Unix epoch (UTC).
    pub time_ms: u64,
    /// The caller's `x-request-id`, or one Tessera made.
    pub request_id: String,
    /// Who: the principal's name, or empty when authentication failed.
    pub principal: String,
    /// The principal's tenant (empty when unknown).
    pub tenant: String,
    /// What: the RPC or action, e.g. `Detokenize`, `auth_failure`.
    pub action: String,
    /// Affected resource: `token:<keyed id>`, counts for batches, a key version.
    pub resource: String,
    /// `OK` or the gRPC status code name.
    pub outcome: String,
    /// The peer address.
    pub origin: String,
}

/// The audit log could not be written or read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event did not decode.
    #[error("audit record is corrupt: {0}")]
    Corrupt(#[from] DecodeError),
    /// The log ends before, or differs from, its signed head: it was
    /// truncated or rewritten. Nothing more is appended (so the evidence is
    /// not signed over) until an operator investigates with `Verify`.
    #[error("the audit log does not match its signed head (missing, truncated or rewritten)")]
    Tampered,
    /// Recovery was asked for a log that verifies.
    #[error("the audit log verifies; there is nothing to recover")]
    NothingToRecover,
}

/// The action name of a recovery event.
pub const RECOVERY_ACTION: &str = "AuditRecovered";

/// Whether `store` must have a signed head: it has audit events and wrapped
/// keys, so an unsealed vault has written to it (see the module docs).
pub(crate) async fn head_required(store: &dyn Store, events: u64) -> Result<bool, StoreError> {
    Ok(events > 0 && !store.all_wrapped_keys().await?.is_empty())
}

/// Where the stored chain ends: the next position and the hash of the last
/// event (zeros for an empty log).
pub(crate) async fn chain_end(store: &dyn Store) -> Result<(u64, ChainHash), AuditError> {
    Ok(match store.last_audit_record().await? {
        Some((seq, bytes)) => (seq.saturating_add(1), ChainedEvent::decode(&bytes)?.hash),
        None => (0, [0; 32]),
    })
}

/// Where the stored chain ends, checked against its signed head
/// ([`check_head`]). The head is read before the end: another writer of
/// the store (a replica) that commits between the two reads moves the end
/// past the head, never the head past the end. The one race left, a first
/// head written between the reads of an empty log, is read again once.
pub(crate) async fn checked_end(store: &dyn Store) -> Result<(u64, ChainHash), AuditError> {
    let mut reads = 0;
    loop {
        let head = store.audit_head().await?;
        let (next_seq, hash) = chain_end(store).await?;
        match check_head(store, head, next_seq).await {
            Err(AuditError::Tampered) if reads == 0 => reads += 1,
            checked => return checked.map(|()| (next_seq, hash)),
        }
    }
}

/// Refuses to continue a chain whose end does not reach its signed head
/// (`head`, read before the end) with the same hash, or that lost the head
/// it must have: appending would sign over a truncation or a rewrite.
async fn check_head(
    store: &dyn Store,
    head: Option<Vec<u8>>,
    next_seq: u64,
) -> Result<(), AuditError> {
    let Some(bytes) = head else {
        if head_required(store, next_seq).await? {
            return Err(AuditError::Tampered);
        }
        return Ok(());
    };
    let head = SignedHead::decode(&bytes)?;
    if head.seq >= next_seq {
        return Err(AuditError::Tampered);
    }
    let at_head = store.audit_records(head.seq, 1).await?;
    match at_head.first() {
        Some((seq, bytes))
            if *seq == head.seq && ChainedEvent::decode(bytes)?.hash == head.hash =>
        {
            Ok(())
        }
        _ => Err(AuditError::Tampered),
    }
}

/// The chained, signed, append-only event log over a store. Appends go
/// through the store's write pipeline ([`crate::pipeline`]), which chains
/// events in commit order; reads go to the store.
#[derive(Debug)]
pub struct AuditLog {
    store: Arc<dyn Store>,
    pipeline: Arc<Pipeline>,
}

impl AuditLog {
    /// A log over `store`, appended to through `pipeline` (the store's
    /// one write pipeline); the chain resumes from the store's last event.
    pub fn new(store: Arc<dyn Store>, pipeline: Arc<Pipeline>) -> Self {
        Self { store, pipeline }
    }

    /// Appends `event`, signing the new head with `key` when given. Returns
    /// the event's position. Durable on return; on error nothing is written.
    pub async fn record(
        &self,
        event: AuditEvent,
        key: Option<Arc<DataKey>>,
    ) -> Result<u64, AuditError> {
        let submission = Submission {
            unit: WriteUnit::default(),
            events: vec![event],
            signer: key,
            new_signer: false,
        };
        match self.pipeline.submit(submission).await {
            Ok(positions) => {
                positions
                    .first()
                    .copied()
                    .ok_or(AuditError::Store(StoreError::Damaged(
                        "event not positioned",
                    )))
            }
            Err(WriteError::Audit(e)) => Err(e),
            Err(WriteError::Refused(e) | WriteError::Store(e)) => Err(AuditError::Store(e)),
            Err(e) => Err(AuditError::Store(StoreError::Unavailable(e.to_string()))),
        }
    }

    /// The explicit, audited way out of [`AuditError::Tampered`]: verifies
    /// the log, and if it is not intact appends `event` as an
    /// [`RECOVERY_ACTION`] event (its resource, the operator's reason, gets
    /// what verification found appended) signed with `key`, so appends
    /// resume after it. The evidence stays: every event before it is
    /// reported as it was found.
    pub async fn recover(
        &self,
        event: AuditEvent,
        key: Arc<DataKey>,
    ) -> Result<(u64, verify::VerifyReport), AuditError> {
        self.pipeline.recover(event, key, None).await
    }

    /// [`Self::recover`] by a vault whose audit key's root is gone: `root`,
    /// a new one, is stored in the recovery's commit, whose head it signs.
    pub async fn recover_with_root(
        &self,
        event: AuditEvent,
        key: Arc<DataKey>,
        root: WrappedKeyRecord,
    ) -> Result<(u64, verify::VerifyReport), AuditError> {
        self.pipeline.recover(event, key, Some(root)).await
    }

    /// Events from position `from`, at most `limit`, decoded.
    pub async fn events(&self, from: u64, limit: usize) -> Result<Vec<ChainedEvent>, AuditError> {
        self.store
            .audit_records(from, limit)
            .await?
            .iter()
            .map(|(_, bytes)| ChainedEvent::decode(bytes).map_err(AuditError::from))
            .collect()
    }

    /// Checks the whole chain and the signed head; see [`verify::verify`].
    pub async fn verify(&self, key: Option<&DataKey>) -> Result<verify::VerifyReport, AuditError> {
        verify::verify(self.store.as_ref(), key).await
    }
}

#[cfg(test)]
mod tests;
