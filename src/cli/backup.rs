//! `tessera backup` and `tessera restore`: the embedded sled store as one
//! snapshot file ([`crate::store::snapshot`]). PostgreSQL is backed up
//! with its own tools (`pg_dump`, see the README's "Backup and restore").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::StoreBackend;
use crate::store::snapshot;

/// Arguments of `tessera backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The data directory of a stopped server (sled allows one process on
    /// a store at a time).
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The snapshot file to write (mode 0600; never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `tessera restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A snapshot written by `tessera backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// The data directory to restore into; it must hold no store yet.
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: PathBuf,
}

fn store_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join(StoreBackend::EMBEDDED[0].1)
}

/// Writes the snapshot; prints what it holds (stdout is the answer).
#[allow(clippy::print_stdout)]
pub fn backup(args: &BackupArgs) -> ExitCode {
    match snapshot::write(&store_dir(&args.data_dir), &args.out) {
        Ok(counts) => {
            println!(
                "wrote {} ({} trees, {} entries; sealed: keep the KMS material and the state key apart)",
                args.out.display(),
                counts.trees,
                counts.entries
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera: backup: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Restores the snapshot; prints what it held.
#[allow(clippy::print_stdout)]
pub fn restore(args: &RestoreArgs) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!("tessera: restore: {e}");
        return ExitCode::FAILURE;
    }
    match snapshot::restore(&args.from, &store_dir(&args.data_dir)) {
        Ok(counts) => {
            println!(
                "restored {} trees, {} entries into {}",
                counts.trees,
                counts.entries,
                store_dir(&args.data_dir).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera: restore: {e}");
            ExitCode::FAILURE
        }
    }
}
