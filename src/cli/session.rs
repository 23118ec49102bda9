//! `tessera login` and `tessera logout`: an admin session for a key
//! ceremony, so one TOTP code covers a run of admin commands.

use std::process::ExitCode;

use clap::Args;

use crate::cli::client::{Connection, emit, fail, fail_status};
use crate::proto::v1;
use crate::proto::v1::principals_client::PrincipalsClient;

/// `tessera login` / `tessera logout`.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Connection (an API key and, for login, a TOTP code).
    #[command(flatten)]
    pub conn: Connection,
}

/// Opens a session with the API key and a TOTP code and prints
/// `export TESSERA_SESSION=…`: evaluate it in the shell, and the key
/// commands that follow send it instead of asking for a code.
pub async fn login(args: SessionArgs) -> ExitCode {
    let channel = match crate::cli::client::channel(&args.conn).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let bearer = match args.conn.otp_bearer() {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let mut client = PrincipalsClient::with_interceptor(channel, bearer);
    match client.create_session(v1::CreateSessionRequest {}).await {
        Ok(resp) => {
            let r = resp.into_inner();
            let expires = r.expires_at.map(|t| t.to_string()).unwrap_or_default();
            emit(
                args.conn.json,
                &serde_json::json!({ "session": r.session, "expires_at": expires }),
                &format!("export TESSERA_SESSION={}\n# expires {expires}", r.session),
            )
        }
        Err(status) => fail_status(&status),
    }
}

/// Ends the session in `TESSERA_SESSION` (or `--session`).
pub async fn logout(args: SessionArgs) -> ExitCode {
    if args.conn.session.is_none() {
        return fail("no session: set TESSERA_SESSION or pass --session");
    }
    let channel = match crate::cli::client::channel(&args.conn).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let bearer = match args.conn.admin_bearer() {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let mut client = PrincipalsClient::with_interceptor(channel, bearer);
    match client.delete_session(v1::DeleteSessionRequest {}).await {
        Ok(_) => emit(
            args.conn.json,
            &serde_json::json!({ "logged_out": true }),
            "session ended",
        ),
        Err(status) => fail_status(&status),
    }
}
