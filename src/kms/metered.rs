//! A [`Kms`] that times every call to the one it wraps: latency and
//! failures by operation, and whether the backend was last reachable.
//! The server wraps whichever backend the configuration names, so the
//! backends themselves stay free of metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{KeyContext, KeyId, Kms, KmsError, UnsealProgress, WrappedKey};
use crate::secret::DataKey;
use crate::telemetry::names;

/// See the module documentation.
#[derive(Debug)]
pub struct MeteredKms {
    inner: Arc<dyn Kms>,
}

impl MeteredKms {
    /// Times calls to `inner`.
    pub fn new(inner: Arc<dyn Kms>) -> Self {
        Self { inner }
    }
}

/// The `kind` label of a failure: its class, never its message.
fn kind(error: &KmsError) -> &'static str {
    match error {
        KmsError::Unavailable(_) | KmsError::Io(_) => "unavailable",
        KmsError::Sealed => "sealed",
        KmsError::Unwrap => "unwrap",
        KmsError::Refused(_) | KmsError::ShareRefused(_) => "refused",
        KmsError::Rng(_) => "other",
    }
}

async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, KmsError>>,
) -> Result<T, KmsError> {
    let started = Instant::now();
    let result = call.await;
    metrics::histogram!(names::KMS_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => metrics::gauge!(names::KMS_UP).set(1.0),
        Err(e) => {
            metrics::counter!(names::KMS_ERRORS, "op" => op, "kind" => kind(e)).increment(1);
            // Only an unreachable backend is down; a refused unwrap or a
            // sealed vault is an answer.
            if matches!(e, KmsError::Unavailable(_) | KmsError::Io(_)) {
                metrics::gauge!(names::KMS_UP).set(0.0);
            } else {
                metrics::gauge!(names::KMS_UP).set(1.0);
            }
        }
    }
    result
}

#[async_trait]
impl Kms for MeteredKms {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<(DataKey, WrappedKey), KmsError> {
        timed("generate_data_key", self.inner.generate_data_key(ctx)).await
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &KeyContext,
    ) -> Result<DataKey, KmsError> {
        timed("unwrap_data_key", self.inner.unwrap_data_key(wrapped, ctx)).await
    }

    async fn wrap_data_key(&self, key: &DataKey, ctx: &KeyContext) -> Result<WrappedKey, KmsError> {
        timed("wrap_data_key", self.inner.wrap_data_key(key, ctx)).await
    }

    async fn rotate_master_key(&self) -> Result<KeyId, KmsError> {
        timed("rotate_master_key", self.inner.rotate_master_key()).await
    }

    fn master_key_id(&self) -> Option<KeyId> {
        self.inner.master_key_id()
    }

    fn master_key_version(&self) -> Option<u32> {
        self.inner.master_key_version()
    }

    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn is_production_grade(&self) -> bool {
        self.inner.is_production_grade()
    }

    fn unseal_progress(&self) -> Option<UnsealProgress> {
        self.inner.unseal_progress()
    }

    async fn submit_share(&self, holder: &str, share: &[u8]) -> Result<UnsealProgress, KmsError> {
        timed("submit_share", self.inner.submit_share(holder, share)).await
    }

    fn seal(&self) {
        self.inner.seal();
    }
}
