//! `KeyStore`: wrapped keys per context, compare-and-swap rewrap, shredding.

use tessera::domain::key::{KeyContext, KeyId, KeyPurpose, WrappedKey};
use tessera::store::{StoreError, WrappedKeyRecord};

use super::{Factory, tenant};

pub fn key(tenant_name: &str, purpose: KeyPurpose, version: u32) -> WrappedKeyRecord {
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
    let store = f.make().await;
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

pub async fn destroying_keys_is_per_tenant(f: &dyn Factory) {
    let store = f.make().await;
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

pub async fn wrapped_keys_replace_by_compare_and_swap(f: &dyn Factory) {
    let store = f.make().await;
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
