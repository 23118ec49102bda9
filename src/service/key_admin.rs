//! `tessera.v1.KeyAdmin`: seal state and the key life cycle. Every call is
//! audited, and an action whose event cannot be written is refused (fail
//! closed).
//!
//! Two scopes (DESIGN.md §5, SECURITY.md §5.2):
//! - **vault-wide** (Seal, Unseal, RotateMasterKey, RecreateTenant,
//!   Compact): the system scope's `operator` role only; no tenant
//!   principal reaches them.
//! - **tenant** (RotateDataKey, Reencrypt, RetireDataKey, ShredTenant): the
//!   tenant's `admin`, on its own tenant only.
//!
//! GetStatus, ListApprovals and Approve serve both, each in its own scope;
//! these three and Seal and Unseal answer while sealed.
//!
//! Export (RequestExport, ExportBatch) is an operator's, on a tenant it
//! names, under dual control: a second operator approves the request, and
//! its id then serves the requester alone for a while
//! ([`crate::access::exports`]). Each batch is audited under the exported
//! tenant before any PAN leaves.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::access::approvals::{ApprovalError, Approvals, Approver, DualControlAction, Pending};
use crate::access::exports::{ExportError, Exports};
use crate::domain::{Principal, Role, TenantId};
use crate::proto::v1;
use crate::proto::v1::key_admin_server::KeyAdmin;
use crate::service::audited::{
    CallContext, UnsealAudit, WhenSealed, authorize_call, finish_admin, finish_as, intend,
    intend_as, is_tampered,
};
use crate::service::{Authenticator, log_outcome, status};
use crate::vault::Vault;
use crate::vault::admin::KeyState;
use crate::vault::compact::CompactProgress;
use crate::vault::reencrypt::ReencryptProgress;
use tonic_types::StatusExt;

/// Tenant key management: a tenant's admin, in its own tenant.
const TENANT_ADMIN: &[Role] = &[Role::Admin];
/// Vault-wide actions: the system scope's operators.
const OPERATOR: &[Role] = &[Role::Operator];
/// Either, each acting in its own scope.
const ADMIN_OR_OPERATOR: &[Role] = &[Role::Admin, Role::Operator];

/// Implements `tessera.v1.KeyAdmin`.
#[derive(Debug, Clone)]
pub struct KeyAdminService {
    vault: Arc<Vault>,
    auth: Arc<Authenticator>,
    approvals: Arc<Approvals>,
    exports: Arc<Exports>,
}

impl KeyAdminService {
    /// A service over a vault and an authenticator.
    pub fn new(
        vault: Arc<Vault>,
        auth: Arc<Authenticator>,
        approvals: Arc<Approvals>,
        exports: Arc<Exports>,
    ) -> Self {
        Self {
            vault,
            auth,
            approvals,
            exports,
        }
    }

    /// Files a dual-control request and answers FAILED_PRECONDITION with its
    /// id (in the message and as `ErrorInfo` metadata `approval_id`).
    async fn request_approval(
        &self,
        call: &CallContext,
        principal: &Principal,
        action: DualControlAction,
    ) -> Result<(), Status> {
        let mode = audit_mode(&action);
        // An export asked for as a seal lands (here or on another replica)
        // is withdrawn: filed after the seal's change, nothing else would
        // tell it from one asked for after the unseal.
        let withdrawn_if_sealed = matches!(action, DualControlAction::Export(_));
        let intent = format!("approval:new {} {}", action.name(), action.detail());
        intend_as(&self.vault, call, principal, intent.trim_end(), mode).await?;
        let pending = self
            .approvals
            .request(
                action,
                &principal.name,
                self.auth.principals().lineage(&principal.name),
                &principal.tenant,
                self.vault.now_ms(),
            )
            .await
            .map_err(|e| approval_status(&e))?;
        if withdrawn_if_sealed && let Err(e) = self.vault.last_seal_while_open().await {
            let refused = match (self.approvals.withdraw(&pending).await, &e) {
                (Err(withdrawal), crate::vault::VaultError::Sealed) => approval_status(&withdrawal),
                _ => status::from_vault(&e),
            };
            let resource = format!("approval:{} withdrawn", pending.id);
            return self
                .finish(call, principal, resource, Err::<(), _>(refused))
                .await
                .map(|_| ());
        }
        let event = call.event(
            Some(principal),
            format!("approval:{}", pending.id),
            "PENDING",
        );
        if let Err(e) = self.vault.record_audit(event).await
            && !(mode == UnsealAudit::Unseal && is_tampered(&e))
        {
            return Err(status::from_vault(&e));
        }
        let metadata =
            std::collections::HashMap::from([("approval_id".to_owned(), pending.id.clone())]);
        Err(Status::with_error_details(
            tonic::Code::FailedPrecondition,
            format!(
                "approval {} pending: a second admin must run `tessera keys approve {}` before it expires",
                pending.id, pending.id
            ),
            tonic_types::ErrorDetails::with_error_info("APPROVAL_PENDING", "tessera.v1", metadata),
        ))
    }

    /// Authenticates a caller holding one of `roles`; refuses while sealed
    /// unless `when_sealed` says the RPC answers then.
    async fn caller<T>(
        &self,
        call: &CallContext,
        request: &Request<T>,
        roles: &[Role],
        when_sealed: WhenSealed,
    ) -> Result<Principal, Status> {
        authorize_call(&self.vault, &self.auth, call, request, roles, when_sealed).await
    }

    /// Runs the action of `pending`, approved by `approver` when the vault
    /// was last sealed by store change `last_seal`. A request a seal makes
    /// stale runs only if filed after that seal.
    async fn run_approved(
        &self,
        pending: Pending,
        approver: &str,
        last_seal: u64,
    ) -> Result<String, Status> {
        if pending.action.dies_with_seal() && pending.filed_at_change <= last_seal {
            return Err(Status::not_found(
                "this request was filed before the vault's last seal; file it again",
            ));
        }
        let (id, requested_by) = (pending.id.as_str(), pending.requested_by.as_str());
        let vault_status = |e: crate::vault::VaultError| status::from_vault(&e);
        match pending.action {
            DualControlAction::Export(tenant) => {
                let until = self
                    .exports
                    .grant(
                        id,
                        &tenant,
                        requested_by,
                        approver,
                        pending.filed_at_change,
                        self.vault.now_ms(),
                    )
                    .await
                    .map_err(|e| export_status(&e))?;
                Ok(format!(
                    "export of tenant {tenant} granted to {requested_by} until {}: `tessera export --approval {id}`",
                    timestamp(until)
                ))
            }
            DualControlAction::RotateMasterKey => self
                .vault
                .rotate_master_key()
                .await
                .map(|(key, rewrapped)| format!("master key {key}; {rewrapped} keys rewrapped"))
                .map_err(vault_status),
            DualControlAction::ShredTenant(tenant) => self
                .vault
                .shred_tenant(&tenant)
                .await
                .map(|destroyed| format!("tenant {tenant}: {destroyed} keys destroyed"))
                .map_err(vault_status),
            // A seal made after `last_seal` still holds: the vault reopens
            // over the seals up to it only.
            DualControlAction::Unseal => self
                .vault
                .reopen(last_seal)
                .await
                .map(|()| "vault unsealed".to_owned())
                .map_err(vault_status),
            DualControlAction::AddPrincipal(mut entry) => {
                entry.created_at_ms = self.vault.now_ms();
                let name = entry.principal.name.clone();
                self.auth
                    .principals()
                    .insert(*entry)
                    .await
                    .map_err(|e| crate::service::principals::book_status(&e))?;
                tracing::info!(added = %name, "granted principal is live");
                Ok(format!("principal {name} is live"))
            }
        }
    }

    /// Audits an admin call's outcome; refuses it when the event is lost.
    async fn finish<T>(
        &self,
        call: &CallContext,
        principal: &Principal,
        resource: String,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        finish_admin(&self.vault, call, principal, resource, result).await
    }

    /// One token of an export: its PAN, or the status it alone would get.
    async fn export_one(
        &self,
        tenant: &TenantId,
        token: &str,
    ) -> Result<v1::DetokenizeResponse, Status> {
        let token = crate::service::convert::token(token)?;
        let pan = self
            .vault
            .export_pan(tenant, &token)
            .await
            .map_err(|e| status::from_vault(&e))?;
        let ascii = pan.expose_ascii();
        Ok(v1::DetokenizeResponse {
            pan: String::from_utf8_lossy(&ascii).into_owned(),
        })
    }
}

/// The tenant a request names: empty means the caller's own. Admins act on
/// their own tenant only; operators may name any tenant (for status only:
/// the tenant RPCs are not theirs).
fn target_tenant(principal: &Principal, requested: &str) -> Result<TenantId, Status> {
    if requested.is_empty() || requested == principal.tenant.as_str() {
        Ok(principal.tenant.clone())
    } else if principal.is_system() {
        TenantId::new(requested).map_err(|e| status::invalid_argument("tenant", &e.to_string()))
    } else {
        Err(Status::permission_denied(
            "admins act on their own tenant only",
        ))
    }
}

/// Maps a refused export.
fn export_status(e: &ExportError) -> Status {
    match e {
        ExportError::NotFound => Status::permission_denied(e.to_string()),
        ExportError::Unavailable(inner) if inner.is_retryable() => {
            Status::unavailable("export grants are unavailable; retry")
        }
        other => {
            tracing::error!(error = %other, "export grants unreadable");
            Status::internal("export grants are unreadable; see the server log")
        }
    }
}

/// How an action's audit events treat a tampered log.
fn audit_mode(action: &DualControlAction) -> UnsealAudit {
    match action {
        DualControlAction::Unseal => UnsealAudit::Unseal,
        _ => UnsealAudit::Strict,
    }
}

/// Maps a refused approval.
pub(crate) fn approval_status(e: &ApprovalError) -> Status {
    match e {
        ApprovalError::SameAdmin | ApprovalError::Ineligible(_) => {
            Status::permission_denied(e.to_string())
        }
        ApprovalError::TooMany => Status::resource_exhausted(e.to_string()),
        ApprovalError::NoRandomness => Status::unavailable(e.to_string()),
        ApprovalError::Unavailable {
            retryable: true, ..
        } => {
            tracing::warn!(error = %e, "pending approvals unavailable");
            Status::unavailable("pending approvals are unavailable; retry")
        }
        ApprovalError::RequesterRevoked => Status::failed_precondition(e.to_string()),
        ApprovalError::Unavailable { .. } => {
            tracing::error!(error = %e, "pending approvals unreadable");
            Status::internal("pending approvals are unreadable; see the server log")
        }
        _ => Status::not_found(e.to_string()),
    }
}

fn progress_message(p: ReencryptProgress) -> v1::ReencryptResponse {
    v1::ReencryptResponse {
        done: p.done,
        total: p.total,
        rewritten: p.rewritten,
        target_version: p.target_version,
        finished: p.finished,
        skipped_unreadable: p.skipped_unreadable,
    }
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

type ReencryptStream = Pin<Box<dyn Stream<Item = Result<v1::ReencryptResponse, Status>> + Send>>;

fn compact_message(p: CompactProgress) -> v1::CompactResponse {
    v1::CompactResponse {
        examined: p.examined,
        expired: p.expired,
        purged: p.purged,
        seal_versions_dropped: p.seal_versions_dropped,
        dead_in_grace: p.dead_in_grace,
        dead_by: Some(timestamp(p.dead_by_ms)),
        finished: p.finished,
        unopenable: p.unopenable,
    }
}

type CompactStream = Pin<Box<dyn Stream<Item = Result<v1::CompactResponse, Status>> + Send>>;

#[tonic::async_trait]
impl KeyAdmin for KeyAdminService {
    #[instrument(skip_all, name = "GetStatus", fields(principal, tenant))]
    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        let call = CallContext::of("GetStatus", &request);
        let principal = self
            .caller(&call, &request, ADMIN_OR_OPERATOR, WhenSealed::Serve)
            .await?;
        let result = async {
            let tenant = target_tenant(&principal, &request.get_ref().tenant)?;
            let s = self
                .vault
                .key_status(&tenant)
                .await
                .map_err(|e| status::from_vault(&e))?;
            // Refresh the key-age metrics too, so an operator's check is current.
            if let Err(e) = self.vault.publish_key_metrics().await {
                tracing::warn!(error = %e, "could not publish key metrics");
            }
            let unseal = s.unseal.unwrap_or(crate::kms::UnsealProgress {
                sealed: s.sealed,
                received: 0,
                threshold: 0,
            });
            Ok(v1::GetStatusResponse {
                sealed: s.sealed,
                kms_backend: s.kms_backend.to_owned(),
                master_key_id: s.master_key_id.unwrap_or_default(),
                unseal_shares_received: unseal.received,
                unseal_threshold: unseal.threshold,
                tenant: s.tenant.as_str().to_owned(),
                data_keys: s
                    .data_keys
                    .into_iter()
                    .map(|k| v1::DataKeyStatus {
                        version: k.version,
                        state: match k.state {
                            KeyState::Active => v1::KeyState::Active,
                            KeyState::DecryptOnly => v1::KeyState::DecryptOnly,
                            KeyState::Destroyed => v1::KeyState::Destroyed,
                        }
                        .into(),
                        created_at: k.created_at_ms.map(timestamp),
                        record_count: k.record_count,
                        overdue: k.overdue,
                        master_key_id: k.master_key_id,
                    })
                    .collect(),
                data_key_max_age_seconds: self.vault.policy().data_key_max_age.as_secs(),
                master_key_version: self.vault.master_key_version().unwrap_or(0),
            })
        }
        .await;
        let resource = format!("tenant:{}", principal.tenant);
        self.finish(&call, &principal, resource, result).await
    }

    #[instrument(skip_all, name = "Unseal", fields(principal, tenant))]
    async fn unseal(
        &self,
        request: Request<v1::UnsealRequest>,
    ) -> Result<Response<v1::UnsealResponse>, Status> {
        let call = CallContext::of("Unseal", &request);
        let principal = self
            .caller(&call, &request, OPERATOR, WhenSealed::Serve)
            .await?;
        // Shares are the authority on a share-based KMS; elsewhere reopening
        // a sealed vault takes a second operator (dual control).
        if !self.vault.unsealed_by_shares() && self.vault.is_sealed() {
            self.request_approval(&call, &principal, DualControlAction::Unseal)
                .await?;
            return Err(Status::internal("unreachable: approval requested"));
        }
        intend_as(&self.vault, &call, &principal, "vault", UnsealAudit::Unseal).await?;
        let result = self
            .vault
            .unseal(&principal.name, &request.get_ref().share)
            .await
            .map(|p| v1::UnsealResponse {
                sealed: p.sealed,
                shares_received: p.received,
                threshold: p.threshold,
            })
            .map_err(|e| status::from_vault(&e));
        finish_as(
            &self.vault,
            &call,
            &principal,
            "vault".to_owned(),
            result,
            UnsealAudit::Unseal,
        )
        .await
    }

    #[instrument(skip_all, name = "Seal", fields(principal, tenant))]
    async fn seal(
        &self,
        request: Request<v1::SealRequest>,
    ) -> Result<Response<v1::SealResponse>, Status> {
        // Sealing is the emergency brake: allowed even when already sealed,
        // and it happens before the audit write, which may not block it.
        let call = CallContext::of("Seal", &request);
        let principal = self
            .caller(&call, &request, OPERATOR, WhenSealed::Serve)
            .await?;
        // Without its signal in the store the seal holds on this replica
        // only, and nothing filed before it is told from what comes after:
        // the operator hears so, and a second Seal writes it.
        let signalled = self.vault.seal_everywhere().await;
        if let Err(e) = &signalled {
            tracing::error!(
                alert = "seal_not_shared",
                error = %e,
                "this replica is sealed, but the seal could not be recorded for the others: run Seal again"
            );
        }
        // Unseal and export requests filed before this seal, and exports
        // granted on them, must not act after it: a new seal needs a new
        // pair of operators. Approve and ExportBatch refuse them by the
        // seal's store change (`Vault::last_seal`) even when one races
        // this; here they are cleared from the store.
        let dropped = match self
            .approvals
            .drop_where(|p| p.action.dies_with_seal())
            .await
        {
            Ok(dropped) => dropped.to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "stale requests could not be cleared; they no longer act");
                "unknown".to_owned()
            }
        };
        let revoked = match self.exports.revoke_all().await {
            Ok(revoked) => revoked.to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "export grants could not be cleared; they no longer serve");
                "unknown".to_owned()
            }
        };
        tracing::warn!(%dropped, %revoked, "pending requests dropped and export grants revoked by the seal");
        let resource = format!("vault requests_dropped:{dropped} exports_revoked:{revoked}");
        let answer = match signalled {
            Ok(()) => Ok(Response::new(v1::SealResponse {})),
            Err(_) => Err(Status::unavailable(
                "this replica is sealed, but the seal could not be recorded in the store for the other replicas: run Seal again",
            )),
        };
        let outcome = crate::service::audited::outcome(&answer);
        let event = call.event(Some(&principal), resource, &outcome);
        if let Err(e) = self.vault.record_audit(event).await {
            tracing::error!(error = %e, alert = "audit_write_failed", "could not audit a seal");
        }
        answer
    }

    #[instrument(skip_all, name = "RotateDataKey", fields(principal, tenant))]
    async fn rotate_data_key(
        &self,
        request: Request<v1::RotateDataKeyRequest>,
    ) -> Result<Response<v1::RotateDataKeyResponse>, Status> {
        let call = CallContext::of("RotateDataKey", &request);
        let principal = self
            .caller(&call, &request, TENANT_ADMIN, WhenSealed::Refuse)
            .await?;
        let result = async {
            let tenant = target_tenant(&principal, &request.get_ref().tenant)?;
            intend(
                &self.vault,
                &call,
                &principal,
                &format!("tenant:{tenant} dek:new"),
            )
            .await?;
            let version = self
                .vault
                .rotate_data_key(&tenant)
                .await
                .map_err(|e| status::from_vault(&e))?;
            Ok(v1::RotateDataKeyResponse { version })
        }
        .await;
        let resource = match &result {
            Ok(r) => format!("tenant:{} dek:v{}", principal.tenant, r.version),
            Err(_) => format!("tenant:{}", principal.tenant),
        };
        self.finish(&call, &principal, resource, result).await
    }

    #[instrument(skip_all, name = "RotateMasterKey", fields(principal, tenant))]
    async fn rotate_master_key(
        &self,
        request: Request<v1::RotateMasterKeyRequest>,
    ) -> Result<Response<v1::RotateMasterKeyResponse>, Status> {
        let call = CallContext::of("RotateMasterKey", &request);
        let principal = self
            .caller(&call, &request, OPERATOR, WhenSealed::Refuse)
            .await?;
        // Dual control: this only files the request; Approve runs it.
        self.request_approval(&call, &principal, DualControlAction::RotateMasterKey)
            .await?;
        Err(Status::internal("unreachable: approval requested"))
    }

    type ReencryptStream = ReencryptStream;

    /// Runs the job in its own task, so a client that disconnects does not
    /// stop it; progress goes to the stream while anyone listens. The start
    /// is audited (fail closed); the job's end is logged.
    #[instrument(skip_all, name = "Reencrypt", fields(principal, tenant))]
    async fn reencrypt(
        &self,
        request: Request<v1::ReencryptRequest>,
    ) -> Result<Response<Self::ReencryptStream>, Status> {
        let call = CallContext::of("Reencrypt", &request);
        let principal = self
            .caller(&call, &request, TENANT_ADMIN, WhenSealed::Refuse)
            .await?;
        let tenant = target_tenant(&principal, &request.get_ref().tenant);
        let resource = format!("tenant:{}", principal.tenant);
        // The start's event is the write-ahead intent (fail closed); the
        // job's end is recorded as the outcome when it finishes.
        let tenant = self
            .finish(&call, &principal, resource.clone(), tenant)
            .await?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let vault = Arc::clone(&self.vault);
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let progress_tx = tx.clone();
                let result = vault
                    .reencrypt(&tenant, |p| {
                        if !p.finished {
                            // A slow listener misses intermediate updates, never the end.
                            let _ = progress_tx.try_send(Ok(progress_message(p)));
                        }
                    })
                    .await;
                let last = result
                    .map(progress_message)
                    .map_err(|e| status::from_vault(&e));
                log_outcome(&last);
                let mut end = call.event(
                    Some(&principal),
                    format!("{resource} job:end"),
                    &crate::service::audited::outcome(&last),
                );
                end.action = "ReencryptFinished".to_owned();
                if let Err(e) = vault.record_audit(end).await {
                    tracing::error!(error = %e, alert = "audit_write_failed", "could not audit the end of a re-encryption");
                }
                let _ = tx.send(last).await;
            },
            span,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[instrument(skip_all, name = "RetireDataKey", fields(principal, tenant))]
    async fn retire_data_key(
        &self,
        request: Request<v1::RetireDataKeyRequest>,
    ) -> Result<Response<v1::RetireDataKeyResponse>, Status> {
        let call = CallContext::of("RetireDataKey", &request);
        let principal = self
            .caller(&call, &request, TENANT_ADMIN, WhenSealed::Refuse)
            .await?;
        let version = request.get_ref().version;
        let result = async {
            let tenant = target_tenant(&principal, &request.get_ref().tenant)?;
            intend(
                &self.vault,
                &call,
                &principal,
                &format!("tenant:{tenant} dek:v{version}"),
            )
            .await?;
            self.vault
                .retire_data_key(&tenant, version)
                .await
                .map_err(|e| status::from_vault(&e))?;
            Ok(v1::RetireDataKeyResponse {})
        }
        .await;
        let resource = format!("tenant:{} dek:v{version}", principal.tenant);
        self.finish(&call, &principal, resource, result).await
    }

    #[instrument(skip_all, name = "ShredTenant", fields(principal, tenant))]
    async fn shred_tenant(
        &self,
        request: Request<v1::ShredTenantRequest>,
    ) -> Result<Response<v1::ShredTenantResponse>, Status> {
        let call = CallContext::of("ShredTenant", &request);
        let principal = self
            .caller(&call, &request, TENANT_ADMIN, WhenSealed::Refuse)
            .await?;
        let tenant = target_tenant(&principal, &request.get_ref().tenant)?;
        // Dual control: this only files the request; Approve runs it.
        self.request_approval(&call, &principal, DualControlAction::ShredTenant(tenant))
            .await?;
        Err(Status::internal("unreachable: approval requested"))
    }

    #[instrument(skip_all, name = "ListApprovals", fields(principal, tenant))]
    async fn list_approvals(
        &self,
        request: Request<v1::ListApprovalsRequest>,
    ) -> Result<Response<v1::ListApprovalsResponse>, Status> {
        let call = CallContext::of("ListApprovals", &request);
        let principal = self
            .caller(&call, &request, ADMIN_OR_OPERATOR, WhenSealed::Serve)
            .await?;
        let result = self
            .approvals
            .list(&principal.tenant, self.vault.now_ms())
            .await
            .map(|pending| v1::ListApprovalsResponse {
                approvals: pending
                    .into_iter()
                    .map(|p| v1::Approval {
                        action: p.action.name().to_owned(),
                        detail: p.action.detail(),
                        id: p.id,
                        requested_by: p.requested_by,
                        expires_at: Some(timestamp(p.expires_at_ms)),
                    })
                    .collect(),
            })
            .map_err(|e| approval_status(&e));
        self.finish(&call, &principal, "approvals".to_owned(), result)
            .await
    }

    #[instrument(skip_all, name = "Approve", fields(principal, tenant))]
    async fn approve(
        &self,
        request: Request<v1::ApproveRequest>,
    ) -> Result<Response<v1::ApproveResponse>, Status> {
        let call = CallContext::of("Approve", &request);
        let principal = self
            .caller(&call, &request, ADMIN_OR_OPERATOR, WhenSealed::Serve)
            .await?;
        let id = request.get_ref().id.clone();
        if !crate::access::approvals::is_well_formed_id(&id) {
            let refused = Err(status::invalid_argument(
                "id",
                "must be an approval id: 16 lowercase hex digits",
            ));
            return self
                .finish(
                    &call,
                    &principal,
                    "approval:<invalid id>".to_owned(),
                    refused,
                )
                .await;
        }
        let book = self.auth.principals();
        // The requester (or this approver) may have been revoked on another
        // replica: without the newest book no approval runs.
        if let Err(e) = book.refresh().await {
            tracing::warn!(error = %e, "principals could not be refreshed before an approval");
            let status = Status::unavailable("principals could not be read; retry the approval");
            return self
                .finish(&call, &principal, format!("approval:{id}"), Err(status))
                .await;
        }
        let summary = book.get(&principal.name);
        let lineage = book.lineage(&principal.name);
        let approver = Approver {
            name: &principal.name,
            tenant: &principal.tenant,
            // A principal missing from the book (revoked meanwhile) counts
            // as brand new, so it is never eligible.
            created_at_ms: summary.as_ref().map_or(u64::MAX, |s| s.created_at_ms),
            lineage: &lineage,
        };
        // Only an unseal may proceed past a tampered log (see UnsealAudit).
        let now_ms = self.vault.now_ms();
        let mode = match self.approvals.get(&id, &principal.tenant, now_ms).await {
            Ok(found) => found.map_or(UnsealAudit::Strict, |p| audit_mode(&p.action)),
            Err(e) => {
                return self
                    .finish(
                        &call,
                        &principal,
                        format!("approval:{id}"),
                        Err(approval_status(&e)),
                    )
                    .await;
            }
        };
        intend_as(
            &self.vault,
            &call,
            &principal,
            &format!("approval:{id}"),
            mode,
        )
        .await?;
        // The last seal, followed here if made on another replica: what is
        // runnable, and what it made stale, is judged against it.
        let last_seal = match self.vault.last_seal().await {
            Ok(change) => change,
            Err(e) => {
                let status = status::from_vault(&e);
                return self
                    .finish(&call, &principal, format!("approval:{id}"), Err(status))
                    .await;
            }
        };
        let sealed = self.vault.is_sealed();
        let approved = self
            .approvals
            .approve(
                &id,
                &approver,
                now_ms,
                |requester| book.get(requester).is_some_and(|s| !s.revoked),
                |action| !sealed || matches!(action, DualControlAction::Unseal),
            )
            .await;
        let pending = match approved {
            Ok(Some(p)) => p,
            Ok(None) => {
                let status = Status::unavailable(
                    "the vault is sealed; this approval stays pending until it is unsealed",
                );
                return self
                    .finish(&call, &principal, format!("approval:{id}"), Err(status))
                    .await;
            }
            Err(e) => {
                return self
                    .finish(
                        &call,
                        &principal,
                        format!("approval:{id}"),
                        Err(approval_status(&e)),
                    )
                    .await;
            }
        };
        let action = pending.action.name().to_owned();
        // What was approved, named in the event (an export's tenant).
        let detail = pending.action.detail();
        let requested_by = pending.requested_by.clone();
        let result = self
            .run_approved(pending, &principal.name, last_seal)
            .await
            .map(|result| v1::ApproveResponse {
                action: action.clone(),
                result,
            });
        if result.is_ok() && mode == UnsealAudit::Unseal {
            // The vault is open: other pending unseal requests are stale
            // (they lapse anyway when this fails).
            if let Err(e) = self
                .approvals
                .drop_where(|p| matches!(p.action, DualControlAction::Unseal))
                .await
            {
                tracing::warn!(error = %e, "stale unseal requests could not be dropped");
            }
        }
        let resource = if detail.is_empty() {
            format!("approval:{id} {action} requested_by:{requested_by}")
        } else {
            format!("approval:{id} {action} {detail} requested_by:{requested_by}")
        };
        finish_as(&self.vault, &call, &principal, resource, result, mode).await
    }

    #[instrument(skip_all, name = "RecreateTenant", fields(principal, tenant))]
    async fn recreate_tenant(
        &self,
        request: Request<v1::RecreateTenantRequest>,
    ) -> Result<Response<v1::RecreateTenantResponse>, Status> {
        let call = CallContext::of("RecreateTenant", &request);
        let principal = self
            .caller(&call, &request, OPERATOR, WhenSealed::Refuse)
            .await?;
        let named = TenantId::new(&request.get_ref().tenant)
            .map_err(|e| status::invalid_argument("tenant", &e.to_string()));
        let resource = match &named {
            Ok(tenant) => format!("tenant:{tenant}"),
            Err(_) => "tenant:<invalid>".to_owned(),
        };
        let result = async {
            let tenant = named?;
            intend(&self.vault, &call, &principal, &resource).await?;
            self.vault
                .recreate_tenant(&tenant)
                .await
                .map_err(|e| status::from_vault(&e))?;
            Ok(v1::RecreateTenantResponse {})
        }
        .await;
        self.finish(&call, &principal, resource, result).await
    }

    type CompactStream = CompactStream;

    /// Like Reencrypt: the start is audited (fail closed) and the job runs
    /// in its own task; each page that removes anything commits with its
    /// own audit event, and the end is recorded as the outcome.
    #[instrument(skip_all, name = "RequestExport", fields(principal, tenant))]
    async fn request_export(
        &self,
        request: Request<v1::RequestExportRequest>,
    ) -> Result<Response<v1::RequestExportResponse>, Status> {
        let mut call = CallContext::of("RequestExport", &request);
        let principal = self
            .caller(&call, &request, OPERATOR, WhenSealed::Refuse)
            .await?;
        let named = &request.get_ref().tenant;
        if named.is_empty() || named.as_str() == TenantId::SYSTEM_NAME {
            let refused = Err(status::invalid_argument(
                "tenant",
                "name the tenant whose PANs are exported",
            ));
            return self
                .finish(&call, &principal, "export".to_owned(), refused)
                .await;
        }
        let tenant = match target_tenant(&principal, named) {
            Ok(tenant) => tenant,
            // Refusals are audited like every admin call's outcome.
            Err(refused) => {
                return self
                    .finish(&call, &principal, "export".to_owned(), Err(refused))
                    .await;
            }
        };
        call.affected_tenant = Some(tenant.as_str().to_owned());
        // Dual control: this only files the request; Approve grants it.
        self.request_approval(&call, &principal, DualControlAction::Export(tenant))
            .await?;
        Err(Status::internal("unreachable: approval requested"))
    }

    #[instrument(skip_all, name = "ExportBatch", fields(principal, tenant, items))]
    async fn export_batch(
        &self,
        request: Request<v1::ExportBatchRequest>,
    ) -> Result<Response<v1::ExportBatchResponse>, Status> {
        let mut call = CallContext::of("ExportBatch", &request);
        let principal = self
            .caller(&call, &request, OPERATOR, WhenSealed::Refuse)
            .await?;
        let v1::ExportBatchRequest {
            approval_id,
            tokens,
        } = request.into_inner();
        if !crate::access::approvals::is_well_formed_id(&approval_id) {
            let refused = Err(status::invalid_argument(
                "approval_id",
                "must be an approval id: 16 lowercase hex digits",
            ));
            return self
                .finish(&call, &principal, "export:<invalid id>".to_owned(), refused)
                .await;
        }
        let checked = async {
            // A seal made on another replica counts at once, not at the
            // next poll: this replica follows it before any PAN leaves.
            let last_seal = self
                .vault
                .last_seal_while_open()
                .await
                .map_err(|e| status::from_vault(&e))?;
            self.exports
                .check(
                    &approval_id,
                    &principal.name,
                    self.vault.now_ms(),
                    last_seal,
                )
                .await
                .map_err(|e| export_status(&e))
        };
        let tenant = match checked.await {
            Ok(tenant) => tenant,
            Err(refused) => {
                let resource = format!("export:{approval_id}");
                return self.finish(&call, &principal, resource, Err(refused)).await;
            }
        };
        // Filed under the exported tenant: its auditors see every batch.
        call.affected_tenant = Some(tenant.as_str().to_owned());
        let total = tokens.len();
        let result = async {
            self.vault
                .check_batch_len(total)
                .map_err(|e| status::from_vault(&e))?;
            metrics::histogram!(crate::telemetry::names::BATCH_ITEMS, "rpc" => call.rpc)
                .record(crate::telemetry::count(total));
            // Each token pays the rate limit, as in DetokenizeBatch.
            self.auth
                .charge(&principal, call.rpc, total.saturating_sub(1))?;
            let mut outcomes = Vec::with_capacity(total);
            for token in &tokens {
                outcomes.push(self.export_one(&tenant, token).await);
            }
            // Guessing tokens through a grant is enumeration like any
            // other (review finding): NOT_FOUND answers count toward the
            // principal's alert and lock.
            let not_found = outcomes
                .iter()
                .filter(|r| r.as_ref().is_err_and(|s| s.code() == tonic::Code::NotFound))
                .count();
            for _ in 0..not_found {
                if let Some(anomaly) = self.auth.guard().not_found(&principal.name) {
                    crate::service::audited::raise_anomaly(&self.vault, &call, &principal, anomaly)
                        .await;
                }
            }
            Ok(outcomes)
        }
        .await;
        let exported = result
            .as_ref()
            .map_or(0, |o| o.iter().filter(|r| r.is_ok()).count());
        metrics::counter!(
            crate::telemetry::names::EXPORTED,
            "tenant" => tenant.as_str().to_owned(),
        )
        .increment(u64::try_from(exported).unwrap_or(u64::MAX));
        let resource =
            format!("export:{approval_id} tenant:{tenant} tokens:{total} exported:{exported}");
        // Fail closed: no PAN leaves unless this batch is in the log.
        let outcomes = finish_admin(&self.vault, &call, &principal, resource, result)
            .await?
            .into_inner();
        let results = outcomes
            .into_iter()
            .map(|r| v1::DetokenizeResult {
                result: Some(match r {
                    Ok(pan) => v1::detokenize_result::Result::Pan(pan),
                    Err(e) => v1::detokenize_result::Result::Error(status::to_rpc_status(&e)),
                }),
            })
            .collect();
        Ok(Response::new(v1::ExportBatchResponse { results }))
    }

    #[instrument(skip_all, name = "Compact", fields(principal, tenant))]
    async fn compact(
        &self,
        request: Request<v1::CompactRequest>,
    ) -> Result<Response<Self::CompactStream>, Status> {
        let call = CallContext::of("Compact", &request);
        let principal = self
            .caller(&call, &request, OPERATOR, WhenSealed::Refuse)
            .await?;
        let resource = "records".to_owned();
        self.finish(&call, &principal, resource.clone(), Ok(()))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let vault = Arc::clone(&self.vault);
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let progress_tx = tx.clone();
                let template = call.event(Some(&principal), resource.clone(), "OK");
                let result = vault
                    .compact(&template, |p| {
                        if !p.finished {
                            // A slow listener misses intermediate updates, never the end.
                            let _ = progress_tx.try_send(Ok(compact_message(p)));
                        }
                    })
                    .await;
                let last = result
                    .map(compact_message)
                    .map_err(|e| status::from_vault(&e));
                log_outcome(&last);
                let summary = match &last {
                    Ok(m) => format!(
                        "{resource} job:end examined:{} expired:{} purged:{} seal_versions_dropped:{} dead_in_grace:{} unopenable:{}",
                        m.examined,
                        m.expired,
                        m.purged,
                        m.seal_versions_dropped,
                        m.dead_in_grace,
                        m.unopenable
                    ),
                    Err(_) => format!("{resource} job:end"),
                };
                let mut end = call.event(
                    Some(&principal),
                    summary,
                    &crate::service::audited::outcome(&last),
                );
                end.action = "CompactFinished".to_owned();
                if let Err(e) = vault.record_audit(end).await {
                    tracing::error!(error = %e, alert = "audit_write_failed", "could not audit the end of a compaction");
                }
                let _ = tx.send(last).await;
            },
            span,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
