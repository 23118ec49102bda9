//! The gRPC face of the vault: authenticate, authorize, convert, call
//! `vault`, convert back. The only module that sees `tonic` and `prost`
//! types besides `server` and `proto`.
//!
//! Logging: handlers record the RPC, principal, tenant and outcome, never a
//! request or response body (`skip_all`).

pub mod audit_log;
pub mod audited;
pub mod convert;
pub mod key_admin;
pub mod status;

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::access::api_key::{self, ApiKeyRegistry};
use crate::access::limits::{Anomaly, Guard, LimitsConfig};
use crate::access::{self, AccessError};
use crate::domain::{Principal, Role};
use crate::proto::v1;
use crate::proto::v1::tokenizer_server::Tokenizer;
use crate::vault::{TokenizeCommand, Vault};
use audited::{CallContext, audit_refusal, audited};
use tonic_types::StatusExt;

/// Turns request metadata into a principal, enforcing lockouts and rate
/// limits on the way.
#[derive(Debug)]
pub struct Authenticator {
    keys: ApiKeyRegistry,
    guard: Guard,
}

/// The bearer key in `authorization`, if the header is well formed.
fn bearer_key(metadata: &MetadataMap) -> Result<&str, AccessError> {
    let header = metadata
        .get("authorization")
        .ok_or(AccessError::MissingCredentials)?
        .to_str()
        .map_err(|_| AccessError::InvalidCredentials)?;
    let (scheme, key) = header
        .split_once(' ')
        .ok_or(AccessError::InvalidCredentials)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AccessError::InvalidCredentials);
    }
    Ok(key.trim())
}

impl Authenticator {
    /// Authenticates against `keys` with the default limits.
    pub fn new(keys: ApiKeyRegistry) -> Self {
        Self::with_limits(keys, LimitsConfig::default())
    }

    /// Authenticates against `keys` with `limits`.
    pub fn with_limits(keys: ApiKeyRegistry, limits: LimitsConfig) -> Self {
        Self {
            keys,
            guard: Guard::new(limits),
        }
    }

    /// The lockout, rate-limit and anomaly state.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The principal named by `authorization: Bearer <key>` (no limits).
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, AccessError> {
        let key = bearer_key(metadata)?;
        self.keys
            .authenticate(key)
            .cloned()
            .ok_or(AccessError::InvalidCredentials)
    }

    /// Authenticates, applies lockouts, checks `role` and takes one call
    /// from the principal's `rpc` rate limit, recording who called in the
    /// current span. Failures are logged without the credentials.
    pub fn authorize(
        &self,
        metadata: &MetadataMap,
        role: Role,
        rpc: &str,
    ) -> Result<Principal, Status> {
        let span = tracing::Span::current();
        let key_id = bearer_key(metadata)
            .ok()
            .and_then(api_key::key_id)
            .map(str::to_owned);
        if key_id
            .as_deref()
            .is_some_and(|id| self.guard.key_locked(id))
        {
            tracing::warn!(
                outcome = "locked",
                "credentials locked after repeated failures"
            );
            return Err(Status::unauthenticated(
                "these credentials are locked after repeated failures",
            ));
        }
        let principal = match self.authenticate(metadata) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(outcome = "unauthenticated", "authentication failed");
                if let Some(id) = &key_id
                    && self.guard.auth_failed(id)
                {
                    tracing::error!(alert = "lockout", key_id = %id, "API key id locked after repeated failures");
                    metrics::counter!("tessera_lockouts_total").increment(1);
                }
                return Err(status::from_access(e));
            }
        };
        if let Some(id) = &key_id {
            self.guard.auth_succeeded(id);
        }
        span.record("principal", principal.name.as_str());
        span.record("tenant", principal.tenant.as_str());
        if self.guard.principal_locked(&principal.name) {
            tracing::warn!(
                outcome = "locked",
                "principal locked for suspicious activity"
            );
            return Err(Status::unauthenticated(
                "this principal is locked for suspicious activity",
            ));
        }
        access::require(&principal, role).map_err(|e| {
            tracing::warn!(outcome = "permission_denied", "role missing");
            status::from_access(e)
        })?;
        if let Err(wait) = self.guard.take(&principal.name, rpc) {
            tracing::warn!(outcome = "rate_limited", "rate limit reached");
            metrics::counter!("tessera_rate_limited_total", "rpc" => rpc.to_owned()).increment(1);
            return Err(Status::with_error_details(
                tonic::Code::ResourceExhausted,
                "rate limit reached; retry later",
                tonic_types::ErrorDetails::with_retry_info(Some(wait)),
            ));
        }
        Ok(principal)
    }
}

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

    /// Refuses while sealed, then authenticates and checks `role`. Every
    /// refusal is audited (best effort: a refusal must not wait on the log).
    async fn authorize<T>(
        &self,
        call: &CallContext,
        request: &Request<T>,
        role: Role,
    ) -> Result<Principal, Status> {
        // A sealed vault answers nothing else, whoever asks.
        let result = if self.vault.is_sealed() {
            Err(Status::unavailable("the vault is sealed"))
        } else {
            self.auth.authorize(request.metadata(), role, call.rpc)
        };
        if let Err(status) = &result {
            audit_refusal(&self.vault, &self.auth, call, request.metadata(), status).await;
        }
        result
    }

    async fn tokenize_one(
        &self,
        principal: &Principal,
        req: v1::TokenizeRequest,
    ) -> Result<v1::TokenizeResponse, Status> {
        let cmd = TokenizeCommand::try_from(req)?;
        self.vault
            .tokenize(&principal.tenant, cmd)
            .await
            .map(Into::into)
            .map_err(|e| status::from_vault(&e))
    }

    async fn detokenize_one(
        &self,
        principal: &Principal,
        req: &v1::DetokenizeRequest,
    ) -> Result<v1::DetokenizeResponse, Status> {
        let token = convert::token(&req.token)?;
        let pan = self
            .vault
            .detokenize(&principal.tenant, &token)
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
    outcomes: Vec<Result<O, Status>>,
) -> Vec<Result<O, crate::proto::google::rpc::Status>> {
    let failed = outcomes.iter().filter(|r| r.is_err()).count();
    tracing::info!(outcome = "ok", failed);
    outcomes
        .into_iter()
        .map(|r| r.map_err(|s| status::to_rpc_status(&s)))
        .collect()
}

pub(crate) fn log_outcome<T>(result: &Result<T, Status>) {
    match result {
        Ok(_) => tracing::info!(outcome = "ok"),
        Err(s) => tracing::info!(outcome = ?s.code()),
    }
}

#[tonic::async_trait]
impl Tokenizer for TokenizerService {
    #[instrument(skip_all, name = "Tokenize", fields(principal, tenant))]
    async fn tokenize(
        &self,
        request: Request<v1::TokenizeRequest>,
    ) -> Result<Response<v1::TokenizeResponse>, Status> {
        let call = CallContext::of("Tokenize", &request);
        let principal = self.authorize(&call, &request, Role::Tokenize).await?;
        let result = self.tokenize_one(&principal, request.into_inner()).await;
        log_outcome(&result);
        let resource = match &result {
            Ok(r) => match crate::domain::Token::parse(&r.token) {
                Ok(token) => self.vault.token_ref(&principal.tenant, &token).await,
                Err(_) => String::new(),
            },
            Err(_) => String::new(),
        };
        let fail_closed = self.vault.policy().audit_tokenize_fail_closed;
        audited(
            &self.vault,
            &call,
            Some(&principal),
            resource,
            result,
            fail_closed,
        )
        .await
        .map(Response::new)
    }

    #[instrument(skip_all, name = "TokenizeBatch", fields(principal, tenant, items))]
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
            let mut outcomes = Vec::with_capacity(total);
            for item in items {
                outcomes.push(self.tokenize_one(&principal, item).await);
            }
            Ok(per_item_statuses(outcomes))
        }
        .await;
        let resource = batch_resource(total, &result);
        let fail_closed = self.vault.policy().audit_tokenize_fail_closed;
        let results = audited(
            &self.vault,
            &call,
            Some(&principal),
            resource,
            result,
            fail_closed,
        )
        .await?
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

    #[instrument(skip_all, name = "Detokenize", fields(principal, tenant))]
    async fn detokenize(
        &self,
        request: Request<v1::DetokenizeRequest>,
    ) -> Result<Response<v1::DetokenizeResponse>, Status> {
        let call = CallContext::of("Detokenize", &request);
        let principal = self.authorize(&call, &request, Role::Detokenize).await?;
        let resource = self.resource_of(&principal, &request.get_ref().token).await;
        let result = self.detokenize_one(&principal, request.get_ref()).await;
        log_outcome(&result);
        self.watch_not_found(&call, &principal, usize::from(is_not_found(&result)))
            .await;
        // Audit before the PAN leaves: no event, no PAN (SECURITY.md §1.5).
        audited(&self.vault, &call, Some(&principal), resource, result, true)
            .await
            .map(Response::new)
    }

    #[instrument(skip_all, name = "DetokenizeBatch", fields(principal, tenant, items))]
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
            let mut outcomes = Vec::with_capacity(total);
            for item in &items {
                outcomes.push(self.detokenize_one(&principal, item).await);
            }
            let not_found = outcomes.iter().filter(|r| is_not_found(r)).count();
            self.watch_not_found(&call, &principal, not_found).await;
            Ok(per_item_statuses(outcomes))
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

    #[instrument(skip_all, name = "GetTokenInfo", fields(principal, tenant))]
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
        log_outcome(&result);
        self.watch_not_found(&call, &principal, usize::from(is_not_found(&result)))
            .await;
        audited(&self.vault, &call, Some(&principal), resource, result, true)
            .await
            .map(Response::new)
    }

    #[instrument(skip_all, name = "DeleteToken", fields(principal, tenant))]
    async fn delete_token(
        &self,
        request: Request<v1::DeleteTokenRequest>,
    ) -> Result<Response<()>, Status> {
        let call = CallContext::of("DeleteToken", &request);
        let principal = self.authorize(&call, &request, Role::Delete).await?;
        let resource = self.resource_of(&principal, &request.get_ref().token).await;
        let result = async {
            let token = convert::token(&request.get_ref().token)?;
            self.vault
                .delete(&principal.tenant, &token)
                .await
                .map_err(|e| status::from_vault(&e))
        }
        .await;
        log_outcome(&result);
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
            let Some(Anomaly::TokenEnumeration { locked }) =
                self.auth.guard().not_found(&principal.name)
            else {
                continue;
            };
            tracing::error!(alert = "token_enumeration", principal = %principal.name, locked, "many NOT_FOUND answers: possible token enumeration");
            metrics::counter!("tessera_anomalies_total", "kind" => "token_enumeration")
                .increment(1);
            let mut event = call.event(
                Some(principal),
                "anomaly:token_enumeration".to_owned(),
                if locked { "LOCKED" } else { "ALERT" },
            );
            event.action = "Anomaly".to_owned();
            if let Err(e) = self.vault.record_audit(event).await {
                tracing::error!(error = %e, alert = "audit_write_failed", "could not audit an anomaly");
            }
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
