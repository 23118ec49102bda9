//! Who is calling, and may they: credentials → principal, with lockouts,
//! the second factor for administrative RPCs, role checks and rate limits.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use tonic_types::StatusExt;

use crate::access::limits::{Guard, LimitsConfig, OTP_LOCK_PREFIX};
use crate::access::principals::PrincipalBook;
use crate::access::refusals::Refusals;
use crate::access::sessions::{SESSION_HEADER, Sessions};
use crate::access::shared_locks::{LockTaker, LockTarget, SharedLock};
use crate::access::totp::{OTP_HEADER, OtpVerifier};
use crate::access::{self, AccessError, api_key};
use crate::domain::{Principal, Role};
use crate::service::status;
use crate::telemetry::names;

/// What one call presents: its metadata and the identities of a client
/// certificate that rustls verified against the client CA.
#[derive(Debug)]
pub struct Credentials<'a> {
    metadata: &'a MetadataMap,
    cert_identities: Vec<String>,
}

impl<'a> Credentials<'a> {
    /// The credentials of `request`.
    pub fn of<T>(request: &'a Request<T>) -> Self {
        let cert_identities = request
            .peer_certs()
            .and_then(|chain| {
                chain
                    .first()
                    .map(|leaf| crate::tls::certificate_identities(leaf))
            })
            .unwrap_or_default();
        Self {
            metadata: request.metadata(),
            cert_identities,
        }
    }

    /// Bare metadata, no certificate (tests and embedders).
    pub fn from_metadata(metadata: &'a MetadataMap) -> Self {
        Self {
            metadata,
            cert_identities: Vec::new(),
        }
    }

    /// The bearer key in `authorization`, if the header is well formed.
    fn bearer_key(&self) -> Result<&str, AccessError> {
        let header = self
            .metadata
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

    fn otp(&self) -> Option<&str> {
        self.metadata.get(OTP_HEADER).and_then(|v| v.to_str().ok())
    }

    /// The admin session the call carries, if any.
    pub fn session(&self) -> Option<&str> {
        self.metadata
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
    }
}

/// Whether RPCs open to `roles` also need a TOTP code (PCI DSS 8.4.1: MFA
/// for administrative access, which includes reading the audit trail and
/// the operators' vault-wide actions).
fn needs_second_factor(roles: &[Role]) -> bool {
    roles
        .iter()
        .any(|r| matches!(r, Role::Admin | Role::Audit | Role::Operator))
}

/// Logs a refused call of a known principal: which RPC, who, which tenant
/// and why, so a failure at the default level is attributable (successes
/// are quiet there).
fn warn_refused(rpc: &str, principal: &Principal, outcome: &'static str, message: &str) {
    tracing::warn!(
        rpc,
        principal = %principal.name,
        tenant = %principal.tenant,
        outcome,
        "{message}"
    );
}

/// Turns credentials into a principal, enforcing lockouts, the second
/// factor and rate limits on the way.
#[derive(Debug)]
pub struct Authenticator {
    principals: Arc<PrincipalBook>,
    guard: Guard,
    otp: OtpVerifier,
    refusals: Refusals,
    sessions: Sessions,
}

/// The TOTP step when none is configured.
pub const DEFAULT_OTP_STEP: Duration = Duration::from_secs(30);

impl Authenticator {
    /// Authenticates against `principals` with the default limits.
    pub fn new(principals: Arc<PrincipalBook>) -> Self {
        Self::with_limits(principals, LimitsConfig::default(), DEFAULT_OTP_STEP)
    }

    /// Authenticates against `principals` with `limits` and TOTP `otp_step`.
    pub fn with_limits(
        principals: Arc<PrincipalBook>,
        limits: LimitsConfig,
        otp_step: Duration,
    ) -> Self {
        Self {
            principals,
            refusals: Refusals::new(limits.refusal_window),
            sessions: Sessions::new(limits.session_ttl),
            guard: Guard::new(limits),
            otp: OtpVerifier::new(otp_step),
        }
    }

    /// The same authenticator keeping admin sessions in `shared`, where
    /// every replica finds them.
    pub fn with_shared_sessions(self, shared: crate::shared::Shared) -> Self {
        Self {
            sessions: Sessions::shared(self.sessions.ttl(), shared),
            ..self
        }
    }

    /// The open admin sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The tallies of refused calls, for aggregated audit events.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// The lockout, rate-limit and anomaly state.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The live principals.
    pub fn principals(&self) -> &Arc<PrincipalBook> {
        &self.principals
    }

    /// The TOTP time step.
    pub fn otp_step(&self) -> Duration {
        self.otp.step()
    }

    /// The principal the credentials name (no limits, no second factor).
    ///
    /// An API key names its principal; without one, a verified client
    /// certificate does. When both are sent they must name the same one.
    pub fn authenticate(&self, creds: &Credentials<'_>) -> Result<Principal, AccessError> {
        let by_cert = self.principals.authenticate_cert(&creds.cert_identities);
        match creds.bearer_key() {
            Ok(key) => {
                let principal = self
                    .principals
                    .authenticate_key(key)
                    .ok_or(AccessError::InvalidCredentials)?;
                match by_cert {
                    Some(c) if c.name != principal.name => Err(AccessError::InvalidCredentials),
                    _ => Ok(principal),
                }
            }
            Err(AccessError::MissingCredentials) => by_cert.ok_or(AccessError::MissingCredentials),
            Err(e) => Err(e),
        }
    }

    /// Counts a failure against `lock_id`, alerting when it locks. A lock
    /// of a credential that names a principal (its key id, or its second
    /// factor) is shared with the other replicas; made-up key ids are not,
    /// so guessing cannot fill the database.
    fn failed(&self, lock_id: &str) {
        if self.guard.auth_failed(lock_id) {
            let named = match lock_id.strip_prefix(OTP_LOCK_PREFIX) {
                Some(_) => true,
                None => self.principals.knows_key_id(lock_id),
            };
            if named {
                self.guard.outbox().locked(
                    LockTarget::Credential(lock_id.to_owned()),
                    Some(std::time::Instant::now() + self.guard.lockout()),
                );
            }
            tracing::error!(
                alert = "lockout",
                lock_id = %crate::telemetry::log_safe(lock_id),
                "credentials locked after repeated failures"
            );
            metrics::counter!(names::LOCKOUTS).increment(1);
        }
    }

    /// Authenticates, applies lockouts, checks `role` (and the second
    /// factor where the role needs one) and takes one call from the
    /// principal's `rpc` rate limit, recording who called in the current
    /// span. Failures are logged without the credentials.
    pub fn authorize(
        &self,
        creds: &Credentials<'_>,
        roles: &[Role],
        rpc: &str,
    ) -> Result<Principal, Status> {
        let span = tracing::Span::current();
        let key_id = creds
            .bearer_key()
            .ok()
            .and_then(api_key::key_id)
            .map(str::to_owned);
        if key_id
            .as_deref()
            .is_some_and(|id| self.guard.key_locked(id))
        {
            tracing::warn!(
                rpc,
                outcome = "locked",
                "credentials locked after repeated failures"
            );
            return Err(Status::unauthenticated(
                "these credentials are locked after repeated failures",
            ));
        }
        let principal = match self.authenticate(creds) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(rpc, outcome = "unauthenticated", "authentication failed");
                if let Some(id) = &key_id {
                    self.failed(id);
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
            warn_refused(
                rpc,
                &principal,
                "locked",
                "principal locked for suspicious activity",
            );
            return Err(Status::unauthenticated(
                "this principal is locked for suspicious activity",
            ));
        }
        access::require(&principal, roles).map_err(|e| {
            warn_refused(rpc, &principal, "permission_denied", "role missing");
            status::from_access(e)
        })?;
        if needs_second_factor(roles) {
            self.check_second_factor(creds, &principal)?;
        }
        self.charge(&principal, rpc, 1)?;
        Ok(principal)
    }

    /// Takes `calls` from the principal's rate limit for `rpc` (a batch
    /// charges its remaining items after the gate took one);
    /// RESOURCE_EXHAUSTED with the time to wait when the bucket is short.
    pub fn charge(&self, principal: &Principal, rpc: &str, calls: usize) -> Result<(), Status> {
        if calls == 0 {
            return Ok(());
        }
        self.guard
            .take_n(&principal.name, rpc, calls)
            .map_err(|wait| {
                warn_refused(rpc, principal, "rate_limited", "rate limit reached");
                metrics::counter!(names::RATE_LIMITED, "rpc" => rpc.to_owned()).increment(1);
                Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    "rate limit reached; retry later",
                    tonic_types::ErrorDetails::with_retry_info(Some(wait)),
                )
            })
    }

    /// The TOTP code in `x-tessera-otp`: valid now and never used before.
    /// Wrong codes count towards a lockout of the principal's second
    /// factor, so six digits cannot be guessed online.
    fn check_second_factor(
        &self,
        creds: &Credentials<'_>,
        principal: &Principal,
    ) -> Result<(), Status> {
        let lock_id = format!("{OTP_LOCK_PREFIX}{}", principal.name);
        if self.guard.key_locked(&lock_id) {
            tracing::warn!(
                outcome = "locked",
                "second factor locked after repeated failures"
            );
            return Err(Status::unauthenticated(
                "the second factor is locked after repeated failures",
            ));
        }
        if let Some(session) = creds.session() {
            if self.sessions.verify(session, &principal.name) {
                self.guard.auth_succeeded(&lock_id);
                return Ok(());
            }
            tracing::warn!(outcome = "unauthenticated", "admin session refused");
            self.failed(&lock_id);
            return Err(Status::unauthenticated(
                "the admin session is expired, deleted or not this principal's; open a new one with a TOTP code",
            ));
        }
        let Some(secret) = self.principals.totp(&principal.name) else {
            tracing::warn!(outcome = "unauthenticated", "no second factor enrolled");
            return Err(Status::unauthenticated(
                "this principal has no TOTP secret enrolled; administrative RPCs need one",
            ));
        };
        match self
            .otp
            .verify(&principal.name, &secret, creds.otp(), SystemTime::now())
        {
            Ok(()) => {
                self.guard.auth_succeeded(&lock_id);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(outcome = "unauthenticated", reason = %e, "second factor refused");
                self.failed(&lock_id);
                Err(status::from_access(AccessError::SecondFactor(e)))
            }
        }
    }
}

/// Locks other replicas took or lifted apply to this authenticator's guard.
impl LockTaker for Authenticator {
    fn take_lock(&self, target: &LockTarget, lock: SharedLock) {
        self.guard.take_lock(target, lock);
    }

    fn lift_lock(&self, target: &LockTarget) {
        self.guard.lift_lock(target);
    }
}
