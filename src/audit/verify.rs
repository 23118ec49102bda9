//! `tessera audit verify`: walk the chain from the first event, recompute
//! every hash, and check the signed head. Names the first bad position.

use crate::audit::AuditError;
use crate::audit::chain::{ChainHash, ChainedEvent, SignedHead, hash_event};
use crate::secret::DataKey;
use crate::store::Store;

const PAGE: usize = 1000;

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events in the log.
    pub events: u64,
    /// Position of the newest event covered by a valid signature.
    pub signed_through: Option<u64>,
    /// Whether the head signature could be checked (the audit key exists
    /// only while unsealed).
    pub head_checked: bool,
    /// The first position where the log is not what was written, if any.
    pub first_bad: Option<u64>,
    /// Why, when `first_bad` is set.
    pub problem: String,
    /// Positions of recovery events (an operator continued after a failed
    /// verification), in order.
    pub recovered_at: Vec<u64>,
}

impl VerifyReport {
    /// Whether the log is intact.
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

fn bad(events: u64, at: u64, problem: &str) -> VerifyReport {
    VerifyReport {
        events,
        signed_through: None,
        head_checked: false,
        first_bad: Some(at),
        problem: problem.to_owned(),
        recovered_at: Vec::new(),
    }
}

/// Verifies the log in `store`; with `key`, also the head signature.
///
/// Memory stays constant in the log's length: the head is read first, so
/// the walk keeps only the one hash the head names, not one per event.
pub async fn verify(store: &dyn Store, key: Option<&DataKey>) -> Result<VerifyReport, AuditError> {
    let head_bytes = store.audit_head().await?;
    let head_seq = head_bytes
        .as_deref()
        .and_then(|b| SignedHead::decode(b).ok())
        .map(|h| h.seq);
    let mut hash_at_head: Option<ChainHash> = None;
    let mut recovered_at = Vec::new();
    let mut prev: ChainHash = [0; 32];
    let mut expected = 0u64;
    loop {
        let page = store.audit_records(expected, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for (position, bytes) in page {
            let n = expected;
            if position != expected {
                return Ok(bad(n, expected, "an event is missing (deleted)"));
            }
            let Ok(event) = ChainedEvent::decode(&bytes) else {
                return Ok(bad(n, position, "the event does not decode (edited)"));
            };
            if event.seq != position {
                return Ok(bad(
                    n,
                    position,
                    "the event was moved from another position (reordered or inserted)",
                ));
            }
            if event.prev != prev {
                return Ok(bad(
                    n,
                    position,
                    "the chain is broken before this event (deleted, inserted or reordered)",
                ));
            }
            if hash_event(event.seq, &event.prev, &event.event) != event.hash {
                return Ok(bad(n, position, "the event was edited"));
            }
            if event.event.action == super::RECOVERY_ACTION {
                recovered_at.push(position);
            }
            prev = event.hash;
            if Some(position) == head_seq {
                hash_at_head = Some(event.hash);
            }
            expected += 1;
        }
    }
    let events = expected;
    let mut report = VerifyReport {
        events,
        signed_through: None,
        head_checked: false,
        first_bad: None,
        problem: String::new(),
        recovered_at,
    };
    let Some(head_bytes) = head_bytes else {
        if super::head_required(store, events).await? {
            return Ok(bad(
                events,
                0,
                "the signed head is missing: this log was written by an unsealed vault, so it had one (deleted)",
            ));
        }
        return Ok(report);
    };
    let Ok(head) = SignedHead::decode(&head_bytes) else {
        return Ok(bad(events, events, "the signed head does not decode"));
    };
    if let Some(key) = key {
        if !head.is_valid(key) {
            return Ok(bad(
                events,
                head.seq.min(events),
                "the signed head's signature is not the audit key's",
            ));
        }
        report.head_checked = true;
    }
    match hash_at_head.as_ref().filter(|_| head.seq < events) {
        None => Ok(bad(
            events,
            events,
            &format!(
                "the log was truncated: the signed head names event {} but the log ends before it",
                head.seq
            ),
        )),
        Some(hash) if *hash != head.hash => Ok(bad(
            events,
            head.seq,
            "the events up to the signed head were rewritten",
        )),
        Some(_) => {
            report.signed_through = Some(head.seq);
            Ok(report)
        }
    }
}
