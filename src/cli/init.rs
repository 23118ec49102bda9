//! `tessera init`: a new deployment's master key, split into custodian
//! shares, plus one admin principal per custodian and a config file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::access::api_key;
use crate::cli::EXIT_CONFIG;
use crate::kms::shamir::{self, SETUP_FILE};

/// `tessera init` options.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Data directory of the new vault (gets shamir.json and tessera.toml).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where to write one share file and one API key per custodian.
    #[arg(long)]
    pub share_dir: PathBuf,
    /// Number of shares (custodians), N.
    #[arg(long, default_value_t = 5)]
    pub shares: u8,
    /// Shares needed to unseal, M (at least 2).
    #[arg(long, default_value_t = 3)]
    pub threshold: u8,
    /// Listen address written into tessera.toml.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Runs `tessera init`.
#[allow(clippy::print_stdout)]
pub fn run(args: &InitArgs) -> ExitCode {
    match init(args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera init: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn init(args: &InitArgs) -> Result<String, String> {
    let setup_path = args.data_dir.join(SETUP_FILE);
    if setup_path.exists() {
        return Err(format!(
            "{} exists: this data dir already has a master key",
            setup_path.display()
        ));
    }
    let (setup, shares) =
        shamir::split_new_master_key(args.threshold, args.shares).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.data_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.share_dir).map_err(|e| e.to_string())?;
    let mut principals = String::new();
    for share in &shares {
        let n = share.number;
        let bytes = serde_json::to_vec_pretty(share).map_err(|e| e.to_string())?;
        write_private(&args.share_dir.join(format!("share-{n}.json")), &bytes)
            .map_err(|e| e.to_string())?;
        let key = api_key::generate().map_err(|e| e.to_string())?;
        write_private(
            &args.share_dir.join(format!("custodian-{n}.key")),
            key.key.expose_secret().as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        principals.push_str(&format!(
            "\n[[principals]]\nname = \"custodian-{n}\"\ntenant = \"default\"\nroles = [\"admin\", \"audit\"]\napi_key_hash = \"{}\"\n",
            key.hash.to_config_string()
        ));
    }
    let setup_json = serde_json::to_vec_pretty(&setup).map_err(|e| e.to_string())?;
    write_private(&setup_path, &setup_json).map_err(|e| e.to_string())?;
    let config = format!(
        "# Written by `tessera init`. Add the principals of your POS and processor systems.\nlisten = \"{}\"\ndata_dir = \"{}\"\n\n[store]\nbackend = \"sled\"\n\n[kms]\nbackend = \"shamir\"\n{principals}",
        args.listen,
        args.data_dir.display()
    );
    let config_path = args.data_dir.join("tessera.toml");
    write_private(&config_path, config.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!(
        "Master key {} split into {} shares; any {} unseal the vault.\n\
         Wrote {} (public setup) and {}.\n\
         In {}: share-K.json and custodian-K.key for K = 1..{}.\n\
         Give each custodian exactly one share and its own key, over separate channels, then delete them here.\n\
         No custodian may hold two shares. To start: tessera serve --config {}\n\
         then each of {} custodians runs: TESSERA_API_KEY=$(cat custodian-K.key) tessera unseal --share-file share-K.json",
        setup.key_id,
        setup.shares,
        setup.threshold,
        setup_path.display(),
        config_path.display(),
        args.share_dir.display(),
        setup.shares,
        config_path.display(),
        setup.threshold,
    ))
}
