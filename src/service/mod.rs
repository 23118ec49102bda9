//! The gRPC face of the vault: authenticate, authorize, convert, call
//! `vault`, convert back. The only module that sees `tonic` and `prost`
//! types besides `server` and `proto`.
//!
//! Logging: handlers record the RPC, principal, tenant and outcome, never a
//! request or response body (`skip_all`).

pub mod convert;
pub mod key_admin;
pub mod status;

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::access::api_key::ApiKeyRegistry;
use crate::access::{self, AccessError};
use crate::domain::{Principal, Role};
use crate::proto::v1;
use crate::proto::v1::tokenizer_server::Tokenizer;
use crate::vault::{TokenizeCommand, Vault};

/// Turns request metadata into a principal.
#[derive(Debug)]
pub struct Authenticator {
    keys: ApiKeyRegistry,
}

impl Authenticator {
    /// Authenticates against `keys`.
    pub fn new(keys: ApiKeyRegistry) -> Self {
        Self { keys }
    }

    /// The principal named by `authorization: Bearer <key>`.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, AccessError> {
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
        self.keys
            .authenticate(key.trim())
            .cloned()
            .ok_or(AccessError::InvalidCredentials)
    }

    /// Authenticates and checks `role`, recording who called in the
    /// current span. Failures are logged without the credentials.
    pub fn authorize(&self, metadata: &MetadataMap, role: Role) -> Result<Principal, Status> {
        let span = tracing::Span::current();
        let principal = self.authenticate(metadata).map_err(|e| {
            tracing::warn!(outcome = "unauthenticated", "authentication failed");
            status::from_access(e)
        })?;
        span.record("principal", principal.name.as_str());
        span.record("tenant", principal.tenant.as_str());
        access::require(&principal, role).map_err(|e| {
            tracing::warn!(outcome = "permission_denied", "role missing");
            status::from_access(e)
        })?;
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

    /// Refuses while sealed, then authenticates and checks `role`.
    fn authorize(&self, metadata: &MetadataMap, role: Role) -> Result<Principal, Status> {
        // A sealed vault answers nothing else, whoever asks.
        if self.vault.is_sealed() {
            return Err(Status::unavailable("the vault is sealed"));
        }
        self.auth.authorize(metadata, role)
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
        let principal = self.authorize(request.metadata(), Role::Tokenize)?;
        let result = self.tokenize_one(&principal, request.into_inner()).await;
        log_outcome(&result);
        result.map(Response::new)
    }

    #[instrument(skip_all, name = "TokenizeBatch", fields(principal, tenant, items))]
    async fn tokenize_batch(
        &self,
        request: Request<v1::TokenizeBatchRequest>,
    ) -> Result<Response<v1::TokenizeBatchResponse>, Status> {
        let principal = self.authorize(request.metadata(), Role::Tokenize)?;
        let items = request.into_inner().items;
        self.check_batch(items.len())?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            outcomes.push(self.tokenize_one(&principal, item).await);
        }
        let results = per_item_statuses(outcomes)
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
        let principal = self.authorize(request.metadata(), Role::Detokenize)?;
        let result = self.detokenize_one(&principal, request.get_ref()).await;
        log_outcome(&result);
        result.map(Response::new)
    }

    #[instrument(skip_all, name = "DetokenizeBatch", fields(principal, tenant, items))]
    async fn detokenize_batch(
        &self,
        request: Request<v1::DetokenizeBatchRequest>,
    ) -> Result<Response<v1::DetokenizeBatchResponse>, Status> {
        let principal = self.authorize(request.metadata(), Role::Detokenize)?;
        let items = request.into_inner().items;
        self.check_batch(items.len())?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in &items {
            outcomes.push(self.detokenize_one(&principal, item).await);
        }
        let results = per_item_statuses(outcomes)
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
        let principal = self.authorize(request.metadata(), Role::ReadInfo)?;
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
        result.map(Response::new)
    }

    #[instrument(skip_all, name = "DeleteToken", fields(principal, tenant))]
    async fn delete_token(
        &self,
        request: Request<v1::DeleteTokenRequest>,
    ) -> Result<Response<()>, Status> {
        let principal = self.authorize(request.metadata(), Role::Delete)?;
        let result = async {
            let token = convert::token(&request.get_ref().token)?;
            self.vault
                .delete(&principal.tenant, &token)
                .await
                .map_err(|e| status::from_vault(&e))
        }
        .await;
        log_outcome(&result);
        result.map(Response::new)
    }
}
