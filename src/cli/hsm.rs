//! `tessera hsm create-kek`: make the master key on a PKCS#11 token.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::cli::EXIT_CONFIG;
use crate::kms::pkcs11::{Pkcs11Config, Pkcs11Kms};

/// `tessera hsm …`.
#[derive(Debug, Args)]
pub struct HsmArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: HsmCommand,
}

/// HSM subcommands.
#[derive(Debug, Subcommand)]
pub enum HsmCommand {
    /// Create the AES-256 master key (sensitive, non-extractable) on a token.
    CreateKek {
        /// PKCS#11 module.
        #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
        module: PathBuf,
        /// Token label.
        #[arg(long)]
        token_label: String,
        /// Key label.
        #[arg(long, default_value = "tessera-kek")]
        key_label: String,
        /// File holding the user PIN.
        #[arg(long)]
        pin_file: PathBuf,
    },
}

/// Runs `tessera hsm …`.
#[allow(clippy::print_stdout)]
pub fn run(args: HsmArgs) -> ExitCode {
    match args.command {
        HsmCommand::CreateKek {
            module,
            token_label,
            key_label,
            pin_file,
        } => {
            let config = Pkcs11Config {
                module,
                token_label,
                key_label,
                pin_file,
            };
            match Pkcs11Kms::create_kek(&config) {
                Ok(()) => {
                    println!(
                        "created key {:?} on token {:?}",
                        config.key_label, config.token_label
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tessera hsm create-kek: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}
