//! The authorization matrix: every role × every RPC × own tenant, other
//! tenant and the system scope.
//!
//! Each principal holds exactly one role. A call without one of the RPC's
//! roles is PERMISSION_DENIED; with it, the call runs in the caller's own
//! scope, and another tenant's tokens, keys, approvals, events and principals
//! are out of reach (NOT_FOUND, or PERMISSION_DENIED when the tenant is
//! named). Vault-wide RPCs belong to the system scope's operators alone; no
//! tenant principal reaches them (SECURITY.md §5.2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;

use common::{AdminChannel, OtpAuth, Server};
use tessera::domain::Role;
use tessera::proto::v1;
use tessera::proto::v1::audit_client::AuditClient;
use tessera::proto::v1::key_admin_client::KeyAdminClient;
use tessera::proto::v1::principals_client::PrincipalsClient;
use tessera::proto::v1::tokenizer_client::TokenizerClient;
use tonic::Code;

const VISA: &str = "4111111111111111";
const HOME: &str = "default";
const AWAY: &str = "other";
const SYSTEM: &str = "_system";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Tokenize,
    TokenizeBatch,
    Detokenize,
    DetokenizeBatch,
    GetTokenInfo,
    DeleteToken,
    GetStatus,
    Unseal,
    RotateDataKey,
    RotateMasterKey,
    Reencrypt,
    RetireDataKey,
    ShredTenant,
    ListApprovals,
    Approve,
    ListEvents,
    Verify,
    AddPrincipal,
    ListPrincipals,
    RevokePrincipal,
    UnlockPrincipal,
    RecreateTenant,
    Recover,
    Compact,
    RequestExport,
    ExportBatch,
    /// Last: it seals the whole vault.
    Seal,
}

impl Rpc {
    const ALL: [Self; 27] = [
        Self::Tokenize,
        Self::TokenizeBatch,
        Self::Detokenize,
        Self::DetokenizeBatch,
        Self::GetTokenInfo,
        Self::DeleteToken,
        Self::GetStatus,
        Self::Unseal,
        Self::RotateDataKey,
        Self::RotateMasterKey,
        Self::Reencrypt,
        Self::RetireDataKey,
        Self::ShredTenant,
        Self::ListApprovals,
        Self::Approve,
        Self::ListEvents,
        Self::Verify,
        Self::AddPrincipal,
        Self::ListPrincipals,
        Self::RevokePrincipal,
        Self::UnlockPrincipal,
        Self::RecreateTenant,
        Self::Recover,
        Self::Compact,
        Self::RequestExport,
        Self::ExportBatch,
        Self::Seal,
    ];

    /// RPCs the matrix leaves to other tests, and why.
    const ELSEWHERE: [(&'static str, &'static str); 2] = [
        (
            "CreateSession",
            "access_e2e: any admin-class principal, its own session",
        ),
        ("DeleteSession", "access_e2e: the caller's own session only"),
    ];

    /// The roles that may call it (each in its own scope).
    fn roles(self) -> &'static [Role] {
        match self {
            Self::Tokenize | Self::TokenizeBatch => &[Role::Tokenize],
            Self::Detokenize | Self::DetokenizeBatch => &[Role::Detokenize],
            Self::GetTokenInfo => &[Role::ReadInfo],
            Self::DeleteToken => &[Role::Delete],
            Self::ListEvents | Self::Verify => &[Role::Audit],
            Self::Unseal
            | Self::RotateMasterKey
            | Self::Seal
            | Self::RecreateTenant
            | Self::Recover
            | Self::Compact
            | Self::RequestExport
            | Self::ExportBatch => &[Role::Operator],
            Self::RotateDataKey | Self::Reencrypt | Self::RetireDataKey | Self::ShredTenant => {
                &[Role::Admin]
            }
            Self::GetStatus
            | Self::ListApprovals
            | Self::Approve
            | Self::AddPrincipal
            | Self::ListPrincipals
            | Self::RevokePrincipal
            | Self::UnlockPrincipal => &[Role::Admin, Role::Operator],
        }
    }

    /// What an operator gets when the request targets the home tenant:
    /// status and principals of any tenant are theirs to see and manage;
    /// a tenant's approvals are not theirs to approve.
    fn answer_to_operator(self) -> Option<Code> {
        match self {
            Self::Approve => Some(Code::NotFound),
            Self::RotateMasterKey | Self::RequestExport => Some(Code::FailedPrecondition),
            // No export of the home tenant was approved.
            Self::ExportBatch => Some(Code::PermissionDenied),
            _ => None,
        }
    }

    /// What a caller holding the role, from the other tenant, gets when
    /// the request targets the home tenant's resources.
    fn answer_to_other_tenant(self) -> Option<Code> {
        match self {
            Self::Detokenize
            | Self::DetokenizeBatch
            | Self::GetTokenInfo
            | Self::DeleteToken
            | Self::Approve
            | Self::RevokePrincipal
            | Self::UnlockPrincipal => Some(Code::NotFound),
            Self::GetStatus
            | Self::RotateDataKey
            | Self::Reencrypt
            | Self::RetireDataKey
            | Self::ShredTenant => Some(Code::PermissionDenied),
            // Acting in their own tenant (or vault-wide) is allowed.
            _ => None,
        }
    }
}

struct Caller {
    name: String,
    tenant: &'static str,
    role: Role,
    auth: OtpAuth,
}

/// What one call did: its code, and whether it revealed anything of the
/// home tenant (an event or a principal).
struct Outcome {
    code: Code,
    saw_home: bool,
}

struct Fixture {
    server: Server,
    /// The dev processor of the home tenant, to make fresh tokens.
    processor: tessera::cli::client::Client,
    /// A pending grant of the home tenant's dev admin (a detokenize
    /// principal), for the Approve and ListApprovals rows.
    approval_id: String,
}

impl Fixture {
    async fn fresh_token(&mut self) -> String {
        self.processor
            .tokenize(v1::TokenizeRequest {
                pan: VISA.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }
}

fn outcome<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Home-tenant target for RPCs that name a tenant.
fn home() -> String {
    HOME.to_owned()
}

async fn call(fx: &mut Fixture, caller: &Caller, rpc: Rpc) -> Outcome {
    let channel = fx.server.channel().await;
    let mut tokenizer: TokenizerClient<AdminChannel> =
        TokenizerClient::with_interceptor(channel.clone(), caller.auth.clone());
    let mut admin = KeyAdminClient::with_interceptor(channel.clone(), caller.auth.clone());
    let mut audit = AuditClient::with_interceptor(channel.clone(), caller.auth.clone());
    let mut principals = PrincipalsClient::with_interceptor(channel, caller.auth.clone());
    let plain = |code| Outcome {
        code,
        saw_home: false,
    };
    match rpc {
        Rpc::Tokenize => plain(outcome(
            tokenizer
                .tokenize(v1::TokenizeRequest {
                    pan: VISA.into(),
                    ..Default::default()
                })
                .await,
        )),
        Rpc::TokenizeBatch => plain(outcome(
            tokenizer
                .tokenize_batch(v1::TokenizeBatchRequest {
                    items: vec![v1::TokenizeRequest {
                        pan: VISA.into(),
                        ..Default::default()
                    }],
                })
                .await,
        )),
        Rpc::Detokenize => {
            let token = fx.fresh_token().await;
            plain(outcome(
                tokenizer.detokenize(v1::DetokenizeRequest { token }).await,
            ))
        }
        Rpc::DetokenizeBatch => {
            let token = fx.fresh_token().await;
            let result = tokenizer
                .detokenize_batch(v1::DetokenizeBatchRequest {
                    items: vec![v1::DetokenizeRequest { token }],
                })
                .await;
            // The batch itself succeeds; the item carries the answer.
            plain(match result {
                Ok(r) => {
                    use v1::detokenize_result::Result as Item;
                    match &r.into_inner().results[0].result {
                        Some(Item::Error(s)) => Code::from_i32(s.code),
                        _ => Code::Ok,
                    }
                }
                Err(s) => s.code(),
            })
        }
        Rpc::GetTokenInfo => {
            let token = fx.fresh_token().await;
            plain(outcome(
                tokenizer
                    .get_token_info(v1::GetTokenInfoRequest { token })
                    .await,
            ))
        }
        Rpc::DeleteToken => {
            let token = fx.fresh_token().await;
            plain(outcome(
                tokenizer
                    .delete_token(v1::DeleteTokenRequest { token })
                    .await,
            ))
        }
        Rpc::GetStatus => plain(outcome(
            admin
                .get_status(v1::GetStatusRequest { tenant: home() })
                .await,
        )),
        Rpc::Unseal => plain(outcome(
            admin
                .unseal(v1::UnsealRequest {
                    share: b"not a share".to_vec(),
                })
                .await,
        )),
        Rpc::RotateDataKey => plain(outcome(
            admin
                .rotate_data_key(v1::RotateDataKeyRequest { tenant: home() })
                .await,
        )),
        Rpc::RotateMasterKey => plain(outcome(
            admin.rotate_master_key(v1::RotateMasterKeyRequest {}).await,
        )),
        Rpc::Reencrypt => plain(
            drained(
                admin
                    .reencrypt(v1::ReencryptRequest { tenant: home() })
                    .await,
            )
            .await,
        ),
        Rpc::RetireDataKey => plain(outcome(
            admin
                .retire_data_key(v1::RetireDataKeyRequest {
                    tenant: home(),
                    version: 99,
                })
                .await,
        )),
        Rpc::ShredTenant => plain(outcome(
            admin
                .shred_tenant(v1::ShredTenantRequest { tenant: home() })
                .await,
        )),
        Rpc::ListApprovals => match admin.list_approvals(v1::ListApprovalsRequest {}).await {
            Ok(r) => Outcome {
                code: Code::Ok,
                saw_home: r
                    .into_inner()
                    .approvals
                    .iter()
                    .any(|a| a.id == fx.approval_id),
            },
            Err(s) => plain(s.code()),
        },
        Rpc::Approve => plain(outcome(
            admin
                .approve(v1::ApproveRequest {
                    id: fx.approval_id.clone(),
                })
                .await,
        )),
        Rpc::ListEvents => match audit.list_events(v1::ListEventsRequest::default()).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut saw_home = false;
                while let Some(page) = stream.message().await.unwrap() {
                    saw_home |= page.events.iter().any(|e| e.tenant == HOME);
                }
                Outcome {
                    code: Code::Ok,
                    saw_home,
                }
            }
            Err(s) => plain(s.code()),
        },
        Rpc::Verify => plain(outcome(audit.verify(v1::VerifyRequest {}).await)),
        Rpc::AddPrincipal => plain(outcome(
            principals
                .add_principal(v1::AddPrincipalRequest {
                    name: format!("added-by-{}", caller.name),
                    // A role the caller's scope can hold.
                    roles: vec![
                        if caller.tenant == SYSTEM {
                            "audit"
                        } else {
                            "tokenize"
                        }
                        .into(),
                    ],
                    cert_identity: String::new(),
                    tenant: String::new(),
                })
                .await,
        )),
        Rpc::ListPrincipals => {
            match principals
                .list_principals(v1::ListPrincipalsRequest {})
                .await
            {
                Ok(r) => Outcome {
                    code: Code::Ok,
                    saw_home: r.into_inner().principals.iter().any(|p| p.tenant == HOME),
                },
                Err(s) => plain(s.code()),
            }
        }
        Rpc::RevokePrincipal => plain(outcome(
            principals
                .revoke_principal(v1::RevokePrincipalRequest {
                    name: "victim".into(),
                    cascade: false,
                })
                .await,
        )),
        Rpc::UnlockPrincipal => plain(outcome(
            principals
                .unlock_principal(v1::UnlockPrincipalRequest {
                    name: format!("{HOME}-tokenize"),
                })
                .await,
        )),
        Rpc::RecreateTenant => plain(outcome(
            admin
                .recreate_tenant(v1::RecreateTenantRequest { tenant: home() })
                .await,
        )),
        Rpc::Recover => plain(outcome(
            audit
                .recover(v1::RecoverRequest {
                    reason: "drill".into(),
                })
                .await,
        )),
        Rpc::Compact => plain(drained(admin.compact(v1::CompactRequest {}).await).await),
        Rpc::RequestExport => plain(outcome(
            admin
                .request_export(v1::RequestExportRequest { tenant: home() })
                .await,
        )),
        Rpc::ExportBatch => {
            let token = fx.fresh_token().await;
            plain(outcome(
                admin
                    .export_batch(v1::ExportBatchRequest {
                        approval_id: "0123456789abcdef".into(),
                        tokens: vec![token],
                    })
                    .await,
            ))
        }
        Rpc::Seal => plain(outcome(admin.seal(v1::SealRequest {}).await)),
    }
}

/// A dev server with one principal per role and tenant, plus a victim.
fn start(dir: &std::path::Path) -> (Server, Vec<Caller>) {
    let mut text = String::new();
    let mut callers = Vec::new();
    // The other tenant first: it must try the home tenant's approval and
    // victim before the home admin uses them; the system scope last, its
    // operator last of all, because Seal ends the run.
    let order = [AWAY, HOME, SYSTEM];
    for tenant in order {
        let mut roles: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| r.allowed_in(&tessera::domain::TenantId::from_stored(tenant).unwrap()))
            .collect();
        roles.sort_by_key(|r| matches!(r, Role::Admin | Role::Operator));
        for role in roles {
            let name = format!("{tenant}-{}", role.name());
            let key = tessera::access::api_key::generate().unwrap();
            text.push_str(&format!(
                "[[principals]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nroles = [\"{}\"]\napi_key_hash = \"{}\"\n",
                role.name(),
                key.hash.to_config_string()
            ));
            let auth = if matches!(role, Role::Admin | Role::Audit | Role::Operator) {
                let (file, secret) = common::totp_file(dir, &name);
                text.push_str(&format!("totp_secret_file = \"{}\"\n", file.display()));
                OtpAuth::new(key.key.expose_secret(), &secret)
            } else {
                OtpAuth::key_only(key.key.expose_secret())
            };
            callers.push(Caller {
                name,
                tenant,
                role,
                auth,
            });
        }
    }
    let victim = tessera::access::api_key::generate().unwrap();
    text.push_str(&format!(
        "[[principals]]\nname = \"victim\"\ntenant = \"{HOME}\"\nroles = [\"tokenize\"]\napi_key_hash = \"{}\"\n",
        victim.hash.to_config_string()
    ));
    let config = dir.join("tessera.toml");
    std::fs::write(&config, text).unwrap();
    let server = Server::start_dev_with_config(&config, &dir.join("data"), &dir.join("server.log"));
    (server, callers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_every_rpc_own_and_other_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (server, callers) = start(dir.path());
    let processor = server.client("processor").await;
    // A pending home-tenant approval for the Approve and ListApprovals rows.
    let mut dev_admin =
        PrincipalsClient::with_interceptor(server.channel().await, server.admin_auth("admin"));
    let approval_id = dev_admin
        .add_principal(v1::AddPrincipalRequest {
            name: "granted-reader".into(),
            roles: vec!["detokenize".into()],
            cert_identity: String::new(),
            tenant: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval_id;
    assert_eq!(approval_id.len(), 16);
    let mut fx = Fixture {
        server,
        processor,
        approval_id,
    };

    let mut failures = Vec::new();
    let mut table: BTreeMap<String, String> = BTreeMap::new();
    for rpc in Rpc::ALL {
        for caller in &callers {
            let got = call(&mut fx, caller, rpc).await;
            let allowed = rpc.roles().contains(&caller.role);
            let ok = if !allowed {
                got.code == Code::PermissionDenied
            } else if caller.tenant == SYSTEM {
                match rpc.answer_to_operator() {
                    Some(expected) => got.code == expected,
                    None => {
                        !matches!(
                            got.code,
                            Code::PermissionDenied
                                | Code::Unauthenticated
                                | Code::Unavailable
                                | Code::Internal
                        ) && (!got.saw_home || matches!(rpc, Rpc::ListPrincipals | Rpc::ListEvents))
                    }
                }
            } else if caller.tenant == HOME {
                !matches!(
                    got.code,
                    Code::PermissionDenied
                        | Code::Unauthenticated
                        | Code::Unavailable
                        | Code::Internal
                )
            } else {
                match rpc.answer_to_other_tenant() {
                    Some(expected) => got.code == expected,
                    None => {
                        !got.saw_home
                            && !matches!(
                                got.code,
                                Code::PermissionDenied | Code::Unauthenticated | Code::Unavailable
                            )
                    }
                }
            };
            table.insert(
                format!("{:?} by {}", rpc, caller.name),
                format!("{:?}", got.code),
            );
            if !ok {
                failures.push(format!(
                    "{rpc:?} by {} ({} tenant): {:?}{}",
                    caller.name,
                    caller.tenant,
                    got.code,
                    if got.saw_home {
                        " and saw the home tenant"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{table:#?}");
    // Every RPC was tried by every role of both tenants and the system scope.
    assert_eq!(table.len(), Rpc::ALL.len() * callers.len());
    // The allowed calls did what they say; no tenant admin reaches a
    // vault-wide action (finding 2).
    assert_eq!(table["Approve by default-admin"], "Ok");
    assert_eq!(table["Seal by _system-operator"], "Ok");
    assert_eq!(table["Unseal by _system-operator"], "Ok");
    for rpc in [
        "Seal",
        "Unseal",
        "RotateMasterKey",
        "RecreateTenant",
        "Recover",
        "Compact",
    ] {
        for admin in ["default-admin", "other-admin"] {
            assert_eq!(table[&format!("{rpc} by {admin}")], "PermissionDenied");
        }
    }
    assert_eq!(table["RevokePrincipal by default-admin"], "Ok");
    assert_eq!(table["Detokenize by default-detokenize"], "Ok");
    assert_eq!(table["DeleteToken by default-delete"], "Ok");
}

/// The code a server-streaming call ends with: its first error, or OK once
/// the stream ends.
async fn drained<T>(call: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>) -> Code {
    let mut stream = match call {
        Ok(response) => response.into_inner(),
        Err(status) => return status.code(),
    };
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Code::Ok,
            Err(status) => return status.code(),
        }
    }
}

/// A new RPC cannot slip past the matrix: every method the services
/// define is in it, or named with the test that covers it.
#[test]
fn the_matrix_names_every_rpc() {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(tessera::proto::FILE_DESCRIPTOR_SET).unwrap();
    let defined: std::collections::BTreeSet<String> = set
        .file
        .iter()
        .flat_map(|f| &f.service)
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_owned())
        .collect();
    let covered: std::collections::BTreeSet<String> = Rpc::ALL
        .iter()
        .map(|r| format!("{r:?}"))
        .chain(Rpc::ELSEWHERE.iter().map(|(name, _)| (*name).to_owned()))
        .collect();
    assert_eq!(defined, covered);
}
