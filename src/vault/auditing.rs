//! The vault's side of auditing: signing with the audit key while unsealed,
//! naming tokens by keyed id, reading and verifying the log.

use crate::audit::chain::ChainedEvent;
use crate::audit::verify::VerifyReport;
use crate::audit::{AuditError, AuditEvent};
use crate::domain::{TenantId, Token};
use crate::keyring::KeyringError;
use crate::pipeline::{Submission, WriteError};
use crate::store::{StoreError, WriteUnit};
use crate::telemetry::names;
use crate::vault::{Vault, VaultError};

impl Vault {
    /// Appends an audit event (durable on return). While unsealed the new
    /// chain head is signed; while sealed the event is chained only, and
    /// the next signed append covers it.
    pub async fn record_audit(&self, event: AuditEvent) -> Result<u64, VaultError> {
        let positions = self
            .commit_write(WriteUnit::default(), Some(event))
            .await
            .map_err(|e| match e {
                WriteError::Audit(e) => VaultError::Audit(e),
                WriteError::Refused(e) | WriteError::Store(e) => {
                    VaultError::Audit(AuditError::Store(e))
                }
                other => VaultError::Audit(AuditError::Store(StoreError::Unavailable(
                    other.to_string(),
                ))),
            })?;
        positions
            .first()
            .copied()
            .ok_or(VaultError::Store(StoreError::Damaged(
                "event not positioned",
            )))
    }

    /// Commits `unit` with `event` (stamped with the vault's clock) in one
    /// write through the pipeline, then copies the event to the second
    /// sinks. Returns the event's position.
    pub(crate) async fn commit_write(
        &self,
        unit: WriteUnit,
        event: Option<AuditEvent>,
    ) -> Result<Vec<u64>, WriteError> {
        let mut events = Vec::new();
        let mut signer = None;
        if let Some(mut event) = event {
            event.time_ms = self.clock.now_ms();
            if !self.is_sealed() {
                // Without the audit key the event cannot be signed: an
                // audit failure (fail-open tokenize may go on without it).
                signer = Some(self.keys.audit_key().await.map_err(|e| match e {
                    KeyringError::Audit(e) => WriteError::Audit(e),
                    other => WriteError::Audit(AuditError::Store(StoreError::Unavailable(
                        other.to_string(),
                    ))),
                })?);
            }
            events.push(event);
        }
        let copies = (!self.sinks.is_empty()).then(|| events.clone());
        let positions = self
            .pipeline
            .submit(Submission {
                unit,
                events,
                signer,
                new_signer: false,
            })
            .await
            .inspect_err(|e| {
                // Refused as tampered, or latched: the cached audit key is
                // read again next time (another replica may have recovered
                // with a new root, or the root may be gone).
                if matches!(e, WriteError::Audit(_)) {
                    self.keys.forget_audit_key();
                }
            })?;
        for (position, event) in positions.iter().zip(copies.iter().flatten()) {
            for sink in &self.sinks {
                if let Err(e) = sink.send(*position, event) {
                    tracing::error!(error = %e, alert = "audit_sink_failed", "second audit sink failed; the event is in the primary log");
                    metrics::counter!(names::AUDIT_SINK_FAILURES).increment(1);
                }
            }
        }
        Ok(positions)
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
        let (key, root) = self.keys.audit_key_for_recovery().await?;
        self.keys.forget_audit_key();
        Ok(match root {
            Some(root) => {
                // Say so: events before it can no longer be checked
                // against any stored key.
                event.resource = format!("new_audit_key {}", event.resource)
                    .trim_end()
                    .to_owned();
                self.audit.recover_with_root(event, key, root).await?
            }
            None => self.audit.recover(event, key).await?,
        })
    }

    /// Verifies the audit chain; the head signature too while unsealed.
    /// Never makes the audit key: a signed head whose key's root is gone is
    /// reported as tampering.
    pub async fn verify_audit(&self) -> Result<VerifyReport, VaultError> {
        let key = if self.is_sealed() {
            None
        } else {
            self.keys.stored_audit_key().await?
        };
        let mut report = self.audit.verify(key.as_deref()).await?;
        if !self.is_sealed()
            && key.is_none()
            && report.ok()
            && self.store.audit_head().await?.is_some()
        {
            report.first_bad = Some(report.events);
            report.problem =
                "the log has a signed head, but the audit key that signed it is gone (deleted)"
                    .into();
        }
        Ok(report)
    }
}
