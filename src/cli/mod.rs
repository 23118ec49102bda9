//! The `tessera` command line: `serve` and the client commands.

pub mod audit;
pub mod backup;
pub mod bench;
pub mod cardrun;
pub mod client;
pub mod config;
pub mod export;
pub mod hsm;
pub mod import;
pub mod init;
pub mod keys;
pub mod migrate;
pub mod principal;
pub mod reload;
pub mod serve;
pub mod session;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for bad configuration (BSD `EX_USAGE`), returned before any
/// port is bound.
pub const EXIT_CONFIG: u8 = 64;

/// Tessera: a payment-card tokenization vault.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the vault server.
    Serve(serve::ServeArgs),
    /// Replace a PAN with a token (reads the PAN from stdin when not given).
    Tokenize(client::TokenizeArgs),
    /// Return the PAN behind a token.
    Detokenize(client::TokenArgs),
    /// Show a token's public facts.
    Info(client::TokenArgs),
    /// Delete a token.
    Delete(client::TokenArgs),
    /// Create a new deployment: Shamir-split master key, custodian shares
    /// and keys, config file.
    Init(init::InitArgs),
    /// Submit one unseal share (Shamir), or, on other backends, ask to
    /// reopen the vault (a second operator approves).
    Unseal(keys::UnsealArgs),
    /// Seal the vault: every key leaves memory at once.
    Seal(keys::SealArgs),
    /// Key administration.
    Keys(keys::KeysArgs),
    /// HSM set-up (PKCS#11).
    Hsm(hsm::HsmArgs),
    /// Read and verify the audit log.
    Audit(audit::AuditArgs),
    /// Manage principals on a running server: add, list, revoke, unlock.
    Principal(principal::PrincipalArgs),
    /// Open an admin session (API key + TOTP code) for a key ceremony;
    /// prints `export TESSERA_SESSION=…`.
    Login(session::SessionArgs),
    /// End the admin session in TESSERA_SESSION.
    Logout(session::SessionArgs),
    /// Load a running server and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Tokenize a card file (CSV or JSON Lines) into a copy whose card
    /// column holds tokens; resumable, rejected rows reported by line.
    Import(import::ImportArgs),
    /// Operators: ask to export one tenant's PANs (a second operator
    /// approves with `tessera keys approve`).
    ExportRequest(export::ExportRequestArgs),
    /// Operators: with an approved export, turn a file of tokens into the
    /// same file with PANs (mode 0600); resumable, audited per batch.
    Export(export::ExportArgs),
    /// Check or print the configuration `serve` would run with.
    Config(config::ConfigArgs),
    /// Apply the PostgreSQL schema (`[store] backend = "postgres"`).
    Migrate(migrate::MigrateArgs),
    /// Write a snapshot of a stopped server's sled store to one file.
    Backup(backup::BackupArgs),
    /// Restore a snapshot into a data directory without a store.
    Restore(backup::RestoreArgs),
}

/// The README's CLI reference: every command and subcommand with the first
/// line of its help, as clap shows it (`tests/readme.rs` holds the README
/// to this, so the reference cannot drift from the code).
pub fn reference_markdown() -> String {
    use clap::CommandFactory;
    fn walk(command: &clap::Command, path: &str, out: &mut Vec<String>) {
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("{path} {}", sub.get_name());
            let about = sub
                .get_about()
                .map(|a| a.to_string())
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            out.push(format!("| `{name}` | {about} |"));
            walk(sub, &name, out);
        }
    }
    let mut lines = vec![
        "| command | what it does |".to_owned(),
        "|---|---|".to_owned(),
    ];
    walk(&Cli::command(), "tessera", &mut lines);
    lines.join("\n") + "\n"
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Tokenize(args) => client::tokenize(args).await,
            Command::Detokenize(args) => client::detokenize(args).await,
            Command::Info(args) => client::info(args).await,
            Command::Delete(args) => client::delete(args).await,
            Command::Init(args) => init::run(&args).await,
            Command::Unseal(args) => keys::unseal(args).await,
            Command::Seal(args) => keys::seal(args).await,
            Command::Keys(args) => keys::keys(args).await,
            Command::Hsm(args) => hsm::run(args),
            Command::Audit(args) => audit::run(args).await,
            Command::Principal(args) => principal::run(args).await,
            Command::Login(args) => session::login(args).await,
            Command::Logout(args) => session::logout(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Config(args) => config::run(args),
            Command::Import(args) => import::run(args).await,
            Command::ExportRequest(args) => export::request(args).await,
            Command::Export(args) => export::run(args).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Backup(args) => backup::backup(&args),
            Command::Restore(args) => backup::restore(&args),
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_flags_go_after_subcommands() {
        let cli = Cli::try_parse_from([
            "tessera",
            "audit",
            "verify",
            "--addr",
            "http://h:1",
            "--api-key",
            "k",
        ])
        .unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("not audit")
        };
        assert_eq!(args.conn.addr, "http://h:1");
        assert_eq!(args.conn.api_key.as_deref(), Some("k"));
        assert!(Cli::try_parse_from(["tessera", "keys", "status", "--json"]).is_ok());
    }
}
