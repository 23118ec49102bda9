//! `tessera principal add|list|revoke|unlock`: manage who may call the vault
//! on a running server (changes apply on the next call, no restart).

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::cli::client::{Connection, emit, fail, fail_status};
use crate::proto::v1;
use crate::proto::v1::principals_client::PrincipalsClient;

/// `tessera principal …`.
#[derive(Debug, Args)]
pub struct PrincipalArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PrincipalCommand,
    /// Connection.
    #[command(flatten)]
    pub conn: Connection,
}

/// Principal subcommands.
#[derive(Debug, Subcommand)]
pub enum PrincipalCommand {
    /// Create a principal in your tenant. Prints its API key once; admin,
    /// audit and operator principals also get an otpauth:// URI for their
    /// authenticator. The roles detokenize, admin, audit and operator wait
    /// for a second admin's `tessera keys approve`.
    Add {
        /// Unique name: 1 to 64 characters of A-Z a-z 0-9 . _ - @.
        name: String,
        /// Role (repeatable): tokenize, detokenize, read_info, delete,
        /// admin, audit, operator.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Client-certificate identity (SAN URI or DNS name) for mTLS.
        #[arg(long)]
        cert_identity: Option<String>,
        /// Tenant of the new principal (operators only; default: yours).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Your tenant's principals, revoked ones included.
    List,
    /// Revoke a principal: its key and certificate stop working at once.
    Revoke {
        /// The principal.
        name: String,
        /// Also revoke every principal it created (their keys were shown
        /// to it): for a compromised admin.
        #[arg(long)]
        cascade: bool,
    },
    /// Lift an anomaly lock.
    Unlock {
        /// The principal.
        name: String,
    },
}

/// Runs `tessera principal …`.
pub async fn run(args: PrincipalArgs) -> ExitCode {
    let channel = match crate::cli::client::channel(&args.conn).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let bearer = match args.conn.admin_bearer() {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let mut client = PrincipalsClient::with_interceptor(channel, bearer);
    let json = args.conn.json;
    match args.command {
        PrincipalCommand::Add {
            name,
            roles,
            cert_identity,
            tenant,
        } => {
            let request = v1::AddPrincipalRequest {
                name,
                roles,
                cert_identity: cert_identity.unwrap_or_default(),
                tenant: tenant.unwrap_or_default(),
            };
            match client.add_principal(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let value = serde_json::json!({
                        "name": r.name, "api_key": r.api_key, "otpauth_uri": r.otpauth_uri,
                        "approval_id": r.approval_id,
                    });
                    let mut text = format!(
                        "principal: {}\napi_key:   {}\nThe API key is shown once; only its hash is kept.",
                        r.name, r.api_key
                    );
                    if !r.otpauth_uri.is_empty() {
                        text.push_str(&format!(
                            "\notpauth:   {}\nAdd it to an authenticator app (or a QR code); it is shown once.",
                            r.otpauth_uri
                        ));
                    }
                    if !r.approval_id.is_empty() {
                        text.push_str(&format!(
                            "\napproval:  {}\nThese roles need a second admin: the credentials work after `tessera keys approve {}`.",
                            r.approval_id, r.approval_id
                        ));
                    }
                    emit(json, &value, &text)
                }
                Err(status) => fail_status(&status),
            }
        }
        PrincipalCommand::List => {
            match client.list_principals(v1::ListPrincipalsRequest {}).await {
                Ok(r) => {
                    let principals = r.into_inner().principals;
                    let rows: Vec<_> = principals
                        .iter()
                        .map(|p| {
                            let state = if p.revoked {
                                "revoked"
                            } else if p.locked {
                                "locked"
                            } else {
                                "active"
                            };
                            format!(
                                "{:<20} {:<8} {:<7} {:<40} {}",
                                p.name,
                                state,
                                p.origin,
                                p.roles.join(","),
                                p.cert_identity
                            )
                        })
                        .collect();
                    let value = serde_json::json!(
                        principals
                            .iter()
                            .map(|p| serde_json::json!({
                                "name": p.name, "tenant": p.tenant, "roles": p.roles,
                                "revoked": p.revoked, "locked": p.locked, "origin": p.origin,
                                "has_api_key": p.has_api_key, "has_totp": p.has_totp,
                                "cert_identity": p.cert_identity,
                            }))
                            .collect::<Vec<_>>()
                    );
                    emit(json, &value, &rows.join("\n"))
                }
                Err(status) => fail_status(&status),
            }
        }
        PrincipalCommand::Revoke { name, cascade } => {
            match client
                .revoke_principal(v1::RevokePrincipalRequest {
                    name: name.clone(),
                    cascade,
                })
                .await
            {
                Ok(r) => {
                    let also = r.into_inner().also_revoked;
                    let mut text = format!("revoked {name}");
                    if !also.is_empty() {
                        text.push_str(&format!(" and what it created: {}", also.join(", ")));
                    }
                    emit(
                        json,
                        &serde_json::json!({ "revoked": name, "also_revoked": also }),
                        &text,
                    )
                }
                Err(status) => fail_status(&status),
            }
        }
        PrincipalCommand::Unlock { name } => {
            match client
                .unlock_principal(v1::UnlockPrincipalRequest { name: name.clone() })
                .await
            {
                Ok(r) => {
                    let was_locked = r.into_inner().was_locked;
                    let text = if was_locked {
                        format!("unlocked {name}")
                    } else {
                        format!("{name} was not locked")
                    };
                    emit(
                        json,
                        &serde_json::json!({ "name": name, "was_locked": was_locked }),
                        &text,
                    )
                }
                Err(status) => fail_status(&status),
            }
        }
    }
}
