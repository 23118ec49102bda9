//! `tessera.v1.Principals`: who may call the vault. Every RPC needs the
//! `admin` role and a TOTP code; admins manage their own tenant. Changes
//! are audited (fail closed) and live on the next call.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::access::principals::{BookError, NewPrincipal, Origin, PrincipalSummary};
use crate::domain::principal::check_name;
use crate::domain::{Principal, Role};
use crate::proto::v1;
use crate::proto::v1::principals_server::Principals;
use crate::service::audited::{CallContext, WhenSealed, authorize_call, finish_admin};
use crate::service::{Authenticator, status};
use crate::vault::Vault;

/// Implements `tessera.v1.Principals`.
#[derive(Debug, Clone)]
pub struct PrincipalsService {
    vault: Arc<Vault>,
    auth: Arc<Authenticator>,
}

impl PrincipalsService {
    /// A service over a vault (for the audit log) and an authenticator
    /// (whose principal book it manages).
    pub fn new(vault: Arc<Vault>, auth: Arc<Authenticator>) -> Self {
        Self { vault, auth }
    }

    async fn admin<T>(
        &self,
        call: &CallContext,
        request: &Request<T>,
    ) -> Result<Principal, Status> {
        authorize_call(
            &self.vault,
            &self.auth,
            call,
            request,
            Role::Admin,
            WhenSealed::Refuse,
        )
        .await
    }

    /// The named principal, when it belongs to the caller's tenant.
    /// Another tenant's principal is NOT_FOUND, as if it did not exist, and
    /// the answer names neither.
    fn own_tenant(&self, caller: &Principal, name: &str) -> Result<PrincipalSummary, Status> {
        self.auth
            .principals()
            .get(name)
            .filter(|s| s.principal.tenant == caller.tenant)
            .ok_or_else(|| Status::not_found("no such principal in your tenant"))
    }
}

fn book_status(e: &BookError) -> Status {
    match e {
        BookError::NameTaken(_) | BookError::IdentityTaken(_) => {
            Status::already_exists(e.to_string())
        }
        BookError::NotFound(_) => Status::not_found(e.to_string()),
        BookError::Registry(_) | BookError::File { .. } | BookError::Rng(_) => {
            tracing::error!(error = %e, "principal change failed");
            Status::internal("the principal change could not be saved")
        }
    }
}

/// A principal name from a request, checked before anything logs or audits
/// it ([`check_name`]); the refusal never echoes it.
fn checked_name(name: &str) -> Result<&str, Status> {
    check_name(name)
        .map(|()| name)
        .map_err(|e| status::invalid_argument("name", &e.to_string()))
}

/// The audit resource for a principal named in a request: the name once
/// checked, a placeholder otherwise (a refused name is never recorded).
fn principal_resource(name: &Result<&str, Status>) -> String {
    match name {
        Ok(name) => format!("principal:{name}"),
        Err(_) => "principal:<invalid name>".to_owned(),
    }
}

fn parse_new(caller: &Principal, req: &v1::AddPrincipalRequest) -> Result<NewPrincipal, Status> {
    let name = checked_name(&req.name)?;
    if req.roles.len() > Role::ALL.len() {
        return Err(status::invalid_argument("roles", "too many roles"));
    }
    let roles = req
        .roles
        .iter()
        .map(|r| Role::parse(r))
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|_| {
            status::invalid_argument(
                "roles",
                "unknown role; expected tokenize, detokenize, read_info, delete, admin or audit",
            )
        })?;
    if roles.is_empty() {
        return Err(status::invalid_argument("roles", "at least one role"));
    }
    let cert_identity = match req.cert_identity.trim() {
        "" => None,
        id if id.len() > 512
            || id.chars().any(char::is_control)
            || crate::leak::contains_pan(id) =>
        {
            return Err(status::invalid_argument(
                "cert_identity",
                "must be at most 512 printable characters, never a card number",
            ));
        }
        id => Some(id.to_owned()),
    };
    Ok(NewPrincipal {
        name: name.to_owned(),
        tenant: caller.tenant.clone(),
        roles,
        cert_identity,
    })
}

fn info(summary: PrincipalSummary, locked: bool) -> v1::PrincipalInfo {
    v1::PrincipalInfo {
        name: summary.principal.name,
        tenant: summary.principal.tenant.as_str().to_owned(),
        roles: summary
            .principal
            .roles
            .iter()
            .map(|r| r.name().to_owned())
            .collect(),
        revoked: summary.revoked,
        has_api_key: summary.has_api_key,
        cert_identity: summary.cert_identity.unwrap_or_default(),
        has_totp: summary.has_totp,
        origin: match summary.origin {
            Origin::Config => "config",
            Origin::Added => "added",
        }
        .to_owned(),
        locked,
    }
}

#[tonic::async_trait]
impl Principals for PrincipalsService {
    #[instrument(skip_all, name = "AddPrincipal", fields(principal, tenant))]
    async fn add_principal(
        &self,
        request: Request<v1::AddPrincipalRequest>,
    ) -> Result<Response<v1::AddPrincipalResponse>, Status> {
        let call = CallContext::of("AddPrincipal", &request);
        let caller = self.admin(&call, &request).await?;
        let new = parse_new(&caller, request.get_ref());
        let resource = principal_resource(&checked_name(&request.get_ref().name));
        let step = self.auth.otp_step();
        let result = new.and_then(|new| {
            let name = new.name.clone();
            let roles: Vec<_> = new.roles.iter().map(|r| r.name()).collect();
            let issued = self
                .auth
                .principals()
                .add(new)
                .map_err(|e| book_status(&e))?;
            tracing::info!(added = %name, roles = ?roles, "principal added");
            Ok(v1::AddPrincipalResponse {
                otpauth_uri: issued
                    .totp
                    .map(|t| t.otpauth_uri(&name, step).expose_secret().to_owned())
                    .unwrap_or_default(),
                api_key: issued.api_key.expose_secret().to_owned(),
                name,
            })
        });
        finish_admin(&self.vault, &call, &caller, resource, result).await
    }

    #[instrument(skip_all, name = "ListPrincipals", fields(principal, tenant))]
    async fn list_principals(
        &self,
        request: Request<v1::ListPrincipalsRequest>,
    ) -> Result<Response<v1::ListPrincipalsResponse>, Status> {
        let call = CallContext::of("ListPrincipals", &request);
        let caller = self.admin(&call, &request).await?;
        let guard = self.auth.guard();
        let principals = self
            .auth
            .principals()
            .list()
            .into_iter()
            .filter(|s| s.principal.tenant == caller.tenant)
            .map(|s| {
                let locked = guard.principal_locked(&s.principal.name);
                info(s, locked)
            })
            .collect();
        let result = Ok(v1::ListPrincipalsResponse { principals });
        finish_admin(&self.vault, &call, &caller, "principals".to_owned(), result).await
    }

    #[instrument(skip_all, name = "RevokePrincipal", fields(principal, tenant))]
    async fn revoke_principal(
        &self,
        request: Request<v1::RevokePrincipalRequest>,
    ) -> Result<Response<v1::RevokePrincipalResponse>, Status> {
        let call = CallContext::of("RevokePrincipal", &request);
        let caller = self.admin(&call, &request).await?;
        let name = checked_name(&request.get_ref().name);
        let resource = principal_resource(&name);
        let result = name.and_then(|name| {
            self.own_tenant(&caller, name)?;
            if name == caller.name {
                return Err(Status::failed_precondition(
                    "an admin cannot revoke itself; ask another admin",
                ));
            }
            self.auth
                .principals()
                .revoke(name)
                .map_err(|e| book_status(&e))?;
            tracing::warn!(revoked = %name, "principal revoked");
            Ok(v1::RevokePrincipalResponse {})
        });
        finish_admin(&self.vault, &call, &caller, resource, result).await
    }

    #[instrument(skip_all, name = "UnlockPrincipal", fields(principal, tenant))]
    async fn unlock_principal(
        &self,
        request: Request<v1::UnlockPrincipalRequest>,
    ) -> Result<Response<v1::UnlockPrincipalResponse>, Status> {
        let call = CallContext::of("UnlockPrincipal", &request);
        let caller = self.admin(&call, &request).await?;
        let name = checked_name(&request.get_ref().name);
        let resource = principal_resource(&name);
        let result = name.and_then(|name| {
            self.own_tenant(&caller, name)?;
            let was_locked = self.auth.guard().unlock_principal(name);
            tracing::info!(unlocked = %name, was_locked, "principal unlocked");
            Ok(v1::UnlockPrincipalResponse { was_locked })
        });
        finish_admin(&self.vault, &call, &caller, resource, result).await
    }
}
