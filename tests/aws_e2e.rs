//! A production-profile server on AWS KMS (emulated by moto, which the test
//! installs and starts): round trip, DEK rotation, restart. Built only with
//! `--features aws-kms`.

#![cfg(feature = "aws-kms")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/load.rs"]
mod load;
#[path = "common/moto.rs"]
mod moto;
#[path = "common/python.rs"]
mod python;

use std::time::{Duration, Instant};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use common::{Server, assert_no_pan_leaked};
use tessera::proto::v1;

const VISA: &str = "4111111111111111";

/// A new customer master key on `moto`; its ARN.
async fn master_key(moto: &moto::Moto) -> String {
    let client = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(moto::REGION))
            .endpoint_url(&moto.endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .build(),
    );
    let key = client.create_key().send().await.unwrap();
    key.key_metadata().unwrap().arn().unwrap().to_owned()
}

#[tokio::test]
async fn aws_kms_backed_server_round_trip_and_restart() {
    let moto = moto::Moto::start();
    let arn = master_key(&moto).await;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let processor_key = tessera::access::api_key::generate().unwrap();
    let pki = common::TestPki::new(&dir.path().join("pki"));
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[kms]\nbackend = \"aws-kms\"\nkey_id = \"{arn}\"\nregion = \"{}\"\nendpoint = \"{}\"\n\n\
             [[principals]]\nname = \"processor\"\ntenant = \"default\"\nroles = [\"tokenize\", \"detokenize\"]\napi_key_hash = \"{}\"\n{}",
            data.display(),
            moto::REGION,
            moto.endpoint,
            processor_key.hash.to_config_string(),
            pki.config(false, false),
        ),
    )
    .unwrap();
    let args = [
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let env = moto.env();
    let server = Server::start_with_env(&args, &env, &data, &log).with_tls(&pki.ca());
    let mut processor = server
        .client_with_key(Some(processor_key.key.expose_secret()))
        .await;
    let token = processor
        .tokenize(v1::TokenizeRequest {
            pan: VISA.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    server.kill9();

    let server = Server::start_with_env(&args, &env, &data, &log).with_tls(&pki.ca());
    let mut processor = server
        .client_with_key(Some(processor_key.key.expose_secret()))
        .await;
    let pan = processor
        .detokenize(v1::DetokenizeRequest { token })
        .await
        .unwrap()
        .into_inner()
        .pan;
    assert_eq!(pan, VISA);
    drop(server);
    assert_no_pan_leaked(&log, &data, &[VISA]);
}

/// How long the server under load keeps unwrapped keys.
const CACHE_LIFETIME: Duration = Duration::from_secs(6);
/// Its longest wait for one KMS call.
const KMS_TIMEOUT: Duration = Duration::from_secs(1);

/// The KMS stops answering under load (moto stopped with SIGSTOP: its
/// port still accepts, nothing replies). Calls keep succeeding on the
/// cached keys until their lifetime ends; then every call fails with
/// UNAVAILABLE within the KMS timeout, nothing hangs; when the KMS answers
/// again the service recovers by itself, and every token acknowledged at
/// any point detokenizes to its PAN.
#[tokio::test]
async fn kms_unreachable_under_load_serves_cached_keys_then_fails_fast_then_recovers() {
    let moto = moto::Moto::start();
    let arn = master_key(&moto).await;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let mut env = moto.env();
    env.extend([
        ("TESSERA__KMS__BACKEND", "aws-kms".to_owned()),
        ("TESSERA__KMS__KEY_ID", arn),
        ("TESSERA__KMS__REGION", moto::REGION.to_owned()),
        ("TESSERA__KMS__ENDPOINT", moto.endpoint.clone()),
        (
            "TESSERA__KMS__TIMEOUT_MS",
            KMS_TIMEOUT.as_millis().to_string(),
        ),
        (
            "TESSERA__KEYS__CACHE_LIFETIME_S",
            CACHE_LIFETIME.as_secs().to_string(),
        ),
        ("TESSERA__ACCESS__LOCK_ON_ANOMALY", "false".to_owned()),
    ]);
    let server = Server::start_dev_with_env(&data, &env, &log);
    // The first call unwraps (makes) every key it needs: they are cached
    // from within this call until CACHE_LIFETIME after it.
    let warmed = Instant::now();
    let mut processor = server.client("processor").await;
    processor
        .tokenize(v1::TokenizeRequest {
            pan: VISA.into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let load = load::Load::start(&server, 4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    moto.pause();
    let paused_at = Instant::now();
    tokio::time::sleep(CACHE_LIFETIME + Duration::from_secs(3)).await;
    moto.resume();
    let resumed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = load.stop().await;

    // Keys expire up to a tenth of their lifetime early (jitter).
    let cached_until = warmed + CACHE_LIFETIME * 9 / 10;
    let served_on_cache = seen
        .successes
        .iter()
        .filter(|t| **t > paused_at && **t < cached_until)
        .count();
    assert!(served_on_cache > 0, "no call succeeded on the cached keys");
    let early: Vec<_> = seen
        .failures
        .iter()
        .filter(|(started, ..)| *started < cached_until)
        .collect();
    assert!(
        early.is_empty(),
        "calls failed while the keys were cached: {early:?}"
    );
    let while_down = seen
        .failures
        .iter()
        .filter(|(started, ..)| *started < resumed_at)
        .count();
    assert!(while_down > 0, "no call failed once the keys expired");
    // Every failure UNAVAILABLE, none slower than the KMS timeout (with
    // room for the call around it); every acknowledged token redeemable.
    load::check(&server, &seen, "kms unreachable", KMS_TIMEOUT).await;
    let after = seen.successes.partition_point(|t| *t < resumed_at);
    let recovered = seen
        .successes
        .get(after)
        .map(|t| t.duration_since(resumed_at))
        .expect("no call succeeded after the KMS answered again");
    let slowest_failure = seen.failures.iter().map(|(_, _, took)| *took).max();
    eprintln!(
        "kms unreachable: {} acknowledged, {} served on cached keys, {while_down} UNAVAILABLE \
         (slowest {slowest_failure:?}), first success {recovered:?} after the KMS answered again",
        seen.acked.len(),
        served_on_cache
    );
    drop(server);
    assert_no_pan_leaked(&log, &data, &[VISA]);
}
