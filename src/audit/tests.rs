use std::sync::Arc;

use super::*;
use crate::pipeline::Pipeline;
use crate::store::memory::MemoryStore;

/// A log with its own write pipeline, as a vault builds one.
fn log_over(store: &Arc<dyn Store>) -> AuditLog {
    AuditLog::new(
        Arc::clone(store),
        Arc::new(Pipeline::new(Arc::clone(store))),
    )
}

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        time_ms: 1_700_000_000_000 + n,
        request_id: format!("req-{n}"),
        principal: "processor".into(),
        tenant: "default".into(),
        action: "Detokenize".into(),
        resource: format!("token:{n:016x}"),
        outcome: "OK".into(),
        origin: "127.0.0.1:5000".into(),
    }
}

/// Replicas on one database: two logs, each with its own committer, over
/// one store, appending at once. The store chains each batch after the
/// event it finds last under its commit lock, so no commit loses a race
/// for a position. Before, such commits failed (the caller's call with
/// them, audit being fail-closed), and then re-chained outside the lock,
/// where a busy replica could starve the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_committers_on_one_store_keep_one_chain() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let key = Arc::new(DataKey::from_bytes([5; 32]));
    let logs = [Arc::new(log_over(&store)), Arc::new(log_over(&store))];
    let mut calls = Vec::new();
    for n in 0..200u64 {
        let log = Arc::clone(&logs[usize::from(n % 2 == 1)]);
        let key = key.clone();
        calls.push(tokio::spawn(async move {
            log.record(event(n), Some(key)).await
        }));
    }
    let mut positions = Vec::new();
    for call in calls {
        positions.push(call.await.unwrap().unwrap());
    }
    positions.sort_unstable();
    assert_eq!(positions, (0..200).collect::<Vec<u64>>());
    let report = logs[0].verify(Some(&key)).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.events, 200);
}

#[tokio::test]
async fn chain_resumes_and_verifies() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let key = Arc::new(DataKey::from_bytes([5; 32]));
    let log = log_over(&store);
    for n in 0..5 {
        assert_eq!(log.record(event(n), Some(key.clone())).await.unwrap(), n);
    }
    // A second log over the same store (a restart) continues the chain.
    let again = log_over(&store);
    assert_eq!(again.record(event(5), None).await.unwrap(), 5);
    let report = again.verify(Some(&key)).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        (report.events, report.signed_through, report.head_checked),
        (6, Some(4), true)
    );
    // Another key does not accept the head.
    let report = again
        .verify(Some(&DataKey::from_bytes([6; 32])))
        .await
        .unwrap();
    assert!(!report.ok());
    let events = again.events(2, 2).await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(events[0].event, event(2));
}

#[test]
fn encodings_round_trip_and_refuse_truncation() {
    let chained = ChainedEvent::new(3, [7; 32], event(3));
    let bytes = chained.encode();
    assert_eq!(ChainedEvent::decode(&bytes).unwrap(), chained);
    for cut in 0..bytes.len() {
        assert!(ChainedEvent::decode(&bytes[..cut]).is_err());
    }
    let head = SignedHead::sign(&DataKey::from_bytes([1; 32]), 3, chained.hash);
    assert_eq!(SignedHead::decode(&head.encode()).unwrap(), head);
}

/// A replica idle while another wrote more than a commit may check under
/// the store's lock: its next commit walks forward outside the lock, then
/// lands; before, it read and hashed the whole gap under the lock.
#[tokio::test]
async fn a_committer_far_behind_walks_forward_then_commits() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let key = Arc::new(DataKey::from_bytes([5; 32]));
    let (a, b) = (log_over(&store), log_over(&store));
    assert_eq!(a.record(event(0), Some(key.clone())).await.unwrap(), 0);
    let many = u64::try_from(crate::store::MAX_TAIL_EVENTS).unwrap() + 10;
    for n in 1..=many {
        b.record(event(n), None).await.unwrap();
    }
    assert_eq!(
        a.record(event(many + 1), Some(key.clone())).await.unwrap(),
        many + 1
    );
    let report = a.verify(Some(&key)).await.unwrap();
    assert!(report.ok(), "{report:?}");
}
