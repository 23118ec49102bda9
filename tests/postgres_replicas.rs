//! Two `tessera serve` replicas on one PostgreSQL database behave as one
//! vault: one token per card under deterministic tokenization, one PAN per
//! single-use token, one audit chain, whichever replica each call reaches.
//!
//! (Shared principals, approvals, sessions and lockouts, and key rotations
//! seen by the other replica within a bound, are issue 11's next steps.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::path::Path;

use common::{Server, assert_no_pan_leaked, test_pan};
use tessera::proto::v1;
use tonic::Code;

/// A database and two replicas on it; the second shares the first's dev
/// master key and credentials, as replicas share a KMS and principals.
struct Pair {
    _pg: postgres::Postgres,
    dir: tempfile::TempDir,
    a: Server,
    b: Server,
}

fn on_postgres(url: &str, migrate: bool) -> Vec<(&'static str, String)> {
    vec![
        ("TESSERA__STORE__BACKEND", "postgres".to_owned()),
        ("TESSERA__STORE__URL", url.to_owned()),
        ("TESSERA__STORE__MIGRATE", migrate.to_string()),
    ]
}

impl Pair {
    async fn start() -> Self {
        let pg = postgres::Postgres::start();
        let url = pg.database("vault").await;
        let dir = tempfile::tempdir().unwrap();
        let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
        let a = Server::start_dev_with_env(
            &data_a,
            &on_postgres(&url, true),
            &dir.path().join("a.log"),
        );
        std::fs::create_dir_all(&data_b).unwrap();
        for file in ["dev-master.key", "dev-credentials.json"] {
            std::fs::copy(data_a.join(file), data_b.join(file)).unwrap();
        }
        let b = Server::start_dev_with_env(
            &data_b,
            &on_postgres(&url, false),
            &dir.path().join("b.log"),
        );
        Self { _pg: pg, dir, a, b }
    }

    fn assert_no_pan_leaked(self, pans: &[&str]) {
        let dir = self.dir.path().to_owned();
        drop(self.a);
        drop(self.b);
        for replica in ["a", "b"] {
            assert_no_pan_leaked(
                &dir.join(format!("{replica}.log")),
                &dir.join(replica),
                pans,
            );
        }
        let _ = Path::new(&dir);
    }
}

fn deterministic(pan: &str) -> v1::TokenizeRequest {
    v1::TokenizeRequest {
        pan: pan.into(),
        deterministic: Some(true),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_card_tokenized_through_both_replicas_at_once_gets_one_token() {
    let pair = Pair::start().await;
    let mut pans = Vec::new();
    for n in 0..20 {
        let pan = test_pan(4, n);
        let (mut a, mut b) = (pair.a.client("pos").await, pair.b.client("pos").await);
        let (ta, tb) = tokio::join!(
            a.tokenize(deterministic(&pan)),
            b.tokenize(deterministic(&pan))
        );
        let (ta, tb) = (ta.unwrap().into_inner(), tb.unwrap().into_inner());
        assert_eq!(ta.token, tb.token, "card {n}");
        assert!(ta.reused != tb.reused, "card {n}: exactly one was issued");
        pans.push(pan);
    }
    let pans: Vec<&str> = pans.iter().map(String::as_str).collect();
    pair.assert_no_pan_leaked(&pans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_redeemed_through_both_replicas_yields_one_pan() {
    let pair = Pair::start().await;
    for n in 0..10 {
        let pan = test_pan(5, n);
        let token = pair
            .a
            .client("processor")
            .await
            .tokenize(v1::TokenizeRequest {
                pan: pan.clone(),
                single_use: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let mut calls = Vec::new();
        for i in 0..8 {
            let server = if i % 2 == 0 { &pair.a } else { &pair.b };
            let mut client = server.client("processor").await;
            let token = token.clone();
            calls.push(tokio::spawn(async move {
                client.detokenize(v1::DetokenizeRequest { token }).await
            }));
        }
        let mut redeemed = Vec::new();
        for call in calls {
            match call.await.unwrap() {
                Ok(response) => redeemed.push(response.into_inner().pan),
                Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
            }
        }
        assert_eq!(redeemed, vec![pan], "token {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_writing_at_once_keep_one_audit_chain() {
    let pair = Pair::start().await;
    let mut calls = Vec::new();
    for n in 0..200 {
        let server = if n % 2 == 0 { &pair.a } else { &pair.b };
        let mut client = server.client("pos").await;
        calls.push(tokio::spawn(async move {
            client
                .tokenize(v1::TokenizeRequest {
                    pan: test_pan(6, n),
                    ..Default::default()
                })
                .await
        }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    for server in [&pair.a, &pair.b] {
        common::assert_audit_intact(server).await;
    }
    let tokenized = common::audit_events(&pair.a, "admin", "Tokenize").await;
    assert_eq!(tokenized.len(), 200);
}
