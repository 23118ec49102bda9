//! `kill -9` in the middle of group commits: unary and batch tokenizes from
//! many tasks keep several commits in flight when the server dies. After a
//! restart every acknowledged token detokenizes to its PAN, and no commit is
//! half visible: each stored record is named by a Tokenize or TokenizeBatch
//! event of the audit log and each such event's tokens are all stored (a
//! record and its event share one commit), and the chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, assert_no_pan_leaked};
use tessera::audit::chain::ChainedEvent;
use tessera::domain::TenantId;
use tessera::proto::v1;
use tessera::store::Store;
use tessera::store::fjall::FjallStore;
use tessera::store::sled::SledStore;

type Acknowledged = Arc<Mutex<Vec<(String, String)>>>;

/// Tokenizes unary calls until the server stops answering.
async fn unary_load(server_addr: String, key: String, worker: u64, acked: Acknowledged) {
    let mut client = common::client(&server_addr, Some(&key)).await;
    for n in 0.. {
        let pan = common::test_pan(4, worker * 1_000_000 + n);
        let request = v1::TokenizeRequest {
            pan: pan.clone(),
            ..Default::default()
        };
        match client.tokenize(request).await {
            Ok(r) => acked.lock().unwrap().push((r.into_inner().token, pan)),
            Err(_) => return,
        }
    }
}

/// Tokenizes batches of 50 until the server stops answering.
async fn batch_load(server_addr: String, key: String, worker: u64, acked: Acknowledged) {
    let mut client = common::client(&server_addr, Some(&key)).await;
    for round in 0.. {
        let pans: Vec<String> = (0..50)
            .map(|i| common::test_pan(4, worker * 1_000_000 + round * 50 + i))
            .collect();
        let items = pans
            .iter()
            .map(|p| v1::TokenizeRequest {
                pan: p.clone(),
                ..Default::default()
            })
            .collect();
        let Ok(response) = client
            .tokenize_batch(v1::TokenizeBatchRequest { items })
            .await
        else {
            return;
        };
        let mut acked = acked.lock().unwrap();
        for (result, pan) in response.into_inner().results.into_iter().zip(pans) {
            match result.result {
                Some(v1::tokenize_result::Result::Token(t)) => acked.push((t.token, pan)),
                other => panic!("a batch item failed: {other:?}"),
            }
        }
    }
}

/// The keyed-id prefixes an event of a tokenize names (`token:<id>` or
/// `… tokens=<id>,<id>`).
fn named_tokens(event: &ChainedEvent) -> Vec<String> {
    let resource = &event.event.resource;
    if let Some(id) = resource.strip_prefix("token:") {
        return vec![id.to_owned()];
    }
    match resource.split_once("tokens=") {
        Some((_, ids)) if !ids.is_empty() => ids.split(',').map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The embedded engine under test.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sled,
    Fjall,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_kill_9_mid_group_commit_loses_nothing_acknowledged_and_shows_no_half_batch() {
    kill_9_mid_group_commit(Backend::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fjall_kill_9_mid_group_commit_loses_nothing_acknowledged_and_shows_no_half_batch() {
    kill_9_mid_group_commit(Backend::Fjall).await;
}

async fn kill_9_mid_group_commit(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    // The load-test limits, on the engine under test.
    let config = dir.path().join("tessera.toml");
    let mut toml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/bench.toml")).unwrap();
    if let Backend::Fjall = backend {
        toml.push_str("\n[store]\nbackend = \"fjall\"\n");
    }
    std::fs::write(&config, toml).unwrap();
    let config = config.as_path();
    let server = Server::start_dev_with_config(config, &data, &log);
    let key = server.api_key("pos");
    let acked: Acknowledged = Arc::default();
    let mut workers = Vec::new();
    for w in 0..24 {
        workers.push(tokio::spawn(unary_load(
            server.addr.clone(),
            key.clone(),
            w,
            acked.clone(),
        )));
    }
    for w in 24..28 {
        workers.push(tokio::spawn(batch_load(
            server.addr.clone(),
            key.clone(),
            w,
            acked.clone(),
        )));
    }
    // Let the load build up, then kill the server under it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 3_000 {
        assert!(std::time::Instant::now() < deadline, "load never built up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= 3_000);

    // Every acknowledged token detokenizes to its PAN.
    let server = Server::start_dev_with_config(config, &data, &log);
    let mut processor = server.client("processor").await;
    for chunk in acked.chunks(1000) {
        let items = chunk
            .iter()
            .map(|(token, _)| v1::DetokenizeRequest {
                token: token.clone(),
            })
            .collect();
        let results = processor
            .detokenize_batch(v1::DetokenizeBatchRequest { items })
            .await
            .unwrap()
            .into_inner()
            .results;
        for (result, (_, pan)) in results.iter().zip(chunk) {
            match &result.result {
                Some(v1::detokenize_result::Result::Pan(got)) => assert_eq!(&got.pan, pan),
                other => panic!("an acknowledged token was lost: {other:?}"),
            }
        }
    }
    assert_eq!(server.terminate().code(), Some(0));

    // No half-written commit: records and their events are all or nothing.
    let store = open_when_released(backend, &data).await;
    let mut stored = BTreeSet::new();
    let tenant = TenantId::new("default").unwrap();
    let mut after = None;
    loop {
        let page = store.scan_tenant(&tenant, after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.record.token_id);
        stored.extend(page.iter().map(|r| r.record.token_id.short()));
    }
    let mut named = BTreeSet::new();
    let mut from = 0;
    loop {
        let page = store.audit_records(from, 1000).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        from = last + 1;
        for (_, bytes) in &page {
            let event = ChainedEvent::decode(bytes).unwrap();
            let tokenize = matches!(event.event.action.as_str(), "Tokenize" | "TokenizeBatch");
            if tokenize && event.event.outcome == "OK" {
                named.extend(named_tokens(&event));
            }
        }
    }
    let unnamed: Vec<_> = stored.difference(&named).collect();
    let missing: Vec<_> = named.difference(&stored).collect();
    assert!(
        unnamed.is_empty(),
        "records without their event: {unnamed:?}"
    );
    assert!(
        missing.is_empty(),
        "events naming unstored tokens: {missing:?}"
    );
    assert!(stored.len() >= acked.len());
    let report = tessera::audit::verify::verify(store.as_ref(), None)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    drop(store);
    let pans: Vec<&str> = acked.iter().take(100).map(|(_, p)| p.as_str()).collect();
    assert_no_pan_leaked(&log, &data, &pans);
}

/// Opens the store once the stopped server's process has let go of it.
async fn open_when_released(backend: Backend, data: &std::path::Path) -> Arc<dyn Store> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let opened: Result<Arc<dyn Store>, _> = match backend {
            Backend::Sled => SledStore::open(&data.join("store")).map(shared),
            Backend::Fjall => FjallStore::open(&data.join("fjall"), 16 << 20).map(shared),
        };
        match opened {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store did not reopen: {e}"),
        }
    }
}

fn shared(store: impl Store) -> Arc<dyn Store> {
    Arc::new(store)
}
