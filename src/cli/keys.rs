//! Key administration commands: `unseal`, `seal`, `keys status|rotate|retire|shred`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::client::{Bearer, Connection, emit, fail, fail_status};
use crate::proto::v1;
use crate::proto::v1::key_admin_client::KeyAdminClient;

type Client = KeyAdminClient<InterceptedService<Channel, Bearer>>;

/// `tessera unseal`.
#[derive(Debug, Args)]
pub struct UnsealArgs {
    /// The share file written by `tessera init`.
    #[arg(long)]
    pub share_file: Option<PathBuf>,
    /// Connection.
    #[command(flatten)]
    pub conn: Connection,
}

/// `tessera seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// Connection.
    #[command(flatten)]
    pub conn: Connection,
}

/// `tessera keys …`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
    /// Connection.
    #[command(flatten)]
    pub conn: Connection,
}

/// Key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Seal state, master key and data key versions.
    Status,
    /// New data key version for the caller's tenant.
    Rotate,
    /// Rewrite every record under the newest data key, with a progress bar.
    Reencrypt,
    /// New master key version; every data key is rewrapped under it.
    /// Operators only; needs a second operator's approval (dual control).
    RotateMaster,
    /// Pending dual-control approvals.
    Approvals,
    /// Approve (and so run) another admin's or operator's pending request.
    Approve {
        /// The approval id.
        id: String,
    },
    /// Destroy a data key version no record uses.
    Retire {
        /// The version.
        #[arg(long)]
        version: u32,
    },
    /// Destroy every key of the caller's tenant (crypto-shredding).
    Shred {
        /// Confirms that every token of the tenant becomes unreadable forever.
        #[arg(long)]
        yes_destroy_all_tokens: bool,
    },
    /// Operators: let a shredded tenant tokenize again, under new keys.
    RecreateTenant {
        /// The tenant.
        tenant: String,
    },
    /// Operators: purge dead tokens past the grace period
    /// (`tokens.purge_grace_s`) and drop superseded seal versions, in
    /// every tenant. Audited page by page; continues a run that stopped.
    /// Exits 1 when a re-sealed record's newest version did not open.
    Compact,
}

async fn connect(conn: &Connection) -> Result<Client, ExitCode> {
    let channel = crate::cli::client::channel(conn)
        .await
        .map_err(|e| fail(&e))?;
    let bearer = conn.admin_bearer().map_err(|e| fail(&e))?;
    Ok(KeyAdminClient::with_interceptor(channel, bearer))
}

/// `tessera unseal`.
pub async fn unseal(args: UnsealArgs) -> ExitCode {
    let share = match &args.share_file {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => return fail(&format!("cannot read {}: {e}", path.display())),
        },
        None => Vec::new(),
    };
    let mut client = match connect(&args.conn).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.unseal(v1::UnsealRequest { share }).await {
        Ok(resp) => {
            let r = resp.into_inner();
            let text = if r.sealed {
                format!(
                    "sealed: {} of {} shares received",
                    r.shares_received, r.threshold
                )
            } else {
                "unsealed".to_owned()
            };
            let value = serde_json::json!({
                "sealed": r.sealed, "shares_received": r.shares_received, "threshold": r.threshold,
            });
            emit(args.conn.json, &value, &text)
        }
        Err(status) => fail_status(&status),
    }
}

/// `tessera seal`.
pub async fn seal(args: SealArgs) -> ExitCode {
    let mut client = match connect(&args.conn).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.seal(v1::SealRequest {}).await {
        Ok(_) => emit(
            args.conn.json,
            &serde_json::json!({ "sealed": true }),
            "sealed",
        ),
        Err(status) => fail_status(&status),
    }
}

/// `tessera keys …`.
pub async fn keys(args: KeysArgs) -> ExitCode {
    let mut client = match connect(&args.conn).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let json = args.conn.json;
    match args.command {
        KeysCommand::Status => match client.get_status(v1::GetStatusRequest::default()).await {
            Ok(resp) => {
                let s = resp.into_inner();
                let keys: Vec<serde_json::Value> = s
                    .data_keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "version": k.version,
                            "state": v1::KeyState::try_from(k.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN"),
                            "created_at": k.created_at.as_ref().map(ToString::to_string),
                            "record_count": k.record_count,
                            "overdue": k.overdue,
                        })
                    })
                    .collect();
                let value = serde_json::json!({
                    "sealed": s.sealed, "kms_backend": s.kms_backend, "master_key_id": s.master_key_id,
                    "unseal_shares_received": s.unseal_shares_received, "unseal_threshold": s.unseal_threshold,
                    "tenant": s.tenant, "data_keys": keys,
                });
                let mut text = format!(
                    "sealed:     {}\nkms:        {}\nmaster key: {}\ntenant:     {}",
                    s.sealed, s.kms_backend, s.master_key_id, s.tenant
                );
                for k in &keys {
                    text.push_str(&format!(
                        "\n  DEK v{}  {}  records={}  overdue={}",
                        k["version"],
                        k["state"].as_str().unwrap_or(""),
                        k["record_count"],
                        k["overdue"]
                    ));
                }
                emit(json, &value, &text)
            }
            Err(status) => fail_status(&status),
        },
        KeysCommand::Rotate => match client
            .rotate_data_key(v1::RotateDataKeyRequest::default())
            .await
        {
            Ok(resp) => {
                let v = resp.into_inner().version;
                emit(
                    json,
                    &serde_json::json!({ "version": v }),
                    &format!("data key version {v} is active"),
                )
            }
            Err(status) => fail_status(&status),
        },
        KeysCommand::Reencrypt => reencrypt(&mut client, json).await,
        KeysCommand::Compact => compact(&mut client, json).await,
        KeysCommand::Approvals => match client.list_approvals(v1::ListApprovalsRequest {}).await {
            Ok(resp) => {
                let list = resp.into_inner().approvals;
                let value: Vec<serde_json::Value> = list
                    .iter()
                    .map(|a| serde_json::json!({ "id": a.id, "action": a.action, "detail": a.detail, "requested_by": a.requested_by }))
                    .collect();
                let text = if list.is_empty() {
                    "no pending approvals".to_owned()
                } else {
                    list.iter()
                        .map(|a| {
                            format!(
                                "{}  {} {}  requested by {}",
                                a.id, a.action, a.detail, a.requested_by
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                emit(json, &serde_json::Value::Array(value), &text)
            }
            Err(status) => fail_status(&status),
        },
        KeysCommand::Approve { id } => match client.approve(v1::ApproveRequest { id }).await {
            Ok(resp) => {
                let r = resp.into_inner();
                emit(
                    json,
                    &serde_json::json!({ "action": r.action, "result": r.result }),
                    &format!("{}: {}", r.action, r.result),
                )
            }
            Err(status) => fail_status(&status),
        },
        KeysCommand::RotateMaster => match client
            .rotate_master_key(v1::RotateMasterKeyRequest {})
            .await
        {
            Ok(resp) => {
                let r = resp.into_inner();
                emit(
                    json,
                    &serde_json::json!({ "master_key_id": r.master_key_id, "rewrapped": r.rewrapped }),
                    &format!(
                        "master key {} is current; {} data keys rewrapped",
                        r.master_key_id, r.rewrapped
                    ),
                )
            }
            Err(status) => fail_status(&status),
        },
        KeysCommand::Retire { version } => {
            match client
                .retire_data_key(v1::RetireDataKeyRequest {
                    tenant: String::new(),
                    version,
                })
                .await
            {
                Ok(_) => emit(
                    json,
                    &serde_json::json!({ "destroyed": version }),
                    &format!("data key version {version} destroyed"),
                ),
                Err(status) => fail_status(&status),
            }
        }
        KeysCommand::Shred {
            yes_destroy_all_tokens,
        } => {
            if !yes_destroy_all_tokens {
                return fail(
                    "shredding makes every token of the tenant unreadable forever; pass --yes-destroy-all-tokens",
                );
            }
            match client.shred_tenant(v1::ShredTenantRequest::default()).await {
                Ok(resp) => {
                    let n = resp.into_inner().keys_destroyed;
                    emit(
                        json,
                        &serde_json::json!({ "keys_destroyed": n }),
                        &format!("{n} keys destroyed"),
                    )
                }
                Err(status) => fail_status(&status),
            }
        }
        KeysCommand::RecreateTenant { tenant } => {
            match client
                .recreate_tenant(v1::RecreateTenantRequest {
                    tenant: tenant.clone(),
                })
                .await
            {
                Ok(_) => emit(
                    json,
                    &serde_json::json!({ "recreated": tenant }),
                    &format!("tenant {tenant} may tokenize again, under new keys"),
                ),
                Err(status) => fail_status(&status),
            }
        }
    }
}

/// A one-line text progress bar: `[#####.....]  50%  500/1000`.
pub fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let done = done.min(total);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    format!("[{bar}] {percent:>3}%  {done}/{total}")
}

async fn reencrypt(client: &mut Client, json: bool) -> ExitCode {
    use std::io::Write;
    let mut stream = match client.reencrypt(v1::ReencryptRequest::default()).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => return fail_status(&status),
    };
    let mut stderr = std::io::stderr();
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                if !json {
                    let _ = write!(stderr, "\r{}", progress_bar(p.done, p.total));
                    let _ = stderr.flush();
                }
                if p.finished {
                    if !json {
                        let _ = writeln!(stderr);
                    }
                    let value = serde_json::json!({
                        "done": p.done, "total": p.total, "rewritten": p.rewritten,
                        "target_version": p.target_version, "skipped_unreadable": p.skipped_unreadable,
                    });
                    let mut text = format!(
                        "re-encrypted {} of {} records under data key version {}",
                        p.rewritten, p.total, p.target_version
                    );
                    if p.skipped_unreadable > 0 {
                        text.push_str(&format!(
                            "; skipped {} records whose keys a shred destroyed",
                            p.skipped_unreadable
                        ));
                    }
                    return emit(json, &value, &text);
                }
            }
            Ok(None) => {
                return fail("the server closed the progress stream before the job finished");
            }
            Err(status) => return fail_status(&status),
        }
    }
}

async fn compact(client: &mut Client, json: bool) -> ExitCode {
    use std::io::Write;
    let mut stream = match client.compact(v1::CompactRequest {}).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => return fail_status(&status),
    };
    let mut stderr = std::io::stderr();
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                if !json {
                    let _ = write!(
                        stderr,
                        "\r{} records examined, {} purged",
                        p.examined, p.purged
                    );
                    let _ = stderr.flush();
                }
                if p.finished {
                    if !json {
                        let _ = writeln!(stderr);
                    }
                    let value = serde_json::json!({
                        "examined": p.examined, "expired": p.expired, "purged": p.purged,
                        "seal_versions_dropped": p.seal_versions_dropped,
                        "dead_in_grace": p.dead_in_grace, "unopenable": p.unopenable,
                        "dead_by_s": p.dead_by.map_or(0, |t| t.seconds),
                    });
                    let mut text = format!(
                        "examined {} records: {} found expired, {} purged, {} seal versions dropped, {} dead but within the grace period",
                        p.examined, p.expired, p.purged, p.seal_versions_dropped, p.dead_in_grace
                    );
                    if p.unopenable > 0 {
                        text.push_str(&format!(
                            "; {} re-sealed records kept their older versions because the newest did not open (see the server log)",
                            p.unopenable
                        ));
                    }
                    let written = emit(json, &value, &text);
                    // A record whose newest version does not open needs a
                    // look: a cron job running this should notice.
                    return if p.unopenable > 0 {
                        ExitCode::FAILURE
                    } else {
                        written
                    };
                }
            }
            Ok(None) => {
                return fail("the server closed the progress stream before the job finished");
            }
            Err(status) => return fail_status(&status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills_proportionally() {
        assert_eq!(
            progress_bar(0, 10),
            format!("[{}]   0%  0/10", ".".repeat(30))
        );
        assert_eq!(
            progress_bar(5, 10),
            format!("[{}{}]  50%  5/10", "#".repeat(15), ".".repeat(15))
        );
        assert_eq!(
            progress_bar(0, 0),
            format!("[{}] 100%  0/0", "#".repeat(30))
        );
    }
}
