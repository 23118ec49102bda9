//! `tessera export-request` and `tessera export`: the inverse of import,
//! for a migration to another processor. An operator asks to export one
//! tenant (`export-request`), a second operator approves it (`tessera keys
//! approve ID`), and then the first runs `export` with the approval id: a
//! file of tokens in, the same file out with its token column replaced by
//! PANs, created with mode 0600 only. Every batch is audited under the
//! tenant before its PANs leave the server; the run is checkpointed and
//! resumable like an import ([`crate::cli::cardrun`]).
//!
//! Each batch call carries the operator's admin session: the one in
//! `TESSERA_SESSION`, or one opened for the run with the TOTP code (asked
//! for once) and closed at its end, ctrl-c included. A session lasts
//! `access.session_minutes` (15 by default): an export that outlives it
//! stops with UNAUTHENTICATED and resumes with a fresh code.

use std::process::ExitCode;

use clap::Args;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::cardrun::{self, BatchCall, FileArgs};
use crate::cli::client::{self, Bearer, Connection, fail, fail_status};
use crate::proto::v1;
use crate::proto::v1::key_admin_client::KeyAdminClient;
use crate::proto::v1::principals_client::PrincipalsClient;

/// `tessera export-request`.
#[derive(Debug, Args)]
pub struct ExportRequestArgs {
    /// The tenant whose PANs are to be exported.
    #[arg(long)]
    pub tenant: String,
    /// Connection (an operator's API key and TOTP code or session).
    #[command(flatten)]
    pub conn: Connection,
}

/// `tessera export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Input (a file of tokens), output (PANs, mode 0600), column (default
    /// `token`), format, batch size.
    #[command(flatten)]
    pub files: FileArgs,
    /// The approved export's id (from `tessera export-request`).
    #[arg(long)]
    pub approval: String,
    /// Connection (the operator who asked).
    #[command(flatten)]
    pub conn: Connection,
}

/// Files the request; prints the approval id a second operator approves.
pub async fn request(args: ExportRequestArgs) -> ExitCode {
    let channel = match client::channel(&args.conn).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let bearer = match args.conn.admin_bearer() {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    match KeyAdminClient::with_interceptor(channel, bearer)
        .request_export(v1::RequestExportRequest {
            tenant: args.tenant,
        })
        .await
    {
        // Pending is the only answer: fail_status prints it and exits 0.
        Err(status) => fail_status(&status),
        Ok(_) => fail("the server exported without an approval; report this"),
    }
}

type AdminClient = KeyAdminClient<InterceptedService<Channel, Bearer>>;

/// ExportBatch under one approval.
struct Export {
    client: AdminClient,
    approval: String,
}

impl BatchCall for Export {
    async fn call(&mut self, tokens: Vec<String>) -> Result<Vec<Result<String, String>>, Status> {
        let results = self
            .client
            .export_batch(v1::ExportBatchRequest {
                approval_id: self.approval.clone(),
                tokens,
            })
            .await?
            .into_inner()
            .results;
        Ok(results
            .into_iter()
            .map(|result| match result.result {
                Some(v1::detokenize_result::Result::Pan(p)) => Ok(p.pan),
                Some(v1::detokenize_result::Result::Error(e)) => Err(cardrun::item_error(&e)),
                None => Err("the server gave no result".to_owned()),
            })
            .collect())
    }
}

/// Runs `tessera export`.
pub async fn run(args: ExportArgs) -> ExitCode {
    let channel = match client::channel(&args.conn).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // One session for the whole run: a TOTP code is good for one call.
    let (bearer, opened) = match &args.conn.session {
        Some(_) => match args.conn.admin_bearer() {
            Ok(b) => (b, false),
            Err(e) => return fail(&e),
        },
        None => {
            let otp = match args.conn.otp_bearer() {
                Ok(b) => b,
                Err(e) => return fail(&e),
            };
            let session = match PrincipalsClient::with_interceptor(channel.clone(), otp)
                .create_session(v1::CreateSessionRequest {})
                .await
            {
                Ok(r) => r.into_inner().session,
                Err(status) => return fail_status(&status),
            };
            let bearer = args
                .conn
                .bearer()
                .ok()
                .and_then(|b| b.with_session(&session));
            match bearer {
                Some(b) => (b, true),
                None => return fail("the server's session is not a valid header value"),
            }
        }
    };
    let mut export = Export {
        client: KeyAdminClient::with_interceptor(channel.clone(), bearer.clone()),
        approval: args.approval.clone(),
    };
    // Ctrl-c ends the run between writes (the checkpoint holds), and the
    // session this run opened is closed rather than left live (review
    // finding).
    let code = tokio::select! {
        code = cardrun::run(&args.files, "token", "exported", &mut export) => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("tessera: interrupted; run the same command again to resume");
            ExitCode::from(130)
        }
    };
    if opened {
        let _ = PrincipalsClient::with_interceptor(channel, bearer)
            .delete_session(v1::DeleteSessionRequest {})
            .await;
    }
    code
}
