//! A store outage answers UNAVAILABLE, never a partial write, and service
//! resumes when the store returns. The real sled store sits behind a switch
//! that makes every call fail, as sled's own failpoints do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tessera::access::api_key;
use tessera::access::principals::{PrincipalBook, PrincipalEntry};
use tessera::access::totp::TotpSecret;
use tessera::audit::AuditEvent;
use tessera::cli::client::Bearer;
use tessera::clock::SystemClock;
use tessera::config::Profile;
use tessera::domain::Pan;
use tessera::domain::key::KeyContext;
use tessera::domain::{Fingerprint, Principal, Role, TenantId, TokenId};
use tessera::keyring::AUDIT_KEY_CREATED;
use tessera::kms::dev::DevKms;
use tessera::proto::v1;
use tessera::proto::v1::key_admin_client::KeyAdminClient;
use tessera::proto::v1::principals_client::PrincipalsClient;
use tessera::proto::v1::tokenizer_client::TokenizerClient;
use tessera::server::{self, App};
use tessera::store::sled::SledStore;
use tessera::store::{
    AuditStore, CommitError, Engine, Expect, JobStore, KeyStore, RecordStore, SealedVersion,
    StateChange, StateEntry, StateKind, StateStore, StoreError, StoredRecord, WrappedKeyRecord,
    WriteBatch,
};
use tessera::vault::{FormatRequest, TokenizeCommand, Vault, VaultPolicy};
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
impl RecordStore for Switchable {
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
    async fn scan_tenant(
        &self,
        t: &TenantId,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.check()?;
        self.inner.scan_tenant(t, after, limit).await
    }
    async fn scan_all(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.check()?;
        self.inner.scan_all(after, limit).await
    }
    async fn is_taken(&self, id: &TokenId) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.is_taken(id).await
    }
    async fn seal_versions(&self, ids: &[TokenId]) -> Result<Vec<(TokenId, Vec<u32>)>, StoreError> {
        self.check()?;
        self.inner.seal_versions(ids).await
    }
    async fn append_sealed_versions(
        &self,
        items: Vec<SealedVersion>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.check()?;
        self.inner.append_sealed_versions(items).await
    }
}

#[async_trait]
impl KeyStore for Switchable {
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
    async fn destroy_wrapped_keys(&self, t: &TenantId) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.destroy_wrapped_keys(t).await
    }
    async fn destroy_wrapped_key(&self, c: &KeyContext) -> Result<(), StoreError> {
        self.check()?;
        self.inner.destroy_wrapped_key(c).await
    }
}

#[async_trait]
impl AuditStore for Switchable {
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
}

#[async_trait]
impl JobStore for Switchable {
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
}

#[async_trait]
impl StateStore for Switchable {
    async fn state(&self, kind: StateKind, key: &str) -> Result<Option<StateEntry>, StoreError> {
        self.check()?;
        self.inner.state(kind, key).await
    }
    async fn states(&self, kind: StateKind) -> Result<Vec<(String, StateEntry)>, StoreError> {
        self.check()?;
        self.inner.states(kind).await
    }
    async fn put_state(
        &self,
        kind: StateKind,
        key: &str,
        value: Option<Vec<u8>>,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.put_state(kind, key, value, expect).await
    }
    async fn state_changes(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<StateChange>, StoreError> {
        self.check()?;
        self.inner.state_changes(since, limit).await
    }
}

#[async_trait]
impl Engine for Switchable {
    async fn commit(&self, batch: Arc<WriteBatch>) -> Result<(), CommitError> {
        self.check()?;
        if batch.audit.tail_from().is_some() && self.audit_down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected audit outage".into()).into());
        }
        self.inner.commit(batch).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.sync().await
    }
}

/// A dev vault over a switchable sled store in `dir`.
fn switchable_vault(dir: &std::path::Path) -> (Arc<Switchable>, Vault) {
    let store = Arc::new(Switchable {
        inner: SledStore::open(&dir.join("store")).unwrap(),
        down: AtomicBool::new(false),
        audit_down: AtomicBool::new(false),
    });
    let vault = vault_over(&store, dir);
    (store, vault)
}

/// A dev vault over `store` with the KMS key in `dir`: a new process on
/// the same store.
fn vault_over(store: &Arc<Switchable>, dir: &std::path::Path) -> Vault {
    let kms = Arc::new(DevKms::open_or_create(&dir.join("k"), Profile::Dev).unwrap());
    Vault::new(
        kms,
        store.clone(),
        Arc::new(SystemClock),
        VaultPolicy::default(),
    )
}

/// The audit key's root was stored on its own, before the commit of the
/// first signed event. A crash between the two (here: the audit log fails
/// that commit) left a key over a log of unsigned events and no signed
/// head, which reads as a deleted head: verification said tampered, and
/// no event could be appended again. The root is now stored in the commit
/// that signs the first head, and every other key is made after it.
#[tokio::test]
async fn a_failed_first_signed_commit_leaves_no_key_without_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vault) = switchable_vault(dir.path());
    let acme = TenantId::new("acme").unwrap();
    let tokenize = || TokenizeCommand {
        pan: Pan::parse("4111111111111111").unwrap(),
        format: FormatRequest::default(),
        deterministic: None,
        ttl: None,
        single_use: false,
        metadata: std::collections::BTreeMap::new(),
    };
    // Events written while sealed are chained, not signed.
    vault.seal();
    let sealed_event = AuditEvent {
        action: "auth_failure".into(),
        outcome: "UNAUTHENTICATED".into(),
        ..AuditEvent::default()
    };
    vault.record_audit(sealed_event).await.unwrap();
    drop(vault);

    // The next process's first tokenize makes the keys; its commit fails.
    let vault = vault_over(&store, dir.path());
    store.audit_down.store(true, Ordering::SeqCst);
    assert!(vault.tokenize(&acme, tokenize()).await.is_err());
    store.audit_down.store(false, Ordering::SeqCst);
    drop(vault);

    let vault = vault_over(&store, dir.path());
    let report = vault.verify_audit().await.unwrap();
    assert!(report.ok(), "{}", report.problem);
    let token = vault.tokenize(&acme, tokenize()).await.unwrap().token;
    assert!(vault.detokenize(&acme, &token).await.is_ok());
    let report = vault.verify_audit().await.unwrap();
    assert!(report.ok() && report.head_checked, "{}", report.problem);
    // The first signed event says when the key was made.
    let events = vault.audit_events(0, 10).await.unwrap();
    assert_eq!(events[1].event.action, AUDIT_KEY_CREATED);
}

/// A server running in this process; `stop` shuts it down cleanly.
struct Running {
    channel: tonic::transport::Channel,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), server::StartError>>,
}

impl Running {
    async fn start(app: App) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::run(listener, app, async {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            channel,
            stop,
            serving,
        }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.serving.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn store_outage_is_unavailable_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vault) = switchable_vault(dir.path());
    let key = api_key::generate().unwrap();
    let keys = PrincipalBook::open(
        vec![entry(
            "processor",
            &[Role::Tokenize, Role::Detokenize],
            &key,
            None,
        )],
        None,
    )
    .unwrap();
    let running = Running::start(App::from_parts(vault, keys)).await;
    let channel = running.channel.clone();
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

    running.stop().await;
}

/// A principal of tenant `default` for the in-process server.
fn entry(
    name: &str,
    roles: &[Role],
    key: &api_key::NewApiKey,
    totp: Option<&str>,
) -> PrincipalEntry {
    PrincipalEntry {
        principal: Principal {
            name: name.into(),
            tenant: TenantId::new("default").unwrap(),
            roles: roles.iter().copied().collect(),
        },
        key_hash: Some(key.hash.clone()),
        cert_identity: None,
        totp: totp.map(|s| Arc::new(TotpSecret::from_base32(s).unwrap())),
        created_at_ms: 0,
        created_by: None,
    }
}

/// Finding 4: "fail closed" audit ran after the state change for
/// DeleteToken, single-use Detokenize, Add/RevokePrincipal, key rotation and
/// approvals, so a failed append left the change made and unrecorded. Now
/// the intent is written first: with the audit log down, nothing changes.
#[tokio::test]
async fn a_lost_intent_event_leaves_every_state_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vault) = switchable_vault(dir.path());
    let processor = api_key::generate().unwrap();
    let (admin, admin2) = (api_key::generate().unwrap(), api_key::generate().unwrap());
    let secret = |s: &TotpSecret| s.to_base32().expose_secret().to_owned();
    let (secret1, secret2) = (
        secret(&TotpSecret::generate().unwrap()),
        secret(&TotpSecret::generate().unwrap()),
    );
    let book = PrincipalBook::open(
        vec![
            entry(
                "processor",
                &[Role::Tokenize, Role::Detokenize, Role::Delete],
                &processor,
                None,
            ),
            entry("admin", &[Role::Admin], &admin, Some(&secret1)),
            entry("admin2", &[Role::Admin], &admin2, Some(&secret2)),
        ],
        None,
    )
    .unwrap();
    let running =
        Running::start(App::from_parts(vault, book).with_otp_step(common::OTP_STEP)).await;
    let channel = running.channel.clone();
    let mut client = TokenizerClient::with_interceptor(
        channel.clone(),
        Bearer::new(processor.key.expose_secret()).unwrap(),
    );
    let auth1 = common::OtpAuth::new(admin.key.expose_secret(), &secret1);
    let auth2 = common::OtpAuth::new(admin2.key.expose_secret(), &secret2);
    let mut keys1 = KeyAdminClient::with_interceptor(channel.clone(), auth1.clone());
    let mut keys2 = KeyAdminClient::with_interceptor(channel.clone(), auth2);
    let mut book1 = PrincipalsClient::with_interceptor(channel, auth1);

    let tokenize = |single_use| v1::TokenizeRequest {
        pan: "4111111111111111".into(),
        single_use,
        ..Default::default()
    };
    let multi = client
        .tokenize(tokenize(false))
        .await
        .unwrap()
        .into_inner()
        .token;
    let once = client
        .tokenize(tokenize(true))
        .await
        .unwrap()
        .into_inner()
        .token;
    let shred = keys1
        .shred_tenant(v1::ShredTenantRequest::default())
        .await
        .unwrap_err();
    assert_eq!(shred.code(), Code::FailedPrecondition);
    let shred_id = {
        use tonic_types::StatusExt;
        shred.get_details_error_info().unwrap().metadata["approval_id"].clone()
    };

    store.audit_down.store(true, Ordering::SeqCst);
    let detokenize = |token: &str| v1::DetokenizeRequest {
        token: token.into(),
    };
    let refused = [
        client
            .delete_token(v1::DeleteTokenRequest {
                token: multi.clone(),
            })
            .await
            .map(|_| ()),
        client.detokenize(detokenize(&once)).await.map(|_| ()),
        book1
            .add_principal(v1::AddPrincipalRequest {
                name: "till-9".into(),
                roles: vec!["tokenize".into()],
                cert_identity: String::new(),
                tenant: String::new(),
            })
            .await
            .map(|_| ()),
        book1
            .revoke_principal(v1::RevokePrincipalRequest {
                name: "processor".into(),
                cascade: false,
            })
            .await
            .map(|_| ()),
        keys1
            .rotate_data_key(v1::RotateDataKeyRequest::default())
            .await
            .map(|_| ()),
        keys1
            .retire_data_key(v1::RetireDataKeyRequest {
                tenant: String::new(),
                version: 1,
            })
            .await
            .map(|_| ()),
        keys2
            .approve(v1::ApproveRequest {
                id: shred_id.clone(),
            })
            .await
            .map(|_| ()),
    ];
    for (i, result) in refused.into_iter().enumerate() {
        assert_eq!(result.unwrap_err().code(), Code::Unavailable, "call {i}");
    }
    store.audit_down.store(false, Ordering::SeqCst);

    // Nothing changed: the token is not deleted, the single-use token is not
    // consumed, nobody was added or revoked, no key was rotated, and the
    // shred is still only pending.
    client.detokenize(detokenize(&multi)).await.unwrap();
    client.detokenize(detokenize(&once)).await.unwrap();
    assert_eq!(
        client
            .detokenize(detokenize(&once))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let principals = book1
        .list_principals(v1::ListPrincipalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .principals;
    assert!(!principals.iter().any(|p| p.name == "till-9"));
    assert!(
        !principals
            .iter()
            .find(|p| p.name == "processor")
            .unwrap()
            .revoked
    );
    let status = keys1
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.data_keys.len(), 1, "{status:?}");
    let pending = keys1
        .list_approvals(v1::ListApprovalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert!(pending.iter().any(|a| a.id == shred_id));

    running.stop().await;
}
