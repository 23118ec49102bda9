//! The gRPC face of the vault: authenticate, authorize, convert, call
//! `vault`, convert back. The only module that sees `tonic` and `prost`
//! types besides `server` and `proto`.
//!
//! Logging: handlers record the RPC, principal, tenant and outcome, never a
//! request or response body (`skip_all`).

pub mod audit_log;
pub mod audited;
pub mod authenticator;
pub mod convert;
pub mod key_admin;
pub mod principals;
pub mod status;

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::domain::{Principal, Role};
use crate::proto::v1;
use crate::proto::v1::tokenizer_server::Tokenizer;
use crate::telemetry::{self, names};
use crate::vault::{TokenizeCommand, Tokenized, Vault, VaultError};
use audited::{
    CallContext, WhenSealed, audited, authorize_call, intend, raise_anomaly, record_intent,
};
pub use authenticator::{Authenticator, Credentials};

/// Implements `tessera.v1.Tokenizer`.
#[derive(Debug, Clone)]
pub struct TokenizerService {
    vault: Arc<Vault>,
    auth: Arc<Authenticator>,
}

impl TokenizerService {
    /// A service over a vault and an authenticator.
    pub fn new(vault: Arc<Vault>, auth: Arc<Authenticator>) -> Self {
        Self { vault, auth }
    }

    /// Refuses while sealed, then authenticates and checks `role`.
    async fn authorize<T>(
        &self,
        call: &CallContext,
        request: &Request<T>,
        role: Role,
    ) -> Result<Principal, Status> {
        authorize_call(
            &self.vault,
            &self.auth,
            call,
            request,
            &[role],
            WhenSealed::Refuse,
        )
        .await
    }

    async fn detokenize_one(
        &self,
        call: &CallContext,
        principal: &Principal,
        req: &v1::DetokenizeRequest,
    ) -> Result<v1::DetokenizeResponse, Status> {
        let token = convert::token(&req.token)?;
        let consume_intent = || async {
            let resource = self.vault.token_ref(&principal.tenant, &token).await;
            record_intent(&self.vault, call, principal, &format!("{resource} consume")).await
        };
        let pan = self
            .vault
            .detokenize_with(&principal.tenant, &token, consume_intent)
            .await
            .map_err(|e| status::from_vault(&e))?;
        let ascii = pan.expose_ascii();
        let text = String::from_utf8_lossy(&ascii).into_owned();
        Ok(v1::DetokenizeResponse { pan: text })
    }
}

impl TokenizerService {
    /// Records the batch size and refuses empty or oversized batches.
    fn check_batch(&self, len: usize) -> Result<(), Status> {
        tracing::Span::current().record("items", len);
        self.vault
            .check_batch_len(len)
            .map_err(|e| status::from_vault(&e))
    }
}

/// Turns each item's failure into its own `google.rpc.Status`: one bad item
/// never fails the batch.
fn per_item_statuses<O>(
    call: &CallContext,
    principal: &Principal,
    outcomes: Vec<Result<O, Status>>,
) -> Vec<Result<O, crate::proto::google::rpc::Status>> {
    let failed = outcomes.iter().filter(|r| r.is_err()).count();
    if failed == 0 {
        tracing::debug!(rpc = call.rpc, outcome = "ok", failed);
    } else {
        tracing::info!(
            rpc = call.rpc,
            principal = %principal.name,
            tenant = %principal.tenant,
            items = outcomes.len(),
            failed,
            "batch items failed"
        );
    }
    outcomes
        .into_iter()
        .map(|r| r.map_err(|s| status::to_rpc_status(&s)))
        .collect()
}

/// Logs a data-plane call's outcome. Success is DEBUG, like the call's
/// span: a line per call at INFO cost about a fifth of the server's CPU
/// under load (BENCHMARKS.md, "Where the time goes"), and the audit log
/// already records every call durably. A failure stays INFO and names the
/// RPC, principal and tenant itself, since the span is off at INFO.
fn log_data_outcome<T>(call: &CallContext, principal: &Principal, result: &Result<T, Status>) {
    match result {
        Ok(_) => tracing::debug!(rpc = call.rpc, outcome = "ok"),
        Err(s) => tracing::info!(
            rpc = call.rpc,
            principal = %principal.name,
            tenant = %principal.tenant,
            outcome = ?s.code()
        ),
    }
}

/// Logs an administrative call's outcome.
pub(crate) fn log_outcome<T>(result: &Result<T, Status>) {
    match result {
        Ok(_) => tracing::info!(outcome = "ok"),
        Err(s) => tracing::info!(outcome = ?s.code()),
    }
}

#[tonic::async_trait]
impl Tokenizer for TokenizerService {
    #[instrument(
        level = "debug",
        skip_all,
        name = "Tokenize",
        fields(principal, tenant)
    )]
    async fn tokenize(
        &self,
        request: Request<v1::TokenizeRequest>,
    ) -> Result<Response<v1::TokenizeResponse>, Status> {
        let call = CallContext::of("Tokenize", &request);
        let principal = self.authorize(&call, &request, Role::Tokenize).await?;
        // The event commits with the record, in the same flush; only a call
        // that failed before writing records its event afterwards.
        let event = call.event(Some(&principal), String::new(), "OK");
        let result = async {
            let cmd = TokenizeCommand::try_from(request.into_inner())?;
            self.vault
                .tokenize_audited(&principal.tenant, cmd, event)
                .await
                .map(v1::TokenizeResponse::from)
                .map_err(|e| status::from_vault(&e))
        }
        .await;
        log_data_outcome(&call, &principal, &result);
        match result {
            Ok(response) => Ok(Response::new(response)),
            Err(status) => {
                let fail_closed = self.vault.policy().audit_tokenize_fail_closed;
                audited(
                    &self.vault,
                    &call,
                    Some(&principal),
                    String::new(),
                    Err(status),
                    fail_closed,
                )
                .await
            }
        }
    }

    #[instrument(
        level = "debug",
        skip_all,
        name = "TokenizeBatch",
        fields(principal, tenant, items)
    )]
    async fn tokenize_batch(
        &self,
        request: Request<v1::TokenizeBatchRequest>,
    ) -> Result<Response<v1::TokenizeBatchResponse>, Status> {
        let call = CallContext::of("TokenizeBatch", &request);
        let principal = self.authorize(&call, &request, Role::Tokenize).await?;
        let items = request.into_inner().items;
        let total = items.len();
        let result = async {
            self.check_batch(total)?;
            metrics::histogram!(names::BATCH_ITEMS, "rpc" => call.rpc)
                .record(telemetry::count(total));
            // The gate took one call; the rest of the items pay too.
            self.auth
                .charge(&principal, call.rpc, total.saturating_sub(1))?;
            // Items that do not parse are answered here; the rest go to the
            // vault as one commit with one event.
            let mut commands = Vec::with_capacity(total);
            let mut parsed = Vec::with_capacity(total);
            for item in items {
                match TokenizeCommand::try_from(item) {
                    Ok(cmd) => {
                        commands.push(cmd);
                        parsed.push(Ok(()));
                    }
                    Err(status) => parsed.push(Err(status)),
                }
            }
            let unparsed = parsed.iter().filter(|p| p.is_err()).count();
            let event = call.event(Some(&principal), String::new(), "OK");
            let resource = |outcomes: &[Result<Tokenized, VaultError>]| {
                batch_event_resource(total, unparsed, outcomes)
            };
            let mut tokenized = self
                .vault
                .tokenize_batch(&principal.tenant, commands, event, resource)
                .await
                .map_err(|e| status::from_vault(&e))?
                .into_iter();
            let outcomes: Vec<Result<v1::TokenizeResponse, Status>> = parsed
                .into_iter()
                .map(|p| match p {
                    Ok(()) => match tokenized.next() {
                        Some(r) => r.map(Into::into).map_err(|e| status::from_vault(&e)),
                        None => Err(Status::internal("batch outcome missing")),
                    },
                    Err(status) => Err(status),
                })
                .collect();
            Ok(per_item_statuses(&call, &principal, outcomes))
        }
        .await;
        let results = match result {
            Ok(results) => results,
            Err(status) => {
                let resource = format!("items={total}");
                let fail_closed = self.vault.policy().audit_tokenize_fail_closed;
                return audited(
                    &self.vault,
                    &call,
                    Some(&principal),
                    resource,
                    Err(status),
                    fail_closed,
                )
                .await;
            }
        };
        let results = results
            .into_iter()
            .map(|r| v1::TokenizeResult {
                result: Some(match r {
                    Ok(token) => v1::tokenize_result::Result::Token(token),
                    Err(e) => v1::tokenize_result::Result::Error(e),
                }),
            })
            .collect();
        Ok(Response::new(v1::TokenizeBatchResponse { results }))
    }

    #[instrument(
        level = "debug",
        skip_all,
        name = "Detokenize",
        fields(principal, tenant)
    )]
    async fn detokenize(
        &self,
        request: Request<v1::DetokenizeRequest>,
    ) -> Result<Response<v1::DetokenizeResponse>, Status> {
        let call = CallContext::of("Detokenize", &request);
        let principal = self.authorize(&call, &request, Role::Detokenize).await?;
        let resource = self.resource_of(&principal, &request.get_ref().token).await;
        let result = self
            .detokenize_one(&call, &principal, request.get_ref())
            .await;
        log_data_outcome(&call, &principal, &result);
        self.watch_not_found(&call, &principal, usize::from(is_not_found(&result)))
            .await;
        self.watch_volume(&call, &principal, usize::from(result.is_ok()))
            .await;
        // Audit before the PAN leaves: no event, no PAN (SECURITY.md §1.5).
        audited(&self.vault, &call, Some(&principal), resource, result, true)
            .await
            .map(Response::new)
    }

    #[instrument(
        level = "debug",
        skip_all,
        name = "DetokenizeBatch",
        fields(principal, tenant, items)
    )]
    async fn detokenize_batch(
        &self,
        request: Request<v1::DetokenizeBatchRequest>,
    ) -> Result<Response<v1::DetokenizeBatchResponse>, Status> {
        let call = CallContext::of("DetokenizeBatch", &request);
        let principal = self.authorize(&call, &request, Role::Detokenize).await?;
        let items = request.into_inner().items;
        let total = items.len();
        let result = async {
            self.check_batch(total)?;
            metrics::histogram!(names::BATCH_ITEMS, "rpc" => call.rpc)
                .record(telemetry::count(total));
            self.auth
                .charge(&principal, call.rpc, total.saturating_sub(1))?;
            let mut outcomes = Vec::with_capacity(total);
            for item in &items {
                outcomes.push(self.detokenize_one(&call, &principal, item).await);
            }
            let not_found = outcomes.iter().filter(|r| is_not_found(r)).count();
            self.watch_not_found(&call, &principal, not_found).await;
            let revealed = outcomes.iter().filter(|r| r.is_ok()).count();
            self.watch_volume(&call, &principal, revealed).await;
            Ok(per_item_statuses(&call, &principal, outcomes))
        }
        .await;
        let resource = batch_resource(total, &result);
        let results = audited(&self.vault, &call, Some(&principal), resource, result, true)
            .await?
            .into_iter()
            .map(|r| v1::DetokenizeResult {
                result: Some(match r {
                    Ok(pan) => v1::detokenize_result::Result::Pan(pan),
                    Err(e) => v1::detokenize_result::Result::Error(e),
                }),
            })
            .collect();
        Ok(Response::new(v1::DetokenizeBatchResponse { results }))
    }

    #[instrument(
        level = "debug",
        skip_all,
        name = "GetTokenInfo",
        fields(principal, tenant)
    )]
    async fn get_token_info(
        &self,
        request: Request<v1::GetTokenInfoRequest>,
    ) -> Result<Response<v1::TokenInfo>, Status> {
        let call = CallContext::of("GetTokenInfo", &request);
        let principal = self.authorize(&call, &request, Role::ReadInfo).await?;
        let resource = self.resource_of(&principal, &request.get_ref().token).await;
        let result = async {
            let token = convert::token(&request.get_ref().token)?;
            self.vault
                .token_info(&principal.tenant, &token)
                .await
                .map(Into::into)
                .map_err(|e| status::from_vault(&e))
        }
        .await;
        log_data_outcome(&call, &principal, &result);
        self.watch_not_found(&call, &principal, usize::from(is_not_found(&result)))
            .await;
        audited(&self.vault, &call, Some(&principal), resource, result, true)
            .await
            .map(Response::new)
    }

    #[instrument(
        level = "debug",
        skip_all,
        name = "DeleteToken",
        fields(principal, tenant)
    )]
    async fn delete_token(
        &self,
        request: Request<v1::DeleteTokenRequest>,
    ) -> Result<Response<()>, Status> {
        let call = CallContext::of("DeleteToken", &request);
        let principal = self.authorize(&call, &request, Role::Delete).await?;
        let resource = self.resource_of(&principal, &request.get_ref().token).await;
        let result = async {
            let token = convert::token(&request.get_ref().token)?;
            intend(&self.vault, &call, &principal, &resource).await?;
            self.vault
                .delete(&principal.tenant, &token)
                .await
                .map_err(|e| status::from_vault(&e))
        }
        .await;
        log_data_outcome(&call, &principal, &result);
        self.watch_not_found(&call, &principal, usize::from(is_not_found(&result)))
            .await;
        audited(&self.vault, &call, Some(&principal), resource, result, true)
            .await
            .map(Response::new)
    }
}

impl TokenizerService {
    /// Counts NOT_FOUND answers to the principal; crossing the enumeration
    /// threshold raises an alert: a log line, a metric, an audit event, and
    /// (per config) a lock on the principal.
    async fn watch_not_found(&self, call: &CallContext, principal: &Principal, not_found: usize) {
        for _ in 0..not_found {
            if let Some(anomaly) = self.auth.guard().not_found(&principal.name) {
                raise_anomaly(&self.vault, call, principal, anomaly).await;
            }
        }
    }

    /// Counts PANs handed out; a volume far above the principal's baseline
    /// raises an alert (and, per config, locks the principal).
    async fn watch_volume(&self, call: &CallContext, principal: &Principal, detokenized: usize) {
        let n = u64::try_from(detokenized).unwrap_or(u64::MAX);
        if let Some(anomaly) = self.auth.guard().detokenized(&principal.name, n) {
            raise_anomaly(&self.vault, call, principal, anomaly).await;
        }
    }

    /// The audit resource for a token field: its keyed id, or `token:invalid`.
    async fn resource_of(&self, principal: &Principal, token: &str) -> String {
        match crate::domain::Token::parse(token) {
            Ok(token) => self.vault.token_ref(&principal.tenant, &token).await,
            Err(_) => "token:invalid".to_owned(),
        }
    }
}

fn is_not_found<T>(result: &Result<T, Status>) -> bool {
    matches!(result, Err(s) if s.code() == tonic::Code::NotFound)
}

/// The audit resource of a tokenize batch: how many items, how many failed,
/// and the keyed ids of the tokens it returned (never a PAN or a token).
fn batch_event_resource(
    total: usize,
    unparsed: usize,
    outcomes: &[Result<Tokenized, VaultError>],
) -> String {
    let failed = unparsed + outcomes.iter().filter(|r| r.is_err()).count();
    let mut resource = format!("items={total} failed={failed} tokens=");
    for (i, done) in outcomes.iter().flatten().enumerate() {
        if i > 0 {
            resource.push(',');
        }
        resource.push_str(&done.token_id.short());
    }
    resource
}

/// The audit resource of a batch: how many items, how many failed.
fn batch_resource<O, E>(total: usize, result: &Result<Vec<Result<O, E>>, Status>) -> String {
    match result {
        Ok(items) => format!(
            "items={total} failed={}",
            items.iter().filter(|r| r.is_err()).count()
        ),
        Err(_) => format!("items={total}"),
    }
}
