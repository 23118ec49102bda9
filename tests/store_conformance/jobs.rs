//! `JobStore`: checkpoints overwrite, list by prefix and delete.

use super::Factory;

pub async fn checkpoints_overwrite_and_list(f: &dyn Factory) {
    let store = f.make().await;
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
