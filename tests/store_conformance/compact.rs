//! Compaction through `Engine::commit`: a purge removes a dead record for
//! good but keeps its id taken; only records dead by the cutoff go; seal
//! versions drop only below the newest; nothing is removed twice;
//! `scan_all` pages every tenant.

use std::sync::Arc;

use tessera::domain::{Fingerprint, TokenId};
use tessera::store::{
    CommitError, Compaction, SealedVersion, StoreError, Tombstone, TombstoneReason, WriteBatch,
    WriteUnit,
};

use super::{Factory, record, tenant};

fn id(n: u8) -> TokenId {
    TokenId::from_bytes([n; 32])
}

fn dead_at(at_ms: u64) -> Tombstone {
    Tombstone {
        reason: TombstoneReason::Deleted,
        at_ms,
    }
}

fn compacting(compactions: Vec<Compaction>) -> Arc<WriteBatch> {
    Arc::new(WriteBatch::of_unit(WriteUnit {
        compactions,
        ..WriteUnit::default()
    }))
}

fn purge(n: u8, dead_by_ms: u64) -> Compaction {
    Compaction::Purge {
        id: id(n),
        dead_by_ms,
    }
}

fn refused(result: Result<(), CommitError>) -> StoreError {
    match result {
        Err(CommitError::Refused { unit: 0, error }) => error,
        other => panic!("expected the unit refused, got {other:?}"),
    }
}

async fn reseal(store: &dyn tessera::store::Store, n: u8, version: u32) {
    store
        .append_sealed_versions(vec![SealedVersion {
            id: id(n),
            version,
            sealed_pan: vec![u8::try_from(version).unwrap(); 40],
        }])
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
}

pub async fn a_purged_record_is_gone_but_its_id_stays_taken(f: &dyn Factory) {
    let store = f.make().await;
    let fp = Fingerprint::from_bytes([9; 32]);
    store.append(record(1, "a", Some(9))).await.unwrap();
    store.append_tombstone(&id(1), dead_at(7)).await.unwrap();
    reseal(store.as_ref(), 1, 1).await;
    reseal(store.as_ref(), 1, 2).await;
    store.append(record(2, "a", None)).await.unwrap();

    store.commit(compacting(vec![purge(1, 7)])).await.unwrap();
    assert!(store.get(&id(1)).await.unwrap().is_none());
    assert!(
        store
            .find_by_fingerprint(&tenant("a"), &fp)
            .await
            .unwrap()
            .is_none()
    );
    let ids = |records: Vec<tessera::store::StoredRecord>| {
        records
            .iter()
            .map(|r| r.record.token_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(store.scan_all(None, 10).await.unwrap()), vec![id(2)]);
    assert_eq!(
        ids(store.scan_tenant(&tenant("a"), None, 10).await.unwrap()),
        vec![id(2)]
    );
    assert!(store.seal_versions(&[id(1)]).await.unwrap().is_empty());
    // Absent to readers, taken to token generators.
    assert!(store.is_taken(&id(1)).await.unwrap());
    assert!(store.is_taken(&id(2)).await.unwrap());
    assert!(!store.is_taken(&id(9)).await.unwrap());
    // Its id is never taken again, never tombstoned, never re-sealed.
    assert!(matches!(
        store.append(record(1, "a", None)).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        store.append_tombstone(&id(1), dead_at(8)).await,
        Err(StoreError::AlreadyExists)
    ));
    let resealed = store
        .append_sealed_versions(vec![SealedVersion {
            id: id(1),
            version: 1,
            sealed_pan: vec![1; 40],
        }])
        .await
        .unwrap();
    assert!(matches!(resealed[0], Err(StoreError::NotFound)));
    // The fingerprint is free for a new record; a second purge is refused
    // (a stale read: the job reads its page again, and counts it once).
    store.append(record(3, "a", Some(9))).await.unwrap();
    assert!(matches!(
        refused(store.commit(compacting(vec![purge(1, 7)])).await),
        StoreError::Conflict
    ));
    let holder = store.find_by_fingerprint(&tenant("a"), &fp).await.unwrap();
    assert_eq!(holder.unwrap().record.token_id, id(3));
}

pub async fn only_records_dead_by_the_cutoff_are_purged(f: &dyn Factory) {
    let store = f.make().await;
    store.append(record(1, "a", None)).await.unwrap();
    store.append(record(2, "a", None)).await.unwrap();
    store.append_tombstone(&id(2), dead_at(100)).await.unwrap();
    // Live: refused, whatever the cutoff.
    assert!(matches!(
        refused(store.commit(compacting(vec![purge(1, u64::MAX)])).await),
        StoreError::Conflict
    ));
    // Dead after the cutoff: refused, and the batch wrote nothing.
    assert!(matches!(
        refused(store.commit(compacting(vec![purge(2, 99)])).await),
        StoreError::Conflict
    ));
    assert!(matches!(
        refused(store.commit(compacting(vec![purge(3, 99)])).await),
        StoreError::NotFound
    ));
    // One refused purge refuses its whole unit.
    assert!(matches!(
        refused(
            store
                .commit(compacting(vec![purge(2, 100), purge(1, 100)]))
                .await
        ),
        StoreError::Conflict
    ));
    for n in [1, 2] {
        assert!(store.get(&id(n)).await.unwrap().is_some(), "record {n}");
    }
    store.commit(compacting(vec![purge(2, 100)])).await.unwrap();
    assert!(store.get(&id(2)).await.unwrap().is_none());
}

pub async fn seal_versions_drop_only_below_the_newest(f: &dyn Factory) {
    let store = f.make().await;
    store.append(record(1, "a", None)).await.unwrap();
    for version in 1..=3 {
        reseal(store.as_ref(), 1, version).await;
    }
    assert_eq!(
        store.seal_versions(&[id(1), id(2)]).await.unwrap(),
        vec![(id(1), vec![1, 2, 3])]
    );
    let drop = |versions: Vec<u32>| {
        compacting(vec![Compaction::DropSealVersions {
            id: id(1),
            versions,
        }])
    };
    for newest_or_none in [vec![3], vec![0], vec![2, 4]] {
        assert!(matches!(
            refused(store.commit(drop(newest_or_none)).await),
            StoreError::Conflict
        ));
    }
    store.commit(drop(vec![1, 2])).await.unwrap();
    assert_eq!(
        store.seal_versions(&[id(1)]).await.unwrap(),
        vec![(id(1), vec![3])]
    );
    let got = store.get(&id(1)).await.unwrap().unwrap();
    assert_eq!((got.seal_version, got.record.sealed_pan), (3, vec![3; 40]));
    // Dropping what is gone is refused; re-encryption goes on after it.
    assert!(matches!(
        refused(store.commit(drop(vec![1])).await),
        StoreError::Conflict
    ));
    reseal(store.as_ref(), 1, 4).await;
    assert_eq!(store.get(&id(1)).await.unwrap().unwrap().seal_version, 4);
}

pub async fn scan_all_pages_every_tenant_in_id_order(f: &dyn Factory) {
    let store = f.make().await;
    for (n, t) in [(5, "b"), (1, "a"), (3, "c"), (2, "b"), (4, "a")] {
        store.append(record(n, t, None)).await.unwrap();
    }
    let first = store.scan_all(None, 2).await.unwrap();
    let rest = store
        .scan_all(Some(first[1].record.token_id), 10)
        .await
        .unwrap();
    let seen: Vec<TokenId> = first
        .iter()
        .chain(&rest)
        .map(|r| r.record.token_id)
        .collect();
    assert_eq!(seen, (1..=5).map(id).collect::<Vec<_>>());
    assert!(store.scan_all(Some(id(5)), 10).await.unwrap().is_empty());
}

pub async fn a_batch_may_purge_a_holder_and_hand_its_fingerprint_on(f: &dyn Factory) {
    let store = f.make().await;
    let fp = Fingerprint::from_bytes([9; 32]);
    store.append(record(1, "a", Some(9))).await.unwrap();
    store.append_tombstone(&id(1), dead_at(7)).await.unwrap();
    let batch = WriteBatch {
        units: vec![
            WriteUnit {
                compactions: vec![purge(1, 7)],
                ..WriteUnit::default()
            },
            WriteUnit {
                records: vec![record(2, "a", Some(9))],
                ..WriteUnit::default()
            },
        ],
        ..WriteBatch::default()
    };
    store.commit(Arc::new(batch)).await.unwrap();
    assert!(store.get(&id(1)).await.unwrap().is_none());
    let holder = store.find_by_fingerprint(&tenant("a"), &fp).await.unwrap();
    assert_eq!(holder.unwrap().record.token_id, id(2));
}
