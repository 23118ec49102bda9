//! `tessera config check` and `tessera config print`: the configuration as
//! `serve` would see it, without starting anything.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::cli::EXIT_CONFIG;
use crate::cli::serve::{self, ServeArgs};

/// `tessera config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `tessera config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration with the same rules as `serve` (file, then
    /// TESSERA__… environment, then flags); exit 64 listing every problem.
    Check(ServeArgs),
    /// Print the effective configuration (defaults, file, environment and
    /// flags) as TOML, with key hashes and any URL password redacted.
    Print(ServeArgs),
}

/// Runs `tessera config …`.
#[allow(clippy::print_stdout)]
pub fn run(args: ConfigArgs) -> ExitCode {
    let (ConfigCommand::Check(serve_args) | ConfigCommand::Print(serve_args)) = &args.command;
    let raw = match serve::effective(serve_args) {
        Ok(raw) => raw,
        Err(e) => return report(&e),
    };
    match args.command {
        ConfigCommand::Check(serve_args) => match raw.check(serve_args.profile()) {
            Ok(config) => {
                println!(
                    "configuration is valid ({} profile, {} store, {} KMS)",
                    match serve_args.profile() {
                        crate::config::Profile::Dev => "dev",
                        crate::config::Profile::Production => "production",
                    },
                    config.store.name(),
                    kms_name(&config.kms),
                );
                ExitCode::SUCCESS
            }
            Err(e) => report(&e),
        },
        ConfigCommand::Print(_) => match raw.redacted().to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => report(&e),
        },
    }
}

fn kms_name(kms: &crate::config::KmsBackend) -> &'static str {
    use crate::config::KmsBackend;
    match kms {
        KmsBackend::Dev { .. } => "dev",
        KmsBackend::Shamir => "shamir",
        KmsBackend::Pkcs11(_) => "pkcs11",
        KmsBackend::AwsKms(_) => "aws-kms",
    }
}

/// Every problem on its own line of stderr; exit 64.
fn report(e: &crate::config::ConfigError) -> ExitCode {
    for problem in e.problems() {
        eprintln!("tessera: {problem}");
    }
    ExitCode::from(EXIT_CONFIG)
}
