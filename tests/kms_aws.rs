//! The KMS conformance suite against AWS KMS as emulated by `moto`, which
//! the test installs and starts itself. Built only with `--features aws-kms`.

#![cfg(feature = "aws-kms")]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[path = "kms_conformance/suite.rs"]
mod suite;

#[path = "common/moto.rs"]
mod moto;
#[path = "common/python.rs"]
mod python;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use tessera::kms::aws::AwsKms;
use tessera::kms::{Kms, KmsError};

fn client(endpoint: &str) -> aws_sdk_kms::Client {
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(moto::REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

struct Aws {
    moto: moto::Moto,
}

#[async_trait::async_trait]
impl suite::Factory for Aws {
    async fn make(&self) -> Box<dyn Kms> {
        // Each call: a new customer master key, so two instances differ.
        let client = client(&self.moto.endpoint);
        let key = client.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_owned();
        Box::new(AwsKms::with_client(client, &key_id).await.unwrap())
    }
    fn production_grade(&self) -> bool {
        true
    }
    fn key_id_prefix(&self) -> &'static str {
        "aws-kms:arn:aws:kms:"
    }
    fn rotates_master_key(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_conforms_on_moto() {
    let aws = Aws {
        moto: moto::Moto::start(),
    };
    suite::run_all(&aws).await;

    // An unknown or disabled key is refused at start.
    let c = client(&aws.moto.endpoint);
    assert!(matches!(
        AwsKms::with_client(c.clone(), "alias/absent").await,
        Err(KmsError::Refused(_))
    ));
    let key = c.create_key().send().await.unwrap();
    let id = key.key_metadata().unwrap().key_id().to_owned();
    c.disable_key().key_id(&id).send().await.unwrap();
    assert!(matches!(
        AwsKms::with_client(c, &id).await,
        Err(KmsError::Refused(_))
    ));
}
