//! `tessera.v1.Principals`: who may call the vault. Every RPC needs the
//! `admin` role (its own tenant) or the `operator` role (any scope: the
//! system scope's operators, and a tenant's first admins), and a TOTP code.
//! Changes are audited (fail closed) and live on the next call.
//!
//! Granting `detokenize`, `admin`, `audit` or `operator` issues credentials
//! that work only after a second, eligible admin approves (SECURITY.md §5.1):
//! one admin can never mint a PAN reader or its own second person.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::access::approvals::{Approvals, DualControlAction};
use crate::access::principals::{BookError, NewPrincipal, Origin, PrincipalSummary};
use crate::access::sessions::{SessionError, Sessions};
use crate::domain::principal::check_name;
use crate::domain::{Principal, Role, TenantId};
use crate::proto::v1;
use crate::proto::v1::principals_server::Principals;
use crate::service::audited::{CallContext, WhenSealed, authorize_call, finish_admin, intend};
use crate::service::{Authenticator, Credentials, status};

/// Admins an operator may add to a tenant: two, each by a different
/// operator, so they can approve each other's requests.
const BOOTSTRAP_ADMINS: usize = 2;

/// The roles whose RPCs need a second factor, and so may hold a session.
const SECOND_FACTOR_ROLES: &[Role] = &[Role::Admin, Role::Audit, Role::Operator];
use crate::vault::Vault;

/// Implements `tessera.v1.Principals`.
#[derive(Debug, Clone)]
pub struct PrincipalsService {
    vault: Arc<Vault>,
    auth: Arc<Authenticator>,
    approvals: Arc<Approvals>,
}

impl PrincipalsService {
    /// A service over a vault (for the audit log), an authenticator (whose
    /// principal book it manages) and the pending approvals (for grants).
    pub fn new(vault: Arc<Vault>, auth: Arc<Authenticator>, approvals: Arc<Approvals>) -> Self {
        Self {
            vault,
            auth,
            approvals,
        }
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
            &[Role::Admin, Role::Operator],
            WhenSealed::Refuse,
        )
        .await
    }

    /// An operator adds admins to a tenant only to bootstrap it: while the
    /// tenant has (or awaits) fewer than [`BOOTSTRAP_ADMINS`] admins. After
    /// that the tenant's own admins add everyone, so no operator holds the
    /// credentials of a tenant's working principals.
    async fn check_bootstrap(&self, tenant: &TenantId) -> Result<(), Status> {
        let live = self
            .auth
            .principals()
            .list()
            .into_iter()
            .filter(|s| !s.revoked && s.principal.tenant == *tenant && s.principal.has(Role::Admin))
            .count();
        let pending = self
            .approvals
            .list(&TenantId::system(), self.vault.now_ms())
            .await
            .map_err(|e| super::key_admin::approval_status(&e))?
            .into_iter()
            .filter(|p| {
                matches!(&p.action, DualControlAction::AddPrincipal(e) if e.principal.tenant == *tenant)
            })
            .count();
        if live + pending >= BOOTSTRAP_ADMINS {
            return Err(Status::permission_denied(
                "this tenant has its bootstrap admins; its own admins add the rest",
            ));
        }
        Ok(())
    }

    /// The named principal, when it is in the caller's own scope: unlocking
    /// lifts a control, so not even an operator does it for a tenant.
    fn own_scope(&self, caller: &Principal, name: &str) -> Result<PrincipalSummary, Status> {
        self.auth
            .principals()
            .get(name)
            .filter(|s| s.principal.tenant == caller.tenant)
            .ok_or_else(|| Status::not_found("no such principal in your scope"))
    }

    /// Authenticates a principal whose RPCs need a second factor (the ones
    /// that may hold an admin session); answers while sealed.
    async fn session_holder<T>(
        &self,
        call: &CallContext,
        request: &Request<T>,
    ) -> Result<Principal, Status> {
        authorize_call(
            &self.vault,
            &self.auth,
            call,
            request,
            SECOND_FACTOR_ROLES,
            WhenSealed::Serve,
        )
        .await
    }

    /// The named principal, when the caller may manage it: in its own
    /// tenant, or anywhere for an operator. Another tenant's principal is
    /// NOT_FOUND, as if it did not exist, and the answer names neither.
    fn managed(&self, caller: &Principal, name: &str) -> Result<PrincipalSummary, Status> {
        self.auth
            .principals()
            .get(name)
            .filter(|s| manages(caller, &s.principal.tenant))
            .ok_or_else(|| Status::not_found("no such principal in your scope"))
    }
}

/// Whether `caller` may list or revoke principals of `tenant`: its own
/// tenant, or any for an operator (the breach runbook's revocations).
fn manages(caller: &Principal, tenant: &TenantId) -> bool {
    caller.tenant == *tenant || caller.has(Role::Operator)
}

/// Maps a session failure; the store's own words stay in the log.
fn session_status(e: &SessionError) -> Status {
    match e {
        SessionError::TooMany => Status::resource_exhausted(e.to_string()),
        other => {
            tracing::warn!(error = %other, "admin sessions unavailable");
            Status::unavailable("admin sessions are unavailable; retry")
        }
    }
}

/// Maps a principal-book failure; no message names another principal.
pub(crate) fn book_status(e: &BookError) -> Status {
    match e {
        BookError::NameTaken(_) | BookError::IdentityTaken(_) => {
            Status::already_exists(e.to_string())
        }
        BookError::RoleOutOfScope(_) => status::invalid_argument("roles", &e.to_string()),
        BookError::NotFound(_) => Status::not_found(e.to_string()),
        BookError::SharedUnavailable(_) => {
            tracing::error!(error = %e, "principal change failed");
            Status::unavailable("the principal change could not be saved; retry")
        }
        BookError::Shared(_) => {
            tracing::error!(alert = "shared_state_unreadable", error = %e, "principal change refused");
            Status::internal("the stored principals are unusable; see the server log")
        }
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

/// Whether a tenant admin may bind `identity`: only a URI whose path starts
/// with its own tenant (`spiffe://td/tenant/acme/till-7`), so no tenant can
/// claim a SAN of another tenant's certificate. Operators bind any.
fn identity_in_scope(caller: &Principal, tenant: &TenantId, identity: &str) -> bool {
    caller.has(Role::Operator)
        || identity
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|slash| &rest[slash..]))
            .is_some_and(|path| path.starts_with(&format!("/tenant/{tenant}/")))
}

fn parse_new(
    caller: &Principal,
    req: &v1::AddPrincipalRequest,
    now_ms: u64,
) -> Result<NewPrincipal, Status> {
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
            || crate::leak::contains_card_number(id) =>
        {
            return Err(status::invalid_argument(
                "cert_identity",
                "must be at most 512 printable characters, never a card number",
            ));
        }
        id => Some(id.to_owned()),
    };
    let tenant = match req.tenant.as_str() {
        "" => caller.tenant.clone(),
        named if named == caller.tenant.as_str() => caller.tenant.clone(),
        // A new tenant's id lands in every event and log line: never a card
        // number (checked here, where tenants are named; ids already stored
        // keep reading as they are).
        named if caller.has(Role::Operator) && crate::leak::contains_card_number(named) => {
            return Err(status::invalid_argument(
                "tenant",
                "must not be a card number",
            ));
        }
        named if caller.has(Role::Operator) => TenantId::from_stored(named)
            .map_err(|e| status::invalid_argument("tenant", &e.to_string()))?,
        _ => {
            return Err(Status::permission_denied(
                "admins add principals to their own tenant only",
            ));
        }
    };
    // In a tenant, an operator only bootstraps admins (always under dual
    // control); the tenant's own admins add everyone else. An operator
    // minting a `delete` or `tokenize` principal in a tenant would reach
    // into it alone.
    if tenant != caller.tenant && roles.iter().any(|r| *r != Role::Admin) {
        return Err(Status::permission_denied(
            "in another tenant an operator adds only admins (each needs a second operator's approval)",
        ));
    }
    if cert_identity
        .as_deref()
        .is_some_and(|id| !identity_in_scope(caller, &tenant, id))
    {
        return Err(status::invalid_argument(
            "cert_identity",
            "a tenant admin may bind only a URI whose path starts with /tenant/<your tenant>/",
        ));
    }
    Ok(NewPrincipal {
        name: name.to_owned(),
        tenant,
        roles,
        cert_identity,
        created_by: Some(caller.name.clone()),
        created_at_ms: now_ms,
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
        let mut call = CallContext::of("AddPrincipal", &request);
        let caller = self.admin(&call, &request).await?;
        let now = self.vault.now_ms();
        let new = parse_new(&caller, request.get_ref(), now);
        call.affected_tenant = new
            .as_ref()
            .ok()
            .filter(|n| n.tenant != caller.tenant)
            .map(|n| n.tenant.as_str().to_owned());
        let mut resource = principal_resource(&checked_name(&request.get_ref().name));
        let step = self.auth.otp_step();
        let result = async {
            let new = new?;
            if new.tenant != caller.tenant {
                self.check_bootstrap(&new.tenant).await?;
            }
            let name = new.name.clone();
            let roles: Vec<_> = new.roles.iter().map(|r| r.name()).collect();
            let needs_approval = new.roles.iter().any(|r| r.grant_needs_approval());
            let book = self.auth.principals();
            let (entry, issued) = book.issue(new).map_err(|e| book_status(&e))?;
            intend(&self.vault, &call, &caller, &resource).await?;
            let approval_id = if needs_approval {
                let pending = self
                    .approvals
                    .request(
                        DualControlAction::AddPrincipal(Box::new(entry)),
                        &caller.name,
                        book.lineage(&caller.name),
                        &caller.tenant,
                        now,
                    )
                    .await
                    .map_err(|e| super::key_admin::approval_status(&e))?;
                tracing::info!(pending = %name, roles = ?roles, approval = %pending.id, "principal waits for approval");
                resource.push_str(&format!(" approval:{}", pending.id));
                pending.id
            } else {
                book.insert(entry).await.map_err(|e| book_status(&e))?;
                tracing::info!(added = %name, roles = ?roles, "principal added");
                String::new()
            };
            Ok(v1::AddPrincipalResponse {
                otpauth_uri: issued
                    .totp
                    .map(|t| t.otpauth_uri(&name, step).expose_secret().to_owned())
                    .unwrap_or_default(),
                api_key: issued.api_key.expose_secret().to_owned(),
                name,
                approval_id,
            })
        }
        .await;
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
            .filter(|s| manages(&caller, &s.principal.tenant))
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
        let mut call = CallContext::of("RevokePrincipal", &request);
        let caller = self.admin(&call, &request).await?;
        let name = checked_name(&request.get_ref().name);
        let cascade = request.get_ref().cascade;
        let resource = principal_resource(&name);
        call.affected_tenant = name
            .as_ref()
            .ok()
            .and_then(|n| self.auth.principals().get(n))
            .map(|s| s.principal.tenant)
            .filter(|t| *t != caller.tenant)
            .map(|t| t.as_str().to_owned());
        let result = async {
            let name = name?;
            self.managed(&caller, name)?;
            if name == caller.name {
                return Err(Status::failed_precondition(
                    "an admin cannot revoke itself; ask another admin",
                ));
            }
            let book = self.auth.principals();
            // Everything it created held keys it was shown; the caller
            // itself (if one of them) stays, to finish the job.
            let descendants: Vec<String> = if cascade {
                book.list()
                    .into_iter()
                    .filter(|s| !s.revoked && s.principal.name != caller.name)
                    .filter(|s| manages(&caller, &s.principal.tenant))
                    .map(|s| s.principal.name)
                    .filter(|n| book.lineage(n).iter().any(|a| a == name))
                    .collect()
            } else {
                Vec::new()
            };
            intend(&self.vault, &call, &caller, &resource).await?;
            for target in std::iter::once(name).chain(descendants.iter().map(String::as_str)) {
                book.revoke(target).await.map_err(|e| book_status(&e))?;
                let sessions = self
                    .auth
                    .sessions()
                    .close_all(target)
                    .await
                    .map_err(|e| session_status(&e))?;
                // Its pending requests die with it: a revoked admin's grant
                // (whose credentials it holds) must not be approved later.
                let requests = self
                    .approvals
                    .drop_where(|p| p.requested_by == target)
                    .await
                    .map_err(|e| super::key_admin::approval_status(&e))?;
                tracing::warn!(revoked = %target, sessions, requests, "principal revoked");
            }
            Ok(v1::RevokePrincipalResponse {
                also_revoked: descendants,
            })
        }
        .await;
        let resource = match &result {
            Ok(r) if !r.also_revoked.is_empty() => {
                format!("{resource} cascade:{}", r.also_revoked.join(","))
            }
            _ => resource,
        };
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
        let result = async {
            let name = name?;
            self.own_scope(&caller, name)?;
            intend(&self.vault, &call, &caller, &resource).await?;
            let was_locked = self.auth.guard().unlock_principal(name);
            tracing::info!(unlocked = %name, was_locked, "principal unlocked");
            Ok(v1::UnlockPrincipalResponse { was_locked })
        }
        .await;
        finish_admin(&self.vault, &call, &caller, resource, result).await
    }

    #[instrument(skip_all, name = "CreateSession", fields(principal, tenant))]
    async fn create_session(
        &self,
        request: Request<v1::CreateSessionRequest>,
    ) -> Result<Response<v1::CreateSessionResponse>, Status> {
        let call = CallContext::of("CreateSession", &request);
        let caller = self.session_holder(&call, &request).await?;
        let result = async {
            // A session never opens another: its life stays bounded by the
            // TOTP code that opened the first.
            if Credentials::of(&request).session().is_some() {
                return Err(Status::failed_precondition(
                    "open a session with a TOTP code, not with another session",
                ));
            }
            intend(&self.vault, &call, &caller, "session:new").await?;
            let opened = self
                .auth
                .sessions()
                .open(&caller.name)
                .await
                .map_err(|e| session_status(&e))?;
            let ttl_ms = u64::try_from(opened.ttl.as_millis()).unwrap_or(u64::MAX);
            let expires_ms = self.vault.now_ms().saturating_add(ttl_ms);
            tracing::info!(session = %opened.id, "admin session opened");
            Ok((
                opened.id,
                v1::CreateSessionResponse {
                    session: opened.token.expose_secret().to_owned(),
                    expires_at: Some(prost_types::Timestamp {
                        seconds: i64::try_from(expires_ms / 1000).unwrap_or(i64::MAX),
                        nanos: 0,
                    }),
                },
            ))
        }
        .await;
        let resource = match &result {
            Ok((id, _)) => format!("session:{id}"),
            Err(_) => "session:none".to_owned(),
        };
        finish_admin(
            &self.vault,
            &call,
            &caller,
            resource,
            result.map(|(_, r)| r),
        )
        .await
    }

    #[instrument(skip_all, name = "DeleteSession", fields(principal, tenant))]
    async fn delete_session(
        &self,
        request: Request<v1::DeleteSessionRequest>,
    ) -> Result<Response<v1::DeleteSessionResponse>, Status> {
        let call = CallContext::of("DeleteSession", &request);
        let caller = self.session_holder(&call, &request).await?;
        let creds = Credentials::of(&request);
        let token = creds.session().map(str::to_owned);
        let resource = token
            .as_deref()
            .and_then(Sessions::id_of)
            .map_or_else(|| "session:none".to_owned(), |id| format!("session:{id}"));
        let result = async {
            let Some(token) = token else {
                return Err(Status::failed_precondition(
                    "this call carries no session to delete",
                ));
            };
            intend(&self.vault, &call, &caller, &resource).await?;
            self.auth
                .sessions()
                .close(&token, &caller.name)
                .await
                .map_err(|e| session_status(&e))?;
            Ok(v1::DeleteSessionResponse {})
        }
        .await;
        finish_admin(&self.vault, &call, &caller, resource, result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin_of(tenant: &str) -> Principal {
        Principal {
            name: format!("{tenant}-admin"),
            tenant: TenantId::new(tenant).unwrap(),
            roles: [Role::Admin].into_iter().collect(),
        }
    }

    /// Finding 14: any tenant's admin could claim a certificate identity,
    /// e.g. a DNS SAN of another tenant's multi-SAN certificate.
    #[test]
    fn tenant_admins_bind_only_identities_in_their_tenant() {
        let acme = admin_of("acme");
        let tenant = TenantId::new("acme").unwrap();
        assert!(identity_in_scope(
            &acme,
            &tenant,
            "spiffe://td/tenant/acme/till-7"
        ));
        for foreign in [
            "pos.globex.example",
            "spiffe://td/tenant/globex/till-7",
            "spiffe://td/tenant/acme-evil/till-7",
            "spiffe://td/x/tenant/acmetenant/acme",
            "spiffe://td/tenant/globex/x/tenant/acme/y",
        ] {
            assert!(!identity_in_scope(&acme, &tenant, foreign), "{foreign}");
        }
        let operator = Principal {
            name: "op".into(),
            tenant: TenantId::system(),
            roles: [Role::Operator].into_iter().collect(),
        };
        assert!(identity_in_scope(&operator, &tenant, "pos.globex.example"));
    }

    #[test]
    fn book_errors_name_no_principal_or_identity() {
        for e in [
            BookError::NameTaken("globex-reader".into()),
            BookError::IdentityTaken("pos.globex.example".into()),
            BookError::NotFound("globex-reader".into()),
        ] {
            let status = book_status(&e);
            assert!(!status.message().contains("globex"), "{}", status.message());
        }
    }
}
