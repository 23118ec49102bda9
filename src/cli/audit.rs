//! `tessera audit verify`, `tessera audit list` and `tessera audit recover`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::client::{Bearer, Connection, emit, fail, fail_status};
use crate::proto::v1;
use crate::proto::v1::audit_client::AuditClient;

/// `tessera audit …`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
    /// Connection (an API key with the `audit` role).
    #[command(flatten)]
    pub conn: Connection,
}

/// Audit subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and check the signed head; exits 1 when the
    /// log was tampered with, naming the first bad position.
    Verify,
    /// List events, oldest first.
    List {
        /// Only this action (RPC name), e.g. Detokenize.
        #[arg(long)]
        action: Option<String>,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Operators: continue after a failed verification. Appends an
    /// `AuditRecovered` event stating what was found; until then the vault
    /// refuses every audited call. Investigate (and keep a copy of the
    /// store) first.
    Recover {
        /// Why (an incident number); recorded in the event.
        #[arg(long)]
        reason: String,
    },
}

async fn connect(
    conn: &Connection,
) -> Result<AuditClient<InterceptedService<Channel, Bearer>>, ExitCode> {
    let channel = crate::cli::client::channel(conn)
        .await
        .map_err(|e| fail(&e))?;
    let bearer = conn.admin_bearer().map_err(|e| fail(&e))?;
    Ok(AuditClient::with_interceptor(channel, bearer))
}

/// Runs `tessera audit …`.
pub async fn run(args: AuditArgs) -> ExitCode {
    let mut client = match connect(&args.conn).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let json = args.conn.json;
    match args.command {
        AuditCommand::Verify => match client.verify(v1::VerifyRequest {}).await {
            Ok(resp) => {
                let r = resp.into_inner();
                let value = serde_json::json!({
                    "intact": r.intact, "events": r.events, "first_bad_position": r.first_bad_position,
                    "problem": r.problem, "head_signature_checked": r.head_signature_checked,
                    "signed_through": r.signed_through, "recovered_at": r.recovered_at,
                });
                let text = if r.intact {
                    format!(
                        "intact: {} events; signature {} through event {}",
                        r.events,
                        if r.head_signature_checked {
                            "checked"
                        } else {
                            "not checked (sealed)"
                        },
                        r.signed_through
                            .map_or_else(|| "-".to_owned(), |s| s.to_string())
                    )
                } else {
                    format!(
                        "TAMPERED at event {}: {}",
                        r.first_bad_position
                            .map_or_else(|| "?".to_owned(), |p| p.to_string()),
                        r.problem
                    )
                };
                let text = if r.recovered_at.is_empty() {
                    text
                } else {
                    format!(
                        "{text}\nrecovered by an operator at event(s) {:?}",
                        r.recovered_at
                    )
                };
                let code = emit(json, &value, &text);
                if r.intact { code } else { ExitCode::FAILURE }
            }
            Err(status) => fail_status(&status),
        },
        AuditCommand::Recover { reason } => {
            match client.recover(v1::RecoverRequest { reason }).await {
                Ok(resp) => {
                    let r = resp.into_inner();
                    let value = serde_json::json!({"position": r.position, "found": r.found});
                    let text = format!(
                        "recovered: event {} records what was found: {}",
                        r.position, r.found
                    );
                    emit(json, &value, &text)
                }
                Err(status) => fail_status(&status),
            }
        }
        AuditCommand::List { action, principal } => {
            let request = v1::ListEventsRequest {
                action: action.unwrap_or_default(),
                principal: principal.unwrap_or_default(),
                ..Default::default()
            };
            let mut stream = match client.list_events(request).await {
                Ok(resp) => resp.into_inner(),
                Err(status) => return fail_status(&status),
            };
            loop {
                match stream.message().await {
                    Ok(Some(page)) => {
                        for e in page.events {
                            let time = e.time.as_ref().map(ToString::to_string).unwrap_or_default();
                            let value = serde_json::json!({
                                "position": e.position, "time": time, "request_id": e.request_id,
                                "principal": e.principal, "tenant": e.tenant, "action": e.action,
                                "resource": e.resource, "outcome": e.outcome, "origin": e.origin,
                            });
                            let text = format!(
                                "{:>6} {time} {} {}/{} {} {} {} from {}",
                                e.position,
                                e.request_id,
                                e.tenant,
                                e.principal,
                                e.action,
                                e.resource,
                                e.outcome,
                                e.origin
                            );
                            let _ = emit(json, &value, &text);
                        }
                    }
                    Ok(None) => return ExitCode::SUCCESS,
                    Err(status) => return fail_status(&status),
                }
            }
        }
    }
}
