//! `RecordStore`: append never overwrites, live fingerprints are unique
//! per tenant, a tombstone is written once, seal versions append in order.

use std::sync::Arc;

use tessera::domain::{Fingerprint, TokenId};
use tessera::store::{SealedVersion, StoreError, TombstoneReason};

use super::{Factory, record, tenant, tombstone};

pub async fn append_then_get(f: &dyn Factory) {
    let store = f.make().await;
    let rec = record(1, "a", None);
    store.append(rec.clone()).await.unwrap();
    let got = store.get(&rec.token_id).await.unwrap().unwrap();
    assert_eq!(got.record, rec);
    assert_eq!(got.tombstone, None);
    assert!(
        store
            .get(&TokenId::from_bytes([2; 32]))
            .await
            .unwrap()
            .is_none()
    );
    store.ping().await.unwrap();
}

pub async fn append_never_overwrites(f: &dyn Factory) {
    let store = f.make().await;
    let rec = record(1, "a", None);
    store.append(rec.clone()).await.unwrap();
    let mut other = record(1, "a", None);
    other.sealed_pan = vec![0xEE; 40];
    assert!(matches!(
        store.append(other).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(store.get(&rec.token_id).await.unwrap().unwrap().record, rec);
}

pub async fn fingerprint_is_unique_per_tenant_while_live(f: &dyn Factory) {
    let store = f.make().await;
    let first = record(1, "a", Some(9));
    store.append(first.clone()).await.unwrap();
    // Same tenant, same fingerprint, live holder: refused, nothing written.
    match store.append(record(2, "a", Some(9))).await {
        Err(StoreError::FingerprintTaken(holder)) => assert_eq!(holder, first.token_id),
        other => panic!("expected FingerprintTaken, got {other:?}"),
    }
    assert!(
        store
            .get(&TokenId::from_bytes([2; 32]))
            .await
            .unwrap()
            .is_none()
    );
    // Another tenant may use the same fingerprint bytes.
    store.append(record(3, "b", Some(9))).await.unwrap();
    let found = store
        .find_by_fingerprint(&tenant("a"), &Fingerprint::from_bytes([9; 32]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.record.token_id, first.token_id);
    let found_b = store
        .find_by_fingerprint(&tenant("b"), &Fingerprint::from_bytes([9; 32]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found_b.record.token_id, TokenId::from_bytes([3; 32]));
    assert!(
        store
            .find_by_fingerprint(&tenant("c"), &Fingerprint::from_bytes([9; 32]))
            .await
            .unwrap()
            .is_none()
    );
    // Once the holder is tombstoned, the fingerprint may move to a new record.
    store
        .append_tombstone(&first.token_id, tombstone(TombstoneReason::Deleted))
        .await
        .unwrap();
    store.append(record(4, "a", Some(9))).await.unwrap();
    let moved = store
        .find_by_fingerprint(&tenant("a"), &Fingerprint::from_bytes([9; 32]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.record.token_id, TokenId::from_bytes([4; 32]));
    // The old record is still there, dead.
    let old = store.get(&first.token_id).await.unwrap().unwrap();
    assert_eq!(old.tombstone.unwrap().reason, TombstoneReason::Deleted);
}

pub async fn tombstone_once(f: &dyn Factory) {
    let store = f.make().await;
    let rec = record(1, "a", None);
    store.append(rec.clone()).await.unwrap();
    store
        .append_tombstone(&rec.token_id, tombstone(TombstoneReason::Consumed))
        .await
        .unwrap();
    assert!(matches!(
        store
            .append_tombstone(&rec.token_id, tombstone(TombstoneReason::Deleted))
            .await,
        Err(StoreError::AlreadyExists)
    ));
    let got = store.get(&rec.token_id).await.unwrap().unwrap();
    assert_eq!(got.tombstone.unwrap().reason, TombstoneReason::Consumed);
    assert!(matches!(
        store
            .append_tombstone(
                &TokenId::from_bytes([5; 32]),
                tombstone(TombstoneReason::Deleted)
            )
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn concurrent_tombstones_exactly_one_wins(f: &dyn Factory) {
    let store = f.make().await;
    let rec = record(1, "a", None);
    store.append(rec.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        let id = rec.token_id;
        tasks.push(tokio::spawn(async move {
            store
                .append_tombstone(&id, tombstone(TombstoneReason::Consumed))
                .await
                .is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
}

pub async fn concurrent_appends_one_fingerprint_one_winner(f: &dyn Factory) {
    let store = f.make().await;
    let mut tasks = Vec::new();
    for id in 1..=16u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.append(record(id, "a", Some(42))).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
}

pub async fn scan_tenant_pages_in_order_and_stays_in_tenant(f: &dyn Factory) {
    let store = f.make().await;
    for id in [5u8, 1, 9, 3, 7] {
        store.append(record(id, "a", None)).await.unwrap();
    }
    store.append(record(4, "ab", None)).await.unwrap();
    store.append(record(2, "b", None)).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan_tenant(&tenant("a"), after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().map(|s| s.record.token_id);
        seen.extend(page.into_iter().map(|s| s.record.token_id.as_bytes()[0]));
    }
    assert_eq!(seen, vec![1, 3, 5, 7, 9]);
}

fn version(id: u8, v: u32, byte: u8) -> SealedVersion {
    SealedVersion {
        id: TokenId::from_bytes([id; 32]),
        version: v,
        sealed_pan: vec![byte; 40],
    }
}

pub async fn sealed_versions_append_in_order(f: &dyn Factory) {
    let store = f.make().await;
    let rec = record(1, "a", None);
    store.append(rec.clone()).await.unwrap();
    assert_eq!(
        store
            .get(&rec.token_id)
            .await
            .unwrap()
            .unwrap()
            .seal_version,
        0
    );
    // In one batch: version 2 before 1 refused, 1 accepted, 1 again refused,
    // an unknown record NotFound.
    let outcomes = store
        .append_sealed_versions(vec![
            version(1, 2, 2),
            version(1, 1, 1),
            version(1, 1, 9),
            version(8, 1, 1),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], Err(StoreError::AlreadyExists)));
    assert!(outcomes[1].is_ok());
    assert!(matches!(outcomes[2], Err(StoreError::AlreadyExists)));
    assert!(matches!(outcomes[3], Err(StoreError::NotFound)));
    let got = store.get(&rec.token_id).await.unwrap().unwrap();
    assert_eq!(
        (got.seal_version, got.record.sealed_pan.clone()),
        (1, vec![1; 40])
    );
    assert_eq!(got.record.facts, rec.facts, "only the sealed PAN changes");
    store
        .append_sealed_versions(vec![version(1, 2, 2)])
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let scanned = store.scan_tenant(&tenant("a"), None, 10).await.unwrap();
    assert_eq!(
        (
            scanned[0].seal_version,
            scanned[0].record.sealed_pan.clone()
        ),
        (2, vec![2; 40])
    );
}
