//! The `Store` contract, one body for every backend. Each backend's test
//! file includes this module through `#[path]` and calls [`run_all`] with a
//! factory for fresh, empty stores (the pattern of rustls' `api.rs` and
//! tikv's `engine_traits_tests`).

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera::domain::{CardBrand, Fingerprint, MaskedPan, TenantId, TokenId};
use tessera::kms::{KeyContext, KeyId, KeyPurpose, WrappedKey};
use tessera::store::{
    PublicFacts, SealedRecord, SealedVersion, Store, StoreError, Tombstone, TombstoneReason,
    WrappedKeyRecord,
};

/// Makes a fresh, empty store.
pub trait Factory {
    /// A new store.
    fn make(&self) -> Arc<dyn Store>;
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub fn record(id: u8, tenant_name: &str, fp: Option<u8>) -> SealedRecord {
    SealedRecord {
        token_id: TokenId::from_bytes([id; 32]),
        tenant: tenant(tenant_name),
        fingerprint: fp.map(|b| Fingerprint::from_bytes([b; 32])),
        facts: PublicFacts {
            masked_pan: MaskedPan::from_stored("411111******1111".into()).unwrap(),
            brand: CardBrand::Visa,
            created_at_ms: 1000 + u64::from(id),
            expires_at_ms: None,
            single_use: false,
            metadata: BTreeMap::from([("k".to_owned(), format!("v{id}"))]),
        },
        sealed_pan: vec![id; 40],
    }
}

fn tombstone(reason: TombstoneReason) -> Tombstone {
    Tombstone { reason, at_ms: 7 }
}

pub async fn append_then_get(f: &dyn Factory) {
    let store = f.make();
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
    let store = f.make();
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
    let store = f.make();
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
    let store = f.make();
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
    let store = f.make();
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
    let store = f.make();
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

fn key(tenant_name: &str, purpose: KeyPurpose, version: u32) -> WrappedKeyRecord {
    WrappedKeyRecord {
        context: KeyContext {
            tenant: tenant(tenant_name),
            purpose,
            version,
        },
        master_key_id: KeyId::new("dev:test").unwrap(),
        wrapped: WrappedKey::new(vec![u8::try_from(version).unwrap(); 60]).unwrap(),
        created_at_ms: u64::from(version),
    }
}

pub async fn wrapped_keys_append_only_and_listed_per_tenant(f: &dyn Factory) {
    let store = f.make();
    for k in [
        key("a", KeyPurpose::Data, 2),
        key("a", KeyPurpose::Data, 1),
        key("a", KeyPurpose::Index, 1),
        key("ab", KeyPurpose::Data, 1),
    ] {
        store.put_wrapped_key(k).await.unwrap();
    }
    assert!(matches!(
        store.put_wrapped_key(key("a", KeyPurpose::Data, 1)).await,
        Err(StoreError::AlreadyExists)
    ));
    let listed = store.wrapped_keys(&tenant("a")).await.unwrap();
    let contexts: Vec<(KeyPurpose, u32)> = listed
        .iter()
        .map(|k| (k.context.purpose, k.context.version))
        .collect();
    assert_eq!(
        contexts,
        vec![
            (KeyPurpose::Data, 1),
            (KeyPurpose::Data, 2),
            (KeyPurpose::Index, 1)
        ]
    );
    assert!(
        listed.iter().all(|k| k.context.tenant == tenant("a")),
        "tenant 'ab' must not leak into 'a'"
    );
    let one = store
        .wrapped_key(&key("a", KeyPurpose::Data, 2).context)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one, key("a", KeyPurpose::Data, 2));
    assert!(
        store
            .wrapped_key(&key("z", KeyPurpose::Data, 1).context)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn scan_tenant_pages_in_order_and_stays_in_tenant(f: &dyn Factory) {
    let store = f.make();
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

pub async fn destroying_keys_is_per_tenant(f: &dyn Factory) {
    let store = f.make();
    for k in [
        key("a", KeyPurpose::Data, 1),
        key("a", KeyPurpose::Index, 1),
        key("ab", KeyPurpose::Data, 1),
    ] {
        store.put_wrapped_key(k).await.unwrap();
    }
    store
        .destroy_wrapped_key(&key("a", KeyPurpose::Data, 1).context)
        .await
        .unwrap();
    assert!(matches!(
        store
            .destroy_wrapped_key(&key("a", KeyPurpose::Data, 1).context)
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.destroy_wrapped_keys(&tenant("a")).await.unwrap(), 1);
    assert!(store.wrapped_keys(&tenant("a")).await.unwrap().is_empty());
    assert_eq!(store.wrapped_keys(&tenant("ab")).await.unwrap().len(), 1);
}

fn version(id: u8, v: u32, byte: u8) -> SealedVersion {
    SealedVersion {
        id: TokenId::from_bytes([id; 32]),
        version: v,
        sealed_pan: vec![byte; 40],
    }
}

pub async fn sealed_versions_append_in_order(f: &dyn Factory) {
    let store = f.make();
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

pub async fn checkpoints_overwrite_and_list(f: &dyn Factory) {
    let store = f.make();
    assert!(store.checkpoint("job/a").await.unwrap().is_none());
    store.put_checkpoint("job/a", vec![1]).await.unwrap();
    store.put_checkpoint("job/a", vec![2]).await.unwrap();
    store.put_checkpoint("job/b", vec![3]).await.unwrap();
    store.put_checkpoint("other", vec![4]).await.unwrap();
    assert_eq!(store.checkpoint("job/a").await.unwrap(), Some(vec![2]));
    assert_eq!(
        store.checkpoints("job/").await.unwrap(),
        vec!["job/a".to_owned(), "job/b".to_owned()]
    );
    store.delete_checkpoint("job/a").await.unwrap();
    assert!(store.checkpoint("job/a").await.unwrap().is_none());
}

pub async fn wrapped_keys_replace_by_compare_and_swap(f: &dyn Factory) {
    let store = f.make();
    let original = key("a", KeyPurpose::Data, 1);
    store.put_wrapped_key(original.clone()).await.unwrap();
    store
        .put_wrapped_key(key("b", KeyPurpose::Index, 1))
        .await
        .unwrap();
    assert_eq!(store.all_wrapped_keys().await.unwrap().len(), 2);
    let rewrapped = WrappedKeyRecord {
        master_key_id: KeyId::new("dev:second").unwrap(),
        wrapped: WrappedKey::new(vec![0xAB; 60]).unwrap(),
        ..original.clone()
    };
    store
        .replace_wrapped_key(&original, rewrapped.clone())
        .await
        .unwrap();
    // A stale expectation changes nothing.
    assert!(matches!(
        store.replace_wrapped_key(&original, original.clone()).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(
        store.wrapped_key(&original.context).await.unwrap().unwrap(),
        rewrapped
    );
    // Moving a wrap to another context is refused.
    let moved = WrappedKeyRecord {
        context: key("a", KeyPurpose::Data, 2).context,
        ..rewrapped.clone()
    };
    assert!(store.replace_wrapped_key(&rewrapped, moved).await.is_err());
}

pub async fn audit_log_appends_only_at_the_end(f: &dyn Factory) {
    let store = f.make();
    assert!(store.last_audit_record().await.unwrap().is_none());
    assert!(matches!(
        store.append_audit(1, vec![1], None).await,
        Err(StoreError::AlreadyExists)
    ));
    store.append_audit(0, vec![0], None).await.unwrap();
    store.append_audit(1, vec![1], Some(vec![9])).await.unwrap();
    assert!(matches!(
        store.append_audit(1, vec![7], None).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        store.append_audit(5, vec![7], None).await,
        Err(StoreError::AlreadyExists)
    ));
    store.append_audit(2, vec![2], None).await.unwrap();
    assert_eq!(store.audit_head().await.unwrap(), Some(vec![9]));
    assert_eq!(store.last_audit_record().await.unwrap(), Some((2, vec![2])));
    let all = store.audit_records(0, 10).await.unwrap();
    assert_eq!(all, vec![(0, vec![0]), (1, vec![1]), (2, vec![2])]);
    assert_eq!(store.audit_records(1, 1).await.unwrap(), vec![(1, vec![1])]);
}

/// Runs every case against fresh stores from `f`.
pub async fn run_all(f: &dyn Factory) {
    append_then_get(f).await;
    append_never_overwrites(f).await;
    fingerprint_is_unique_per_tenant_while_live(f).await;
    tombstone_once(f).await;
    concurrent_tombstones_exactly_one_wins(f).await;
    concurrent_appends_one_fingerprint_one_winner(f).await;
    wrapped_keys_append_only_and_listed_per_tenant(f).await;
    scan_tenant_pages_in_order_and_stays_in_tenant(f).await;
    destroying_keys_is_per_tenant(f).await;
    sealed_versions_append_in_order(f).await;
    checkpoints_overwrite_and_list(f).await;
    wrapped_keys_replace_by_compare_and_swap(f).await;
    audit_log_appends_only_at_the_end(f).await;
}
