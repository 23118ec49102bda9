//! The one place that builds `tonic::Status`: every error of the layers
//! below becomes a status code from DESIGN.md §8 and a message that never
//! contains a PAN or a token.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::access::AccessError;
use crate::kms::KmsError;
use crate::telemetry::names;
use crate::tokens::GenerateError;
use crate::vault::VaultError;

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` field violation.
pub fn invalid_argument(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

/// Maps an access failure.
pub fn from_access(e: AccessError) -> Status {
    match e {
        AccessError::MissingCredentials
        | AccessError::InvalidCredentials
        | AccessError::SecondFactor(_) => Status::unauthenticated(e.to_string()),
        AccessError::MissingRole(_) => Status::permission_denied(e.to_string()),
    }
}

/// Maps a vault failure. Internal details go to the log, not the caller.
pub fn from_vault(e: &VaultError) -> Status {
    match e {
        VaultError::InvalidArgument { field, reason } => invalid_argument(field, reason),
        VaultError::NotFound => Status::not_found("token not found"),
        VaultError::Sealed => Status::unavailable("the vault is sealed"),
        VaultError::Audit(a) => {
            tracing::error!(error = %a, alert = "audit_write_failed", "audit log unavailable; failing closed");
            metrics::counter!(names::AUDIT_FAILURES).increment(1);
            Status::unavailable("the audit log is unavailable; the call was refused")
        }
        VaultError::Precondition(why) => Status::failed_precondition(why.clone()),
        VaultError::Kms(KmsError::ShareRefused(why)) => invalid_argument("share", why),
        VaultError::Kms(KmsError::Refused(why)) => Status::failed_precondition(why.clone()),
        VaultError::Generate(
            g @ (GenerateError::Ff1DomainTooSmall { .. }
            | GenerateError::TokenSpaceTooSmall { .. }
            | GenerateError::KeepsTooMany { .. }),
        ) => Status::failed_precondition(g.to_string()),
        VaultError::Generate(g @ GenerateError::BucketExhausted { .. }) => {
            Status::resource_exhausted(g.to_string())
        }
        VaultError::ReuseConflict { .. } => Status::failed_precondition(e.to_string()),
        VaultError::Contended => Status::aborted(e.to_string()),
        VaultError::TenantShredded => Status::failed_precondition(e.to_string()),
        VaultError::Store(s) if s.is_retryable() => unavailable(e),
        VaultError::Kms(k) if k.is_retryable() => unavailable(e),
        VaultError::Generate(_)
        | VaultError::Store(_)
        | VaultError::Kms(_)
        | VaultError::Envelope(_)
        | VaultError::MissingKey => {
            tracing::error!(error = %e, "internal error");
            Status::internal("internal error")
        }
    }
}

fn unavailable(e: &VaultError) -> Status {
    tracing::warn!(error = %e, "dependency unavailable");
    Status::unavailable("a backing service is unavailable; retry later")
}

/// A status as a `google.rpc.Status` message for a batch item, details kept.
pub fn to_rpc_status(status: &Status) -> crate::proto::google::rpc::Status {
    use prost::Message;
    if !status.details().is_empty()
        && let Ok(decoded) = crate::proto::google::rpc::Status::decode(status.details())
    {
        return decoded;
    }
    crate::proto::google::rpc::Status {
        code: i32::from(status.code()),
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violation() {
        let status = invalid_argument("pan", "PAN fails the Luhn check");
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "pan");
        let rpc = to_rpc_status(&status);
        assert_eq!(rpc.code, i32::from(Code::InvalidArgument));
        assert_eq!(rpc.details.len(), 1);
    }

    #[test]
    fn codes_per_design() {
        assert_eq!(from_vault(&VaultError::NotFound).code(), Code::NotFound);
        let small = VaultError::Generate(GenerateError::Ff1DomainTooSmall {
            encrypted: 5,
            minimum: 6,
        });
        assert_eq!(from_vault(&small).code(), Code::FailedPrecondition);
        let down = VaultError::Store(crate::store::StoreError::Unavailable("x".into()));
        assert_eq!(from_vault(&down).code(), Code::Unavailable);
        assert_eq!(
            from_access(AccessError::MissingCredentials).code(),
            Code::Unauthenticated
        );
        assert_eq!(
            from_access(AccessError::MissingRole(crate::domain::Role::Detokenize)).code(),
            Code::PermissionDenied
        );
    }
}
