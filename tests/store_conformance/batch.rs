//! `Engine::commit`: a batch of many writers' units is all or nothing, names
//! the unit that broke a rule, lets units see the units before them, and
//! appends audit events only at the log's end.

use std::sync::Arc;

use tessera::domain::TokenId;
use tessera::store::{
    AuditAppend, CommitError, SealedRecord, StoreError, TombstoneReason, WriteBatch, WriteUnit,
};

use super::{Factory, record, tombstone};

fn unit(records: Vec<SealedRecord>, tombstones: Vec<TokenId>) -> WriteUnit {
    WriteUnit {
        records,
        tombstones: tombstones
            .into_iter()
            .map(|id| (id, tombstone(TombstoneReason::Consumed)))
            .collect(),
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
        audit: events(0, 3),
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
        audit: events(0, 2),
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
        audit: AuditAppend::default(),
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
        audit: AuditAppend::default(),
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
        audit: AuditAppend::default(),
    };
    store.commit(Arc::new(batch)).await.unwrap();
    let holder = store
        .find_by_fingerprint(
            &super::tenant("a"),
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
        audit: AuditAppend::default(),
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
            audit: events(0, 2),
        }))
        .await
        .unwrap();
    // A batch whose events would leave a gap, or overwrite, fails whole.
    for from in [1, 3] {
        let batch = WriteBatch {
            units: vec![unit(vec![record(1, "a", None)], vec![])],
            audit: events(from, 1),
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
