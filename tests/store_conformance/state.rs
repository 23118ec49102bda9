//! `StateStore`: conditional puts let one writer win each transition, and
//! the change feed numbers every change in order, deletions included.

use std::sync::Arc;

use tessera::store::{Expect, StateKind, StoreError};

use super::Factory;

pub async fn state_puts_only_what_the_writer_expected(f: &dyn Factory) {
    let store = f.make().await;
    let kind = StateKind::Session;
    assert!(store.state(kind, "a").await.unwrap().is_none());
    let v1 = store
        .put_state(kind, "a", Some(vec![1]), Expect::Absent)
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_state(kind, "a", Some(vec![9]), Expect::Absent)
            .await,
        Err(StoreError::Conflict)
    ));
    let v2 = store
        .put_state(kind, "a", Some(vec![2]), Expect::Version(v1))
        .await
        .unwrap();
    assert!(v2 > v1);
    // A writer that read v1 lost to the one that wrote v2.
    assert!(matches!(
        store
            .put_state(kind, "a", Some(vec![9]), Expect::Version(v1))
            .await,
        Err(StoreError::Conflict)
    ));
    let found = store.state(kind, "a").await.unwrap().unwrap();
    assert_eq!((found.version, found.value), (v2, vec![2]));
    // The same key of another kind is another entry.
    assert!(store.state(StateKind::Lock, "a").await.unwrap().is_none());
    let v3 = store
        .put_state(kind, "b", Some(vec![3]), Expect::Any)
        .await
        .unwrap();
    // Deleted: gone from reads and lists, and absent for the next put.
    store
        .put_state(kind, "a", None, Expect::Version(v2))
        .await
        .unwrap();
    assert!(store.state(kind, "a").await.unwrap().is_none());
    assert!(matches!(
        store.put_state(kind, "a", None, Expect::Version(v2)).await,
        Err(StoreError::Conflict)
    ));
    let listed = store.states(kind).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].0.as_str(), listed[0].1.version), ("b", v3));
    store
        .put_state(kind, "a", Some(vec![4]), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        store.state(kind, "a").await.unwrap().unwrap().value,
        vec![4]
    );
    // Keys are ids and names, bounded.
    assert!(
        store
            .put_state(kind, &"k".repeat(257), Some(vec![]), Expect::Any)
            .await
            .is_err()
    );
}

pub async fn state_changes_come_in_order_with_deletions(f: &dyn Factory) {
    let store = f.make().await;
    let a = store
        .put_state(StateKind::Principal, "alice", Some(vec![1]), Expect::Absent)
        .await
        .unwrap();
    let b = store
        .put_state(StateKind::Approval, "0011", Some(vec![2]), Expect::Absent)
        .await
        .unwrap();
    let c = store
        .put_state(StateKind::Principal, "alice", None, Expect::Version(a))
        .await
        .unwrap();
    let d = store
        .put_state(StateKind::Signal, "keys", Some(vec![]), Expect::Any)
        .await
        .unwrap();
    let all = store.state_changes(0, 100).await.unwrap();
    // Each entry's newest change only: alice's put gave way to her delete.
    let seen: Vec<(u64, StateKind, &str, bool)> = all
        .iter()
        .map(|c| (c.version, c.kind, c.key.as_str(), c.deleted))
        .collect();
    assert_eq!(
        seen,
        vec![
            (b, StateKind::Approval, "0011", false),
            (c, StateKind::Principal, "alice", true),
            (d, StateKind::Signal, "keys", false),
        ]
    );
    let after_b = store.state_changes(b, 100).await.unwrap();
    assert_eq!(
        after_b.iter().map(|c| c.version).collect::<Vec<_>>(),
        vec![c, d]
    );
    let first = store.state_changes(0, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].version, b);
    assert!(store.state_changes(d, 100).await.unwrap().is_empty());
}

/// Replicas racing on one transition: exactly one creates the entry, and
/// read-modify-write loops that retry on `Conflict` lose no update.
pub async fn racing_conditional_puts_lose_no_update(f: &dyn Factory) {
    let store = f.make().await;
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let created = store
                .put_state(StateKind::Lock, "first", Some(vec![n]), Expect::Absent)
                .await
                .is_ok();
            loop {
                let (count, expect) = match store.state(StateKind::Lock, "count").await.unwrap() {
                    Some(e) => (e.value[0], Expect::Version(e.version)),
                    None => (0, Expect::Absent),
                };
                match store
                    .put_state(StateKind::Lock, "count", Some(vec![count + 1]), expect)
                    .await
                {
                    Ok(_) => break,
                    Err(StoreError::Conflict) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            created
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1);
    let count = store
        .state(StateKind::Lock, "count")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count.value, vec![8]);
    // Every change is in the feed once, numbered without repeats.
    let changes = store.state_changes(0, 1000).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert!(changes[0].version < changes[1].version);
}
