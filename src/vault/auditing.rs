//! The vault's side of auditing: signing with the audit key while unsealed,
//! naming tokens by keyed id, reading and verifying the log.

use crate::audit::AuditEvent;
use crate::audit::chain::ChainedEvent;
use crate::audit::verify::VerifyReport;
use crate::domain::{TenantId, Token};
use crate::vault::{Vault, VaultError};

impl Vault {
    /// Appends an audit event (durable on return). While unsealed the new
    /// chain head is signed; while sealed the event is chained only, and
    /// the next signed append covers it.
    pub async fn record_audit(&self, mut event: AuditEvent) -> Result<u64, VaultError> {
        event.time_ms = self.clock.now_ms();
        let key = if self.is_sealed() {
            None
        } else {
            Some(self.keys.audit_key().await?)
        };
        let copy = (!self.sinks.is_empty()).then(|| event.clone());
        let position = self.audit.record(event, key.as_deref()).await?;
        if let Some(event) = &copy {
            for sink in &self.sinks {
                if let Err(e) = sink.send(position, event) {
                    tracing::error!(error = %e, alert = "audit_sink_failed", "second audit sink failed; the event is in the primary log");
                    metrics::counter!("tessera_audit_sink_failures_total").increment(1);
                }
            }
        }
        Ok(position)
    }

    /// Now, by the vault's clock (milliseconds since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// How an audit event names a token: `token:` and the first 8 bytes of
    /// its keyed id, never the token itself.
    pub async fn token_ref(&self, tenant: &TenantId, token: &Token) -> String {
        match self.keys.tenant_keys(tenant, false).await {
            Ok(Some(keys)) => format!("token:{}", keys.token_id(token).short()),
            _ => "token:unknown".to_owned(),
        }
    }

    /// Audit events from position `from`, at most `limit`.
    pub async fn audit_events(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<ChainedEvent>, VaultError> {
        Ok(self.audit.events(from, limit).await?)
    }

    /// Continues a log that failed verification ([`AuditLog::recover`]):
    /// needs the vault unsealed, because the recovery is signed.
    ///
    /// [`AuditLog::recover`]: crate::audit::AuditLog::recover
    pub async fn recover_audit(
        &self,
        mut event: AuditEvent,
    ) -> Result<(u64, VerifyReport), VaultError> {
        self.ensure_unsealed()?;
        event.time_ms = self.clock.now_ms();
        let key = self.keys.audit_key().await?;
        Ok(self.audit.recover(event, &key).await?)
    }

    /// Verifies the audit chain; the head signature too while unsealed.
    pub async fn verify_audit(&self) -> Result<VerifyReport, VaultError> {
        let key = if self.is_sealed() {
            None
        } else {
            Some(self.keys.audit_key().await?)
        };
        Ok(self.audit.verify(key.as_deref()).await?)
    }
}
