//! A production-profile server on AWS KMS (emulated by moto, which the test
//! installs and starts): round trip, DEK rotation, restart. Built only with
//! `--features aws-kms`.

#![cfg(feature = "aws-kms")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/moto.rs"]
mod moto;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use common::{Server, assert_no_pan_leaked};
use tessera::proto::v1;

const VISA: &str = "4111111111111111";

#[tokio::test]
async fn aws_kms_backed_server_round_trip_and_restart() {
    let moto = moto::Moto::start();
    let client = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(moto::REGION))
            .endpoint_url(&moto.endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .build(),
    );
    let key = client.create_key().send().await.unwrap();
    let arn = key.key_metadata().unwrap().arn().unwrap().to_owned();

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
