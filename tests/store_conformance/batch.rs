//! `Engine::commit`: a batch of many writers' units is all or nothing, names
//! the unit that broke a rule, lets units see the units before them,
//! appends audit events only at the log's end, and runs a batch's chaining
//! step under the commit lock.

use std::sync::Arc;

use tessera::domain::TokenId;
use tessera::store::{
    AuditAppend, AuditWrite, ChainStep, CommitError, SealedRecord, StoreError, TombstoneReason,
    WriteBatch, WriteUnit,
};

use tessera::domain::key::KeyPurpose;

use super::keys::key;
use super::{Factory, record, tenant, tombstone};

fn unit(records: Vec<SealedRecord>, tombstones: Vec<TokenId>) -> WriteUnit {
    WriteUnit {
        records,
        tombstones: tombstones
            .into_iter()
            .map(|id| (id, tombstone(TombstoneReason::Consumed)))
            .collect(),
        ..WriteUnit::default()
    }
}

fn events(from: u64, n: u64) -> AuditAppend {
    AuditAppend {
        from,
        events: (from..from + n)
            .map(|i| vec![u8::try_from(i).unwrap()])
            .collect(),
        head: Some(vec![0xAA, u8::try_from(from + n).unwrap()]),
    }
}

fn id(n: u8) -> TokenId {
    TokenId::from_bytes([n; 32])
}

pub async fn commit_writes_every_unit_and_event_together(f: &dyn Factory) {
    let store = f.make().await;
    store.append(record(1, "a", None)).await.unwrap();
    let batch = WriteBatch {
        units: vec![
            unit(vec![record(2, "a", Some(7))], vec![]),
            unit(
                vec![record(3, "a", None), record(4, "b", Some(7))],
                vec![id(1)],
            ),
        ],
        audit: events(0, 3).into(),
    };
    store.commit(Arc::new(batch)).await.unwrap();
    for n in 2..=4 {
        assert!(store.get(&id(n)).await.unwrap().is_some(), "record {n}");
    }
    let dead = store.get(&id(1)).await.unwrap().unwrap();
    assert_eq!(dead.tombstone.unwrap().reason, TombstoneReason::Consumed);
    assert_eq!(store.audit_records(0, 10).await.unwrap().len(), 3);
    assert_eq!(store.audit_head().await.unwrap(), Some(vec![0xAA, 3]));
}

pub async fn commit_refuses_the_unit_that_breaks_a_rule_and_writes_nothing(f: &dyn Factory) {
    let store = f.make().await;
    store.append(record(1, "a", None)).await.unwrap();
    let batch = WriteBatch {
        units: vec![
            unit(vec![record(2, "a", None)], vec![]),
            unit(vec![record(1, "a", None)], vec![]),
            unit(vec![record(3, "a", None)], vec![]),
        ],
        audit: events(0, 2).into(),
    };
    match store.commit(Arc::new(batch)).await {
        Err(CommitError::Refused { unit: 1, error }) => {
            assert!(matches!(error, StoreError::AlreadyExists), "{error}");
        }
        other => panic!("expected unit 1 refused, got {other:?}"),
    }
    // Nothing of the batch is visible: not the units before the refused
    // one, not those after, not the events.
    assert!(store.get(&id(2)).await.unwrap().is_none());
    assert!(store.get(&id(3)).await.unwrap().is_none());
    assert!(store.audit_records(0, 10).await.unwrap().is_empty());
    assert!(store.audit_head().await.unwrap().is_none());
}

pub async fn commit_units_see_the_units_before_them(f: &dyn Factory) {
    let store = f.make().await;
    // A fingerprint taken by an earlier unit of the same batch.
    let batch = WriteBatch {
        units: vec![
            unit(vec![record(1, "a", Some(5))], vec![]),
            unit(vec![record(2, "a", Some(5))], vec![]),
        ],
        audit: AuditWrite::Nothing,
    };
    match store.commit(Arc::new(batch)).await {
        Err(CommitError::Refused { unit: 1, error }) => {
            assert!(matches!(error, StoreError::FingerprintTaken(holder) if holder == id(1)));
        }
        other => panic!("expected FingerprintTaken, got {other:?}"),
    }
    // A tombstone for a record an earlier unit adds, and a second tombstone
    // for it in a later unit: the second is refused (single use holds
    // inside one batch too).
    let batch = WriteBatch {
        units: vec![
            unit(vec![record(1, "a", None)], vec![]),
            unit(vec![], vec![id(1)]),
            unit(vec![], vec![id(1)]),
        ],
        audit: AuditWrite::Nothing,
    };
    match store.commit(Arc::new(batch)).await {
        Err(CommitError::Refused { unit: 2, error }) => {
            assert!(matches!(error, StoreError::AlreadyExists), "{error}");
        }
        other => panic!("expected the second tombstone refused, got {other:?}"),
    }
    let batch = WriteBatch {
        units: vec![
            unit(vec![record(1, "a", Some(5))], vec![]),
            unit(vec![], vec![id(1)]),
            unit(vec![record(2, "a", Some(5))], vec![]),
        ],
        audit: AuditWrite::Nothing,
    };
    store.commit(Arc::new(batch)).await.unwrap();
    let holder = store
        .find_by_fingerprint(
            &tenant("a"),
            &tessera::domain::Fingerprint::from_bytes([5; 32]),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        holder.record.token_id,
        id(2),
        "the fingerprint moved after the tombstone"
    );
}

pub async fn commit_tombstone_of_a_missing_record_is_not_found(f: &dyn Factory) {
    let store = f.make().await;
    let batch = WriteBatch {
        units: vec![unit(vec![], vec![id(9)])],
        audit: AuditWrite::Nothing,
    };
    match store.commit(Arc::new(batch)).await {
        Err(CommitError::Refused { unit: 0, error }) => {
            assert!(matches!(error, StoreError::NotFound), "{error}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

pub async fn commit_events_only_at_the_end_of_the_log(f: &dyn Factory) {
    let store = f.make().await;
    store
        .commit(Arc::new(WriteBatch {
            units: vec![],
            audit: events(0, 2).into(),
        }))
        .await
        .unwrap();
    // A batch whose events would leave a gap, or overwrite, fails whole.
    for from in [1, 3] {
        let batch = WriteBatch {
            units: vec![unit(vec![record(1, "a", None)], vec![])],
            audit: events(from, 1).into(),
        };
        match store.commit(Arc::new(batch)).await {
            Err(CommitError::Batch(StoreError::AlreadyExists)) => {}
            other => panic!("from {from}: expected AlreadyExists, got {other:?}"),
        }
        assert!(store.get(&id(1)).await.unwrap().is_none());
    }
    assert_eq!(
        store.last_audit_record().await.unwrap().map(|(s, _)| s),
        Some(1)
    );
}

pub async fn concurrent_commits_keep_single_use_exactly_once(f: &dyn Factory) {
    let store = f.make().await;
    store.append(record(1, "a", None)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let batch = WriteBatch::of_unit(unit(vec![], vec![id(1)]));
            store.commit(Arc::new(batch)).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
}

/// A chaining step as a writer of one store would run it: each event names
/// the event it follows, so a fork or a gap shows in the stored bytes.
struct Follow {
    writer: u8,
    events: usize,
}

impl ChainStep for Follow {
    fn tail_from(&self) -> u64 {
        0
    }

    fn after(&self, tail: &[(u64, Vec<u8>)], _: Option<&[u8]>) -> Result<AuditAppend, CommitError> {
        // The whole log, read under the commit lock, in order.
        for (n, (seq, _)) in tail.iter().enumerate() {
            assert_eq!(*seq, u64::try_from(n).unwrap(), "a gap in the tail");
        }
        let last = tail.last();
        let from = last.map_or(0, |(seq, _)| seq + 1);
        let mut prev = last.map(|(_, body)| body.clone()).unwrap_or_default();
        let mut events = Vec::new();
        for seq in from..from + u64::try_from(self.events).unwrap() {
            // `seq`, the writer, and the previous event's first 9 bytes.
            let mut body = seq.to_be_bytes().to_vec();
            body.push(self.writer);
            body.extend(prev.iter().take(9));
            prev.clone_from(&body);
            events.push(body);
        }
        Ok(AuditAppend {
            from,
            events,
            head: Some(vec![self.writer]),
        })
    }
}

/// Writers racing on one store (replicas on one database each have a
/// committer) all land: the store chains each batch after the event it
/// finds last under its commit lock, so no batch is refused for a position
/// another took, and every event follows the one stored before it.
pub async fn commit_chains_events_after_the_last_event_under_its_lock(f: &dyn Factory) {
    let store = f.make().await;
    let mut tasks = Vec::new();
    for writer in 0..16u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let batch = WriteBatch {
                    units: vec![],
                    audit: AuditWrite::Chained(Arc::new(Follow { writer, events: 3 })),
                };
                store.commit(Arc::new(batch)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = store.audit_records(0, 1000).await.unwrap();
    assert_eq!(stored.len(), 16 * 4 * 3);
    let mut prev: Vec<u8> = Vec::new();
    for (seq, body) in &stored {
        assert_eq!(
            body[..8],
            seq.to_be_bytes(),
            "event {seq} at another position"
        );
        assert_eq!(body[9..], prev[..prev.len().min(9)], "event {seq} forks");
        prev.clone_from(body);
    }
    assert!(store.audit_head().await.unwrap().is_some());
}

/// A step that refuses the log's end (it ends before what its writer last
/// saw) fails the whole batch: its records are not written either.
pub async fn commit_fails_whole_when_the_chain_step_refuses(f: &dyn Factory) {
    struct Rewound;
    impl ChainStep for Rewound {
        fn tail_from(&self) -> u64 {
            0
        }
        fn after(
            &self,
            _: &[(u64, Vec<u8>)],
            _: Option<&[u8]>,
        ) -> Result<AuditAppend, CommitError> {
            Err(CommitError::AuditRewound)
        }
    }
    let store = f.make().await;
    let batch = WriteBatch {
        units: vec![unit(vec![record(1, "a", None)], vec![])],
        audit: AuditWrite::Chained(Arc::new(Rewound)),
    };
    assert!(matches!(
        store.commit(Arc::new(batch)).await,
        Err(CommitError::AuditRewound)
    ));
    assert!(store.get(&id(1)).await.unwrap().is_none());
    assert!(store.last_audit_record().await.unwrap().is_none());
}

/// A unit's wrapped key is written with the unit and its events (the audit
/// key's root and the first signed head), never twice for one context: a
/// unit naming a stored key, or one an earlier unit of the batch names, is
/// refused, and a refused batch leaves no key behind.
pub async fn commit_writes_a_units_wrapped_keys_with_it_once(f: &dyn Factory) {
    let store = f.make().await;
    let keyed = |n: u8, version: u32| WriteUnit {
        keys: vec![key("system", KeyPurpose::Index, version)],
        ..unit(vec![record(n, "a", None)], vec![])
    };
    // Refused elsewhere in the batch: neither key nor event lands.
    store.append(record(9, "a", None)).await.unwrap();
    let batch = WriteBatch {
        units: vec![keyed(1, 1), unit(vec![record(9, "a", None)], vec![])],
        audit: events(0, 1).into(),
    };
    assert!(matches!(
        store.commit(Arc::new(batch)).await,
        Err(CommitError::Refused { unit: 1, .. })
    ));
    assert!(
        store
            .wrapped_keys(&tenant("system"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.audit_head().await.unwrap().is_none());

    let batch = WriteBatch {
        units: vec![keyed(1, 1)],
        audit: events(0, 1).into(),
    };
    store.commit(Arc::new(batch)).await.unwrap();
    let stored = store.wrapped_keys(&tenant("system")).await.unwrap();
    assert_eq!(stored, vec![key("system", KeyPurpose::Index, 1)]);
    assert!(store.audit_head().await.unwrap().is_some());
    assert!(store.get(&id(1)).await.unwrap().is_some());

    // The same context again, stored or earlier in the batch.
    for units in [vec![keyed(2, 1)], vec![keyed(3, 2), keyed(4, 2)]] {
        let refused = units.len() - 1;
        let batch = WriteBatch {
            units,
            audit: AuditWrite::Nothing,
        };
        match store.commit(Arc::new(batch)).await {
            Err(CommitError::Refused { unit, error }) => {
                assert_eq!(unit, refused);
                assert!(matches!(error, StoreError::AlreadyExists), "{error}");
            }
            other => panic!("expected unit {refused} refused, got {other:?}"),
        }
    }
    assert_eq!(
        store.wrapped_keys(&tenant("system")).await.unwrap().len(),
        1
    );
    assert!(matches!(
        store
            .put_wrapped_key(key("system", KeyPurpose::Index, 1))
            .await,
        Err(StoreError::AlreadyExists)
    ));
}
