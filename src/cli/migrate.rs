//! `tessera migrate`: applies the PostgreSQL schema in `migrations/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::EXIT_CONFIG;
use crate::config::RawConfig;
use crate::config::source::EnvSource;
use crate::server::open_postgres;

/// Arguments of `tessera migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The service's configuration file; only its `[store]` section is read
    /// (with `TESSERA__STORE__…` variables over it).
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Also grant this role what serving needs and no more (no UPDATE or
    /// DELETE on records and audit events, no ownership): run `migrate` as
    /// the tables' owner and `serve` as this role.
    #[arg(long, value_name = "ROLE")]
    pub grant_to: Option<String>,
}

/// Applies every migration the database lacks, once, even when several
/// replicas run this together; prints the schema's version (stdout is the
/// command's answer).
#[allow(clippy::print_stdout)]
pub async fn run(args: MigrateArgs) -> ExitCode {
    let raw = match RawConfig::load(args.config.as_deref(), &EnvSource) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("tessera: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if raw.store.backend != "postgres" {
        eprintln!(
            "tessera: configuration error: migrate applies to [store] backend = \"postgres\""
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut settings =
        match crate::config::postgres_settings(&raw.store, crate::config::Profile::Production) {
            Ok(settings) => settings,
            Err(e) => {
                eprintln!("tessera: configuration error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    settings.migrate = true;
    let granted = match open_postgres(&settings).await {
        Ok(store) => match &args.grant_to {
            Some(role) => store.grant(role).await.map(|()| store),
            None => Ok(store),
        }
        .map_err(crate::server::StartError::from),
        Err(e) => Err(e),
    };
    match granted {
        Ok(_) => {
            println!(
                "schema is at version {}",
                crate::store::postgres::migrate::latest()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera: migrate: {e}");
            ExitCode::FAILURE
        }
    }
}
