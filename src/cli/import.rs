//! `tessera import`: a card file in, the same file out with its card
//! column replaced by tokens, in batches over gRPC (`TokenizeBatch`); the
//! run itself (checkpoints, rejected rows, progress, retries) is
//! [`crate::cli::cardrun`]'s.
//!
//! Rows are tokenized deterministically: a card met twice (in the file,
//! or again after an interruption) gets its one live token back. That is
//! what lets a run resume from its checkpoint without ever minting a
//! second token for a row (see [`crate::cardfile::checkpoint`]).

use std::process::ExitCode;

use clap::Args;
use tonic::Status;

use crate::cli::cardrun::{self, BatchCall, FileArgs};
use crate::cli::client::{self, Connection};
use crate::proto::v1;

pub use crate::cli::cardrun::{EXIT_REJECTED, rejected_path};

/// `tessera import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Input, output, column (default `pan`), format, batch size.
    #[command(flatten)]
    pub files: FileArgs,
    /// Connection (a principal with the tokenize role).
    #[command(flatten)]
    pub conn: Connection,
}

/// TokenizeBatch, deterministic.
struct Tokenize(client::Client);

impl BatchCall for Tokenize {
    async fn call(&mut self, values: Vec<String>) -> Result<Vec<Result<String, String>>, Status> {
        let items = values
            .into_iter()
            .map(|pan| v1::TokenizeRequest {
                pan,
                deterministic: Some(true),
                ..Default::default()
            })
            .collect();
        let results = self
            .0
            .tokenize_batch(v1::TokenizeBatchRequest { items })
            .await?
            .into_inner()
            .results;
        Ok(results
            .into_iter()
            .map(|result| match result.result {
                Some(v1::tokenize_result::Result::Token(t)) => Ok(t.token),
                Some(v1::tokenize_result::Result::Error(e)) => Err(cardrun::item_error(&e)),
                None => Err("the server gave no result".to_owned()),
            })
            .collect())
    }
}

/// Runs `tessera import`.
pub async fn run(args: ImportArgs) -> ExitCode {
    let client = match client::connect(&args.conn).await {
        Ok(client) => client,
        Err(e) => return client::fail(&e),
    };
    cardrun::run(&args.files, "pan", "tokenized", &mut Tokenize(client)).await
}
