//! `tessera.v1.Audit`: list and verify the audit log. Needs the `audit`
//! role; every read is itself audited (PCI DSS 10.2.1.3). `Recover`, the
//! explicit way to continue after a failed verification, is the operators'.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::audit::chain::ChainedEvent;
use crate::domain::{Principal, Role};
use crate::proto::v1;
use crate::proto::v1::audit_server::Audit;
use crate::service::audited::{CallContext, WhenSealed, audited, authorize_call};
use crate::service::{Authenticator, status};
use crate::telemetry::names;
use crate::vault::Vault;

/// Events read from the store per page while streaming.
const PAGE: usize = 500;

/// Most bytes of events in one `ListEvents` message: far below gRPC's
/// default 4 MiB message limit, whatever the log holds.
const MESSAGE_BYTES: usize = 1 << 20;

/// Longest field a listed event shows. Fields are bounded when written
/// now, but a log may hold events written before they were (a 2.5 MB
/// principal name once made `tessera audit list` fail); those are cut,
/// saying by how much. The stored event, and so verification, is intact.
const FIELD_BYTES: usize = 4096;

/// Longest resource a listed event shows: a batch's event names the keyed
/// ids of its tokens (17 bytes each, at most 10,000 items a batch).
const RESOURCE_BYTES: usize = 192 * 1024;

fn clip(field: String) -> String {
    clip_to(field, FIELD_BYTES)
}

fn clip_to(mut field: String, limit: usize) -> String {
    if field.len() <= limit {
        return field;
    }
    let mut end = limit;
    while !field.is_char_boundary(end) {
        end -= 1;
    }
    let cut = field.len() - end;
    field.truncate(end);
    field.push_str(&format!("…[{cut} bytes cut]"));
    field
}

/// Splits events into messages of at most [`MESSAGE_BYTES`] each (one
/// event per message at least).
fn messages(events: Vec<v1::AuditEvent>) -> Vec<v1::ListEventsResponse> {
    use prost::Message;
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for event in events {
        let size = event.encoded_len() + 8;
        if !current.is_empty() && bytes + size > MESSAGE_BYTES {
            out.push(v1::ListEventsResponse {
                events: std::mem::take(&mut current),
            });
            bytes = 0;
        }
        bytes += size;
        current.push(event);
    }
    if !current.is_empty() {
        out.push(v1::ListEventsResponse { events: current });
    }
    out
}

/// Implements `tessera.v1.Audit`.
#[derive(Debug, Clone)]
pub struct AuditService {
    vault: Arc<Vault>,
    auth: Arc<Authenticator>,
}

impl AuditService {
    /// A service over a vault and an authenticator.
    pub fn new(vault: Arc<Vault>, auth: Arc<Authenticator>) -> Self {
        Self { vault, auth }
    }

    async fn auditor<T>(
        &self,
        call: &CallContext,
        request: &Request<T>,
    ) -> Result<Principal, Status> {
        authorize_call(
            &self.vault,
            &self.auth,
            call,
            request,
            &[Role::Audit],
            WhenSealed::Refuse,
        )
        .await
    }
}

fn millis(t: &prost_types::Timestamp) -> u64 {
    let seconds = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u64::try_from(t.nanos).unwrap_or(0);
    seconds
        .saturating_mul(1000)
        .saturating_add(nanos / 1_000_000)
}

/// A filter built from a request; scoping always applies: a tenant's
/// auditors see their tenant's events, the system scope's see every event
/// (including the unattributed ones: refusals before authentication name
/// peer networks, which are no tenant's business).
struct Filter {
    tenant: String,
    system: bool,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    principal: String,
    action: String,
}

impl Filter {
    fn matches(&self, e: &ChainedEvent) -> bool {
        let ev = &e.event;
        (self.system || ev.tenant == self.tenant)
            && self.start_ms.is_none_or(|s| ev.time_ms >= s)
            && self.end_ms.is_none_or(|end| ev.time_ms < end)
            && (self.principal.is_empty() || ev.principal == self.principal)
            && (self.action.is_empty() || ev.action == self.action)
    }
}

fn to_message(e: ChainedEvent) -> v1::AuditEvent {
    let ev = e.event;
    v1::AuditEvent {
        position: e.seq,
        time: Some(prost_types::Timestamp {
            seconds: i64::try_from(ev.time_ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((ev.time_ms % 1000) * 1_000_000).unwrap_or(0),
        }),
        request_id: clip(ev.request_id),
        principal: clip(ev.principal),
        tenant: clip(ev.tenant),
        action: clip(ev.action),
        resource: clip_to(ev.resource, RESOURCE_BYTES),
        outcome: clip(ev.outcome),
        origin: clip(ev.origin),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::ListEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditService {
    type ListEventsStream = EventStream;

    #[instrument(skip_all, name = "ListEvents", fields(principal, tenant))]
    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<Self::ListEventsStream>, Status> {
        let call = CallContext::of("ListEvents", &request);
        let principal = self.auditor(&call, &request).await?;
        let req = request.into_inner();
        let filter = Filter {
            tenant: principal.tenant.as_str().to_owned(),
            system: principal.is_system(),
            start_ms: req.start_time.as_ref().map(millis),
            end_ms: req.end_time.as_ref().map(millis),
            principal: req.principal,
            action: req.action,
        };
        // Record the read. Reading must work on a damaged log (that is when
        // it matters most), so this one event is best effort.
        audited(
            &self.vault,
            &call,
            Some(&principal),
            format!("tenant:{}", principal.tenant),
            Ok(()),
            false,
        )
        .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let vault = Arc::clone(&self.vault);
        tokio::spawn(async move {
            let mut from = 0u64;
            loop {
                let page = match vault.audit_events(from, PAGE).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(status::from_vault(&e))).await;
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                from = last.seq + 1;
                let events: Vec<_> = page
                    .into_iter()
                    .filter(|e| filter.matches(e))
                    .map(to_message)
                    .collect();
                for message in messages(events) {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[instrument(skip_all, name = "Verify", fields(principal, tenant))]
    async fn verify(
        &self,
        request: Request<v1::VerifyRequest>,
    ) -> Result<Response<v1::VerifyResponse>, Status> {
        let call = CallContext::of("Verify", &request);
        let principal = self.auditor(&call, &request).await?;
        let result = self
            .vault
            .verify_audit()
            .await
            .map(|r| v1::VerifyResponse {
                intact: r.ok(),
                events: r.events,
                first_bad_position: r.first_bad,
                problem: r.problem,
                head_signature_checked: r.head_checked,
                signed_through: r.signed_through,
                recovered_at: r.recovered_at,
            })
            .map_err(|e| status::from_vault(&e));
        // A broken chain is the answer, not a failure; and verifying must work
        // on a damaged log, so its own event is best effort.
        audited(
            &self.vault,
            &call,
            Some(&principal),
            "audit-log".to_owned(),
            result,
            false,
        )
        .await
        .map(Response::new)
    }

    #[instrument(skip_all, name = "Recover", fields(principal, tenant))]
    async fn recover(
        &self,
        request: Request<v1::RecoverRequest>,
    ) -> Result<Response<v1::RecoverResponse>, Status> {
        let call = CallContext::of("Recover", &request);
        let principal = authorize_call(
            &self.vault,
            &self.auth,
            &call,
            &request,
            &[Role::Operator],
            WhenSealed::Refuse,
        )
        .await?;
        let reason = request.get_ref().reason.trim();
        if reason.is_empty()
            || reason.len() > 200
            || reason.chars().any(char::is_control)
            || crate::leak::contains_card_number(reason)
        {
            let refused = Err(status::invalid_argument(
                "reason",
                "must be 1 to 200 printable characters, never a card number",
            ));
            return crate::service::audited::finish_admin(
                &self.vault,
                &call,
                &principal,
                "audit-log".to_owned(),
                refused,
            )
            .await;
        }
        let event = call.event(Some(&principal), format!("reason:{reason}"), "OK");
        match self.vault.recover_audit(event).await {
            Ok((position, report)) => {
                tracing::warn!(
                    alert = "audit_recovered",
                    position,
                    problem = %report.problem,
                    "audit log recovered by an operator"
                );
                metrics::counter!(names::AUDIT_RECOVERIES).increment(1);
                Ok(Response::new(v1::RecoverResponse {
                    position,
                    found: report.problem,
                }))
            }
            Err(crate::vault::VaultError::Audit(crate::audit::AuditError::NothingToRecover)) => {
                let refused = Err(Status::failed_precondition(
                    "the audit log verifies; there is nothing to recover",
                ));
                crate::service::audited::finish_admin(
                    &self.vault,
                    &call,
                    &principal,
                    "audit-log".to_owned(),
                    refused,
                )
                .await
            }
            Err(e) => Err(status::from_vault(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(resource: String) -> v1::AuditEvent {
        v1::AuditEvent {
            resource,
            ..Default::default()
        }
    }

    /// Requirement 4 (finding 8): a log holding a 2.5 MB field made every
    /// `ListEvents` page too large to send.
    #[test]
    fn pages_are_bounded_in_bytes_and_long_fields_are_cut() {
        let huge = clip("4".repeat(2_500_000));
        assert!(huge.len() < FIELD_BYTES + 32, "{}", huge.len());
        assert!(huge.ends_with("bytes cut]"));
        assert_eq!(clip("short".into()), "short");
        assert!(
            clip("é".repeat(3000)).ends_with("bytes cut]"),
            "cut on a char boundary"
        );

        let events: Vec<_> = (0..2000).map(|_| event("r".repeat(FIELD_BYTES))).collect();
        let pages = messages(events);
        assert!(pages.len() > 1);
        for page in &pages {
            assert!(prost::Message::encoded_len(page) <= MESSAGE_BYTES + FIELD_BYTES);
        }
        assert_eq!(pages.iter().map(|p| p.events.len()).sum::<usize>(), 2000);
    }
}
