//! A store outage answers UNAVAILABLE, never a partial write, and service
//! resumes when the store returns. The real sled store sits behind a switch
//! that makes every call fail, as sled's own failpoints do.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tessera::access::api_key;
use tessera::access::principals::{PrincipalBook, PrincipalEntry};
use tessera::cli::client::Bearer;
use tessera::clock::SystemClock;
use tessera::config::Profile;
use tessera::domain::{Fingerprint, Principal, Role, TenantId, TokenId};
use tessera::kms::KeyContext;
use tessera::kms::dev::DevKms;
use tessera::proto::v1;
use tessera::proto::v1::tokenizer_client::TokenizerClient;
use tessera::server::{self, App};
use tessera::store::sled::SledStore;
use tessera::store::{
    SealedRecord, SealedVersion, Store, StoreError, StoredRecord, Tombstone, WrappedKeyRecord,
};
use tessera::vault::{Vault, VaultPolicy};
use tonic::Code;

#[derive(Debug)]
struct Switchable {
    inner: SledStore,
    down: AtomicBool,
    /// Only the audit log fails (an unwritable audit sink).
    audit_down: AtomicBool,
}

impl Switchable {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("injected outage".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Switchable {
    async fn append(&self, record: SealedRecord) -> Result<(), StoreError> {
        self.check()?;
        self.inner.append(record).await
    }
    async fn get(&self, id: &TokenId) -> Result<Option<StoredRecord>, StoreError> {
        self.check()?;
        self.inner.get(id).await
    }
    async fn find_by_fingerprint(
        &self,
        t: &TenantId,
        fp: &Fingerprint,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.check()?;
        self.inner.find_by_fingerprint(t, fp).await
    }
    async fn append_tombstone(&self, id: &TokenId, t: Tombstone) -> Result<(), StoreError> {
        self.check()?;
        self.inner.append_tombstone(id, t).await
    }
    async fn put_wrapped_key(&self, k: WrappedKeyRecord) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_wrapped_key(k).await
    }
    async fn wrapped_key(&self, c: &KeyContext) -> Result<Option<WrappedKeyRecord>, StoreError> {
        self.check()?;
        self.inner.wrapped_key(c).await
    }
    async fn wrapped_keys(&self, t: &TenantId) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        self.check()?;
        self.inner.wrapped_keys(t).await
    }
    async fn destroy_wrapped_keys(&self, t: &TenantId) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.destroy_wrapped_keys(t).await
    }
    async fn destroy_wrapped_key(&self, c: &KeyContext) -> Result<(), StoreError> {
        self.check()?;
        self.inner.destroy_wrapped_key(c).await
    }
    async fn scan_tenant(
        &self,
        t: &TenantId,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.check()?;
        self.inner.scan_tenant(t, after, limit).await
    }
    async fn append_sealed_versions(
        &self,
        items: Vec<SealedVersion>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.check()?;
        self.inner.append_sealed_versions(items).await
    }
    async fn put_checkpoint(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_checkpoint(name, value).await
    }
    async fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.check()?;
        self.inner.checkpoint(name).await
    }
    async fn checkpoints(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.check()?;
        self.inner.checkpoints(prefix).await
    }
    async fn delete_checkpoint(&self, name: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete_checkpoint(name).await
    }
    async fn all_wrapped_keys(&self) -> Result<Vec<WrappedKeyRecord>, StoreError> {
        self.check()?;
        self.inner.all_wrapped_keys().await
    }
    async fn replace_wrapped_key(
        &self,
        expected: &WrappedKeyRecord,
        new: WrappedKeyRecord,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.replace_wrapped_key(expected, new).await
    }
    async fn append_audit(
        &self,
        seq: u64,
        record: Vec<u8>,
        head: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.check()?;
        if self.audit_down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected audit outage".into()));
        }
        self.inner.append_audit(seq, record, head).await
    }
    async fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.check()?;
        self.inner.audit_records(from, limit).await
    }
    async fn last_audit_record(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.check()?;
        self.inner.last_audit_record().await
    }
    async fn audit_head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.check()?;
        self.inner.audit_head().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }
}

#[tokio::test]
async fn store_outage_is_unavailable_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Switchable {
        inner: SledStore::open(&dir.path().join("store")).unwrap(),
        down: AtomicBool::new(false),
        audit_down: AtomicBool::new(false),
    });
    let kms = Arc::new(DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap());
    let vault = Vault::new(
        kms,
        store.clone(),
        Arc::new(SystemClock),
        VaultPolicy::default(),
    );
    let key = api_key::generate().unwrap();
    let keys = PrincipalBook::open(
        vec![PrincipalEntry {
            principal: Principal {
                name: "processor".into(),
                tenant: TenantId::new("default").unwrap(),
                roles: [Role::Tokenize, Role::Detokenize].into(),
            },
            key_hash: Some(key.hash.clone()),
            cert_identity: None,
            totp: None,
            created_at_ms: 0,
            created_by: None,
        }],
        None,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::run(listener, App::from_parts(vault, keys), async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        TokenizerClient::with_interceptor(channel, Bearer::new(key.key.expose_secret()).unwrap());
    let req = || v1::TokenizeRequest {
        pan: "4111111111111111".into(),
        ..Default::default()
    };
    let token = client.tokenize(req()).await.unwrap().into_inner().token;

    store.down.store(true, Ordering::SeqCst);
    let status = client.tokenize(req()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(!status.message().contains("4111"));
    let status = client
        .detokenize(v1::DetokenizeRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    store.down.store(false, Ordering::SeqCst);
    let pan = client
        .detokenize(v1::DetokenizeRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .pan;
    assert_eq!(pan, "4111111111111111");

    // The audit sink fails alone: no PAN leaves without its event, and
    // tokenize fails closed by default too (SECURITY.md §1.5).
    store.audit_down.store(true, Ordering::SeqCst);
    let status = client
        .detokenize(v1::DetokenizeRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("audit"), "{}", status.message());
    assert_eq!(
        client.tokenize(req()).await.unwrap_err().code(),
        Code::Unavailable
    );
    store.audit_down.store(false, Ordering::SeqCst);
    assert!(
        client
            .detokenize(v1::DetokenizeRequest { token })
            .await
            .is_ok()
    );

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}
