//! AWS KMS (cargo feature `aws-kms`): `GenerateDataKey` and `Decrypt` under a
//! customer master key that never leaves AWS.
//!
//! The [`KeyContext`] travels as the KMS *encryption context*
//! (`tessera:tenant`, `tessera:purpose`, `tessera:version`), which AWS binds
//! into the ciphertext as additional authenticated data and records in
//! CloudTrail: a data key moved to another tenant, purpose or version does
//! not decrypt (PCI DSS 3.7.7). Tested against the `moto` KMS emulator.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::SdkError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use zeroize::Zeroizing;

use crate::kms::{AwsKmsConfig, KeyContext, KeyId, KeyPurpose, Kms, KmsError, WrappedKey};
use crate::secret::DataKey;

/// The AWS KMS backend.
pub struct AwsKms {
    client: Client,
    key_id: String,
    id: KeyId,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms")
            .field("key_id", &self.id)
            .finish_non_exhaustive()
    }
}

fn encryption_context(ctx: &KeyContext) -> HashMap<String, String> {
    let purpose = match ctx.purpose {
        KeyPurpose::Data => "data",
        KeyPurpose::Index => "index",
    };
    HashMap::from([
        ("tessera:tenant".to_owned(), ctx.tenant.as_str().to_owned()),
        ("tessera:purpose".to_owned(), purpose.to_owned()),
        ("tessera:version".to_owned(), ctx.version.to_string()),
    ])
}

/// Sorts SDK errors: a refused ciphertext is the opaque unwrap failure;
/// anything else (network, throttling, a disabled key) may pass.
fn classify<E, R>(e: &SdkError<E, R>, refused: impl Fn(&E) -> bool) -> KmsError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(service) if refused(service.err()) => KmsError::Unwrap,
        other => KmsError::Unavailable(format!(
            "AWS KMS: {}",
            aws_sdk_kms::error::DisplayErrorContext(other)
        )),
    }
}

impl AwsKms {
    /// Connects with the standard AWS credential chain and checks the key
    /// exists and is enabled.
    pub async fn connect(config: &AwsKmsConfig) -> Result<Self, KmsError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let client = Client::new(&loader.load().await);
        Self::with_client(client, &config.key_id).await
    }

    /// Uses a ready client (custom credentials or HTTP settings).
    pub async fn with_client(client: Client, key_id: &str) -> Result<Self, KmsError> {
        let described = client
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| {
                KmsError::Refused(format!(
                    "AWS KMS key {key_id:?}: {}",
                    aws_sdk_kms::error::DisplayErrorContext(&e)
                ))
            })?;
        let metadata = described
            .key_metadata()
            .ok_or_else(|| KmsError::Refused("AWS KMS returned no key metadata".into()))?;
        if !metadata.enabled() {
            return Err(KmsError::Refused(format!(
                "AWS KMS key {key_id:?} is disabled"
            )));
        }
        let arn = metadata.arn().unwrap_or(key_id).to_owned();
        let id = KeyId::new(format!("aws-kms:{arn}"))
            .ok_or_else(|| KmsError::Refused("empty key id".into()))?;
        Ok(Self {
            client,
            key_id: arn,
            id,
        })
    }
}

#[async_trait]
impl Kms for AwsKms {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<(DataKey, WrappedKey), KmsError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(encryption_context(ctx)))
            .send()
            .await
            .map_err(|e| classify(&e, |_| false))?;
        let plaintext = out
            .plaintext
            .map(|b| Zeroizing::new(b.into_inner()))
            .ok_or_else(|| KmsError::Unavailable("AWS KMS returned no plaintext".into()))?;
        let key = DataKey::from_slice(&plaintext).ok_or(KmsError::Unwrap)?;
        let wrapped = out
            .ciphertext_blob
            .and_then(|b| WrappedKey::new(b.into_inner()))
            .ok_or_else(|| KmsError::Unavailable("AWS KMS returned no ciphertext".into()))?;
        Ok((key, wrapped))
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &KeyContext,
    ) -> Result<DataKey, KmsError> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(wrapped.as_bytes()))
            .set_encryption_context(Some(encryption_context(ctx)))
            .send()
            .await
            .map_err(|e| {
                classify(&e, |err| {
                    err.is_invalid_ciphertext_exception() || err.is_incorrect_key_exception()
                })
            })?;
        let plaintext = out
            .plaintext
            .map(|b| Zeroizing::new(b.into_inner()))
            .ok_or(KmsError::Unwrap)?;
        DataKey::from_slice(&plaintext).ok_or(KmsError::Unwrap)
    }

    async fn wrap_data_key(&self, key: &DataKey, ctx: &KeyContext) -> Result<WrappedKey, KmsError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(key.expose_secret().to_vec()))
            .set_encryption_context(Some(encryption_context(ctx)))
            .send()
            .await
            .map_err(|e| classify(&e, |_| false))?;
        out.ciphertext_blob
            .and_then(|b| WrappedKey::new(b.into_inner()))
            .ok_or_else(|| KmsError::Unavailable("AWS KMS returned no ciphertext".into()))
    }

    /// AWS rotates key material inside the customer master key (automatic
    /// or on-demand rotation, configured in AWS) and keeps every earlier
    /// version for `Decrypt`, so there is nothing for Tessera to rewrap.
    async fn rotate_master_key(&self) -> Result<KeyId, KmsError> {
        Err(KmsError::Refused(
            "rotate the AWS KMS key in AWS (automatic or on-demand rotation); \
             its ciphertexts stay decryptable, so Tessera has nothing to rewrap"
                .into(),
        ))
    }

    fn master_key_id(&self) -> Option<KeyId> {
        Some(self.id.clone())
    }

    fn backend_name(&self) -> &'static str {
        "aws-kms"
    }

    fn is_production_grade(&self) -> bool {
        true
    }
}
