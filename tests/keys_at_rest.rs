//! No unwrapped key is ever at rest: after real traffic on sled, the bytes of
//! every data key and index key (unwrapped here through the KMS) appear
//! nowhere in the store's files; nor does any PAN (PCI DSS 3.5.1, 3.6.1.2).

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use tessera::clock::SystemClock;
use tessera::config::Profile;
use tessera::domain::{Pan, TenantId};
use tessera::kms::Kms;
use tessera::kms::dev::DevKms;
use tessera::store::KeyStore;
use tessera::store::sled::SledStore;
use tessera::vault::{FormatRequest, TokenizeCommand, Vault, VaultPolicy};

fn files(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(std::fs::read(&path).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn store_files_hold_no_unwrapped_key_and_no_pan() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Arc::new(SledStore::open(&store_dir).unwrap());
    let kms =
        Arc::new(DevKms::open_or_create(&dir.path().join("dev-master.key"), Profile::Dev).unwrap());
    let vault = Vault::new(
        kms.clone(),
        store.clone(),
        Arc::new(SystemClock),
        VaultPolicy::default(),
    );
    let pans = ["4111111111111111", "5555555555554444", "378282246310005"];
    for tenant in ["alpha", "beta"] {
        let t = TenantId::new(tenant).unwrap();
        for pan in pans {
            let cmd = TokenizeCommand {
                pan: Pan::parse(pan).unwrap(),
                format: FormatRequest::default(),
                deterministic: Some(true),
                ttl: None,
                single_use: false,
                metadata: Default::default(),
            };
            vault.tokenize(&t, cmd).await.unwrap();
        }
        vault.rotate_data_key(&t).await.unwrap();
        vault.reencrypt(&t, |_| {}).await.unwrap();
    }
    vault.rotate_master_key().await.unwrap();

    let mut keys = Vec::new();
    for record in store.all_wrapped_keys().await.unwrap() {
        let key = kms
            .unwrap_data_key(&record.wrapped, &record.context)
            .await
            .unwrap();
        keys.push(key.expose_secret().to_vec());
    }
    assert_eq!(
        keys.len(),
        7,
        "two DEK versions and one index key per tenant, and the audit key's root"
    );
    drop(vault);
    drop(store);
    let contents = files(&store_dir);
    assert!(!contents.is_empty());
    for bytes in &contents {
        for key in &keys {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_slice()),
                "an unwrapped key is at rest"
            );
        }
        for pan in pans {
            assert!(
                !bytes.windows(pan.len()).any(|w| w == pan.as_bytes()),
                "a PAN is at rest"
            );
        }
    }
}
