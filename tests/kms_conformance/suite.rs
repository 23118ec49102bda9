//! The `Kms` contract, one body for every backend. Each backend's test file
//! includes this module through `#[path]` and calls [`run_all`] with a
//! factory for ready (unsealed) KMS instances.

use tessera::domain::TenantId;
use tessera::kms::{KeyContext, KeyPurpose, Kms, KmsError, WrappedKey};

/// Makes ready KMS instances; `make` twice gives two different master keys.
#[async_trait::async_trait]
pub trait Factory: Sync {
    /// A new, unsealed KMS with its own master key.
    async fn make(&self) -> Box<dyn Kms>;
    /// Whether this backend may hold production card data.
    fn production_grade(&self) -> bool;
    /// The prefix of its key ids (`dev:`, `shamir:`, …).
    fn key_id_prefix(&self) -> &'static str;
    /// Whether Tessera rotates this backend's master key (AWS rotates its
    /// own key material and refuses).
    fn rotates_master_key(&self) -> bool {
        true
    }
}

fn ctx(tenant: &str, purpose: KeyPurpose, version: u32) -> KeyContext {
    KeyContext {
        tenant: TenantId::new(tenant).unwrap(),
        purpose,
        version,
    }
}

pub async fn generate_then_unwrap(f: &dyn Factory) {
    let kms = f.make().await;
    let c = ctx("default", KeyPurpose::Data, 1);
    let (key, wrapped) = kms.generate_data_key(&c).await.unwrap();
    assert_eq!(
        kms.unwrap_data_key(&wrapped, &c)
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
    let (other, _) = kms.generate_data_key(&c).await.unwrap();
    assert_ne!(
        other.expose_secret(),
        key.expose_secret(),
        "fresh keys each time"
    );
    assert!(
        !wrapped
            .as_bytes()
            .windows(32)
            .any(|w| w == key.expose_secret()),
        "the wrapped form hides the key"
    );
}

pub async fn context_is_bound(f: &dyn Factory) {
    let kms = f.make().await;
    let c = ctx("default", KeyPurpose::Data, 1);
    let (_, wrapped) = kms.generate_data_key(&c).await.unwrap();
    for wrong in [
        ctx("other", KeyPurpose::Data, 1),
        ctx("default", KeyPurpose::Index, 1),
        ctx("default", KeyPurpose::Data, 2),
    ] {
        assert!(
            matches!(
                kms.unwrap_data_key(&wrapped, &wrong).await,
                Err(KmsError::Unwrap)
            ),
            "{wrong:?}"
        );
    }
}

pub async fn tampered_and_foreign_blobs_fail(f: &dyn Factory) {
    let kms = f.make().await;
    let c = ctx("default", KeyPurpose::Data, 1);
    let (_, wrapped) = kms.generate_data_key(&c).await.unwrap();
    for i in 0..wrapped.as_bytes().len() {
        let mut bytes = wrapped.as_bytes().to_vec();
        bytes[i] ^= 0x01;
        let bad = WrappedKey::new(bytes).unwrap();
        assert!(kms.unwrap_data_key(&bad, &c).await.is_err(), "byte {i}");
    }
    let short = WrappedKey::new(wrapped.as_bytes()[..10].to_vec()).unwrap();
    assert!(kms.unwrap_data_key(&short, &c).await.is_err());
    let other = f.make().await;
    assert!(
        other.unwrap_data_key(&wrapped, &c).await.is_err(),
        "another master key cannot unwrap"
    );
}

pub async fn key_ids_and_grade(f: &dyn Factory) {
    let a = f.make().await;
    let b = f.make().await;
    let id = a.master_key_id().unwrap();
    assert!(id.as_str().starts_with(f.key_id_prefix()), "{id}");
    assert_ne!(Some(id), b.master_key_id());
    assert_eq!(a.is_production_grade(), f.production_grade());
    assert!(!a.backend_name().is_empty());
}

pub async fn master_key_rotation_keeps_old_wraps(f: &dyn Factory) {
    let kms = f.make().await;
    let c = ctx("default", KeyPurpose::Data, 1);
    let (key, old_wrap) = kms.generate_data_key(&c).await.unwrap();
    let old_id = kms.master_key_id().unwrap();
    if !f.rotates_master_key() {
        assert!(matches!(
            kms.rotate_master_key().await,
            Err(KmsError::Refused(_))
        ));
        return;
    }
    let new_id = kms.rotate_master_key().await.unwrap();
    assert_ne!(new_id, old_id);
    assert_eq!(kms.master_key_id(), Some(new_id));
    // The old wrap still opens; a rewrap under the new version opens too,
    // differs from the old one, and stays bound to its context.
    assert_eq!(
        kms.unwrap_data_key(&old_wrap, &c)
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
    let rewrapped = kms.wrap_data_key(&key, &c).await.unwrap();
    assert_ne!(rewrapped, old_wrap);
    assert_eq!(
        kms.unwrap_data_key(&rewrapped, &c)
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
    assert!(
        kms.unwrap_data_key(&rewrapped, &ctx("other", KeyPurpose::Data, 1))
            .await
            .is_err()
    );
    let (fresh, fresh_wrap) = kms.generate_data_key(&c).await.unwrap();
    assert_eq!(
        kms.unwrap_data_key(&fresh_wrap, &c)
            .await
            .unwrap()
            .expose_secret(),
        fresh.expose_secret()
    );
}

/// Runs every case.
pub async fn run_all(f: &dyn Factory) {
    generate_then_unwrap(f).await;
    context_is_bound(f).await;
    tampered_and_foreign_blobs_fail(f).await;
    key_ids_and_grade(f).await;
    master_key_rotation_keeps_old_wraps(f).await;
}
