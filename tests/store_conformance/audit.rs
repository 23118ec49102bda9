//! `AuditStore`: events append only at the log's end; the head is kept.

use tessera::store::StoreError;

use super::Factory;

pub async fn audit_log_appends_only_at_the_end(f: &dyn Factory) {
    let store = f.make().await;
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
