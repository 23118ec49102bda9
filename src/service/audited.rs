//! Turning calls into audit events: who, what, from where, with which
//! outcome, under which request id. Fail closed where the policy says so.

use tonic::{Request, Status};

use std::time::Instant;

use crate::access::refusals::{Summary, Tally, Verdict};
use crate::audit::AuditEvent;
use crate::domain::{Principal, Role};
use crate::service::{Authenticator, Credentials, status};
use crate::telemetry::names;
use crate::telemetry::request_id;
use crate::vault::{Vault, VaultError};

/// The facts of one call that every audit event carries.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The RPC name, e.g. `Detokenize`.
    pub rpc: &'static str,
    /// The caller's `x-request-id` when well formed, else a random one.
    pub request_id: String,
    /// The peer address.
    pub origin: String,
    /// The tenant an operator's call acts on, when not its own: its events
    /// are then filed under that tenant, so the tenant's auditors see what
    /// was done to it.
    pub affected_tenant: Option<String>,
}

impl CallContext {
    /// Reads the request id and peer of `request`.
    pub fn of<T>(rpc: &'static str, request: &Request<T>) -> Self {
        // The RPC layer has already replaced an unacceptable id; this
        // checks again for services called without it (tests, embedders).
        let request_id = request_id::choose(
            request
                .metadata()
                .get(request_id::HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let origin = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        Self {
            rpc,
            request_id,
            origin,
            affected_tenant: None,
        }
    }

    /// The event for this call.
    pub fn event(
        &self,
        principal: Option<&Principal>,
        resource: String,
        outcome: &str,
    ) -> AuditEvent {
        AuditEvent {
            time_ms: 0,
            request_id: self.request_id.clone(),
            principal: principal.map(|p| p.name.clone()).unwrap_or_default(),
            tenant: self.affected_tenant.clone().unwrap_or_else(|| {
                principal
                    .map(|p| p.tenant.as_str().to_owned())
                    .unwrap_or_default()
            }),
            action: self.rpc.to_owned(),
            resource,
            outcome: outcome.to_owned(),
            origin: self.origin.clone(),
        }
    }
}

/// `OK` or the status code's name.
pub fn outcome<T>(result: &Result<T, Status>) -> String {
    match result {
        Ok(_) => "OK".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    }
}

/// Records the call's event, then returns `result`. When the event cannot
/// be written and `fail_closed`, the caller gets UNAVAILABLE instead (the
/// PAN or the admin action's answer is withheld).
pub async fn audited<T>(
    vault: &Vault,
    call: &CallContext,
    principal: Option<&Principal>,
    resource: String,
    result: Result<T, Status>,
    fail_closed: bool,
) -> Result<T, Status> {
    let event = call.event(principal, resource, &outcome(&result));
    match vault.record_audit(event).await {
        Ok(_) => result,
        Err(e) if fail_closed => Err(status::from_vault(&e)),
        Err(e) => {
            tracing::error!(error = %e, alert = "audit_write_failed", "audit event lost (fail-open policy)");
            result
        }
    }
}

/// Write-ahead auditing (SECURITY.md §5.3): makes the intent of a state
/// change durable *before* the change, as an `INTENT` event; the call's
/// usual event after it is the outcome. When the intent cannot be written
/// the call must stop there, so nothing changes without a record.
pub async fn record_intent(
    vault: &Vault,
    call: &CallContext,
    principal: &Principal,
    resource: &str,
) -> Result<(), VaultError> {
    let event = call.event(Some(principal), resource.to_owned(), "INTENT");
    vault.record_audit(event).await.map(|_| ())
}

/// [`record_intent`] for a handler: UNAVAILABLE (with the audit alert)
/// when the intent is lost.
pub async fn intend(
    vault: &Vault,
    call: &CallContext,
    principal: &Principal,
    resource: &str,
) -> Result<(), Status> {
    record_intent(vault, call, principal, resource)
        .await
        .map_err(|e| status::from_vault(&e))
}

/// Whether an audit failure is the log refusing appends because it was
/// found tampered (its head missing, truncated or rewritten).
pub fn is_tampered(e: &VaultError) -> bool {
    matches!(e, VaultError::Audit(crate::audit::AuditError::Tampered))
}

/// How the steps of an unseal are audited. Fail closed like every admin
/// action, with one exception: a log that refuses appends because it was
/// found tampered. Its only way out, `Audit.Recover`, needs the vault
/// unsealed (the recovery is signed), so refusing the unseal would keep
/// the vault down for good; the unseal then proceeds, with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsealAudit {
    /// An ordinary admin action: fail closed.
    Strict,
    /// Part of reopening the vault: proceed past a tampered log.
    Unseal,
}

impl UnsealAudit {
    fn excuses(self, e: &VaultError) -> bool {
        if self == Self::Unseal && is_tampered(e) {
            tracing::error!(
                alert = "audit_tampered",
                "the audit log refuses appends (found tampered); the unseal proceeds unaudited so an operator can run `tessera audit recover`"
            );
            metrics::counter!(names::AUDIT_FAILURES).increment(1);
            true
        } else {
            false
        }
    }
}

/// [`intend`], excused for an unseal past a tampered log ([`UnsealAudit`]).
pub async fn intend_as(
    vault: &Vault,
    call: &CallContext,
    principal: &Principal,
    resource: &str,
    mode: UnsealAudit,
) -> Result<(), Status> {
    match record_intent(vault, call, principal, resource).await {
        Err(e) if !mode.excuses(&e) => Err(status::from_vault(&e)),
        _ => Ok(()),
    }
}

/// [`finish_admin`], excused for an unseal past a tampered log.
pub async fn finish_as<T>(
    vault: &Vault,
    call: &CallContext,
    principal: &Principal,
    resource: String,
    result: Result<T, Status>,
    mode: UnsealAudit,
) -> Result<tonic::Response<T>, Status> {
    crate::service::log_outcome(&result);
    let event = call.event(Some(principal), resource, &outcome(&result));
    match vault.record_audit(event).await {
        Err(e) if !mode.excuses(&e) => Err(status::from_vault(&e)),
        _ => result.map(tonic::Response::new),
    }
}

/// Audits a refused call (bad credentials, missing role, sealed, locked,
/// rate limited), naming the principal when the credentials do (`who`,
/// unless the refusal came before authentication). Aggregated per peer
/// network, principal, RPC and code ([`crate::access::refusals`]): the first
/// of a window is an event at once, the rest one `RefusedCalls` event with
/// their count. Best effort: a refusal must not wait on, or fail because
/// of, the log.
pub async fn audit_refusal(
    vault: &Vault,
    auth: &Authenticator,
    call: &CallContext,
    who: Option<&Credentials<'_>>,
    peer: Option<std::net::IpAddr>,
    status: &Status,
) {
    let principal = who.and_then(|creds| auth.authenticate(creds).ok());
    let code = format!("{:?}", status.code());
    let tally = Tally {
        network: peer.map_or_else(|| "unknown".to_owned(), crate::access::limits::network_of),
        principal: principal
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        tenant: principal
            .as_ref()
            .map(|p| p.tenant.as_str().to_owned())
            .unwrap_or_default(),
        rpc: call.rpc,
        code: code.clone(),
    };
    let Verdict::Record { closed } = auth.refusals().refused(tally, Instant::now()) else {
        return;
    };
    if let Some(summary) = closed {
        record_refusal_summary(vault, &call.request_id, &summary).await;
    }
    let event = call.event(principal.as_ref(), String::new(), &code);
    if let Err(e) = vault.record_audit(event).await {
        tracing::error!(error = %e, alert = "audit_write_failed", "could not audit a refused call");
    }
}

/// Records one window's counted refusals as a `RefusedCalls` event.
pub async fn record_refusal_summary(vault: &Vault, request_id: &str, summary: &Summary) {
    let t = &summary.tally;
    let event = AuditEvent {
        time_ms: 0,
        request_id: request_id.to_owned(),
        principal: t.principal.clone(),
        tenant: t.tenant.clone(),
        action: "RefusedCalls".to_owned(),
        resource: format!(
            "rpc:{} count:{} window:{}s",
            t.rpc,
            summary.counted,
            summary.window.as_secs()
        ),
        outcome: t.code.clone(),
        origin: t.network.clone(),
    };
    if let Err(e) = vault.record_audit(event).await {
        tracing::error!(error = %e, alert = "audit_write_failed", "could not audit counted refusals");
    }
}

/// Records every closed window of counted refusals; the server calls this
/// periodically, so a flood's count is recorded even if it stops.
pub async fn flush_refusals(vault: &Vault, auth: &Authenticator) {
    for summary in auth.refusals().due(Instant::now()) {
        record_refusal_summary(vault, "refusals", &summary).await;
    }
}

/// Whether a call may run while the vault is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenSealed {
    /// Refuse with UNAVAILABLE before looking at credentials (every RPC
    /// but the two below).
    Refuse,
    /// Answer (GetStatus, Unseal).
    Serve,
}

/// The gate every RPC passes: sealed check, authentication, lockouts,
/// role, second factor and rate limit. Every refusal is audited (best
/// effort: a refusal must not wait on the log).
pub async fn authorize_call<T>(
    vault: &Vault,
    auth: &Authenticator,
    call: &CallContext,
    request: &Request<T>,
    roles: &[Role],
    when_sealed: WhenSealed,
) -> Result<Principal, Status> {
    let creds = Credentials::of(request);
    let peer = request.remote_addr().map(|a| a.ip());
    // A network that keeps failing authentication is refused before any
    // authentication work (SECURITY.md §5.6).
    let network_refused = peer.is_some_and(|ip| auth.guard().network_refused(ip));
    // A session may have been opened, closed or revoked on another replica:
    // read it from the store, but only next to credentials that name a
    // principal, so made-up sessions cost no database round trip.
    if let Some(session) = creds.session()
        && !network_refused
        && auth.authenticate(&creds).is_ok()
    {
        auth.sessions().load(session).await;
    }
    let mut result = if when_sealed == WhenSealed::Refuse && vault.is_sealed() {
        Err(Status::unavailable("the vault is sealed"))
    } else if network_refused {
        Err(Status::unauthenticated(
            "too many failed authentications from this network; retry later",
        ))
    } else {
        auth.authorize(&creds, roles, call.rpc)
    };
    // Only credentials that name no principal count against the network: a
    // wrong TOTP code or a locked principal behind a shared NAT must not
    // lock its neighbours out.
    if let (Err(status), Some(ip)) = (&result, peer)
        && status.code() == tonic::Code::Unauthenticated
        && !network_refused
        && auth.authenticate(&creds).is_err()
    {
        auth.guard().network_failed(ip);
    }
    if let (Ok(principal), Some(peer)) = (&result, request.remote_addr())
        && let Some(anomaly) = auth.guard().called_from(&principal.name, peer.ip())
    {
        raise_anomaly(vault, call, principal, anomaly).await;
        if anomaly.locked() {
            result = Err(Status::unauthenticated(
                "this principal is locked for suspicious activity",
            ));
        }
    }
    if let Err(status) = &result {
        let who = (!network_refused).then_some(&creds);
        audit_refusal(vault, auth, call, who, peer, status).await;
    }
    result
}

/// Raises an anomaly alert: an error log line, the
/// `tessera_anomalies_total{kind}` metric and an `Anomaly` audit event
/// (outcome LOCKED or ALERT). Best effort on the log: the alert must not
/// fail the call that caused it.
pub async fn raise_anomaly(
    vault: &Vault,
    call: &CallContext,
    principal: &Principal,
    anomaly: crate::access::anomaly::Anomaly,
) {
    let (kind, locked) = (anomaly.kind(), anomaly.locked());
    tracing::error!(alert = kind, principal = %principal.name, locked, origin = %call.origin, "anomaly");
    metrics::counter!(names::ANOMALIES, "kind" => kind).increment(1);
    let mut event = call.event(
        Some(principal),
        format!("anomaly:{kind}"),
        if locked { "LOCKED" } else { "ALERT" },
    );
    event.action = "Anomaly".to_owned();
    if let Err(e) = vault.record_audit(event).await {
        tracing::error!(error = %e, alert = "audit_write_failed", "could not audit an anomaly");
    }
}

/// Logs and audits an administrative call's outcome; refuses it when the
/// event is lost (fail closed).
pub async fn finish_admin<T>(
    vault: &Vault,
    call: &CallContext,
    principal: &Principal,
    resource: String,
    result: Result<T, Status>,
) -> Result<tonic::Response<T>, Status> {
    crate::service::log_outcome(&result);
    audited(vault, call, Some(principal), resource, result, true)
        .await
        .map(tonic::Response::new)
}
