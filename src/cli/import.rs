//! `tessera import`: a card file in, the same file out with its card
//! column replaced by tokens, in batches over gRPC (`TokenizeBatch`).
//!
//! - Rows are tokenized deterministically: a card met twice (in the file,
//!   or again after an interruption) gets its one live token back. That
//!   is what lets a run resume from its checkpoint without ever minting a
//!   second token for a row (see [`crate::cardfile::checkpoint`]).
//! - A row that cannot be tokenized (not a card number, no such column,
//!   not a record) is left out of the output and reported by line number
//!   and reason, on stderr and in `OUTPUT.rejected`; never by content.
//! - The server's batch limit, rate limits and outages are met with
//!   smaller batches and retries; a run that still cannot go on stops with
//!   its checkpoint, and the same command resumes it.
//!
//! Exit codes: 0 every row tokenized, 2 done with rejected rows, 1 stopped
//! (run the same command again to resume), 64 bad usage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tonic::Code;

use crate::cardfile::checkpoint::{self, Checkpoint};
use crate::cardfile::progress::Progress;
use crate::cardfile::{Format, Reader, Row, Writer};
use crate::cli::EXIT_CONFIG;
use crate::cli::client::{self, Connection};
use crate::proto::v1;

/// Exit code of a run that finished with rejected rows.
pub const EXIT_REJECTED: u8 = 2;

/// Tries of one batch before the run stops (resumable).
const ATTEMPTS: u32 = 8;

/// `tessera import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The card file (CSV with a header row, or JSON Lines).
    pub input: PathBuf,
    /// Where to write the tokenized file (created with mode 0600; an
    /// interrupted run's output is resumed, any other refused).
    #[arg(long, short)]
    pub output: PathBuf,
    /// The column (CSV header) or key (JSON Lines) holding card numbers.
    #[arg(long, default_value = "pan")]
    pub column: String,
    /// The file format; by default from the input's extension.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Rows per TokenizeBatch call (at most the server's
    /// `limits.max_batch_items`).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Connection (a principal with the tokenize role).
    #[command(flatten)]
    pub conn: Connection,
}

/// Why a run stopped.
#[derive(Debug)]
enum Stop {
    /// Bad usage: exit 64.
    Usage(String),
    /// A failure: exit 1, resumable.
    Failed(String),
}

impl Stop {
    fn exit(self) -> ExitCode {
        match self {
            Self::Usage(message) => {
                eprintln!("tessera: {message}");
                ExitCode::from(EXIT_CONFIG)
            }
            Self::Failed(message) => {
                eprintln!("tessera: {message}");
                eprintln!("tessera: run the same command again to resume");
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs `tessera import`.
pub async fn run(args: ImportArgs) -> ExitCode {
    match import(&args).await {
        Ok(done) => {
            eprintln!(
                "tessera: {} rows tokenized into {}, {} rejected{}",
                done.written,
                args.output.display(),
                done.rejected,
                if done.rejected > 0 {
                    format!(
                        " (line numbers in {})",
                        rejected_path(&args.output).display()
                    )
                } else {
                    String::new()
                }
            );
            if done.rejected > 0 {
                ExitCode::from(EXIT_REJECTED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(stop) => stop.exit(),
    }
}

/// `OUTPUT.rejected`: one line per rejected row.
pub fn rejected_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".rejected");
    PathBuf::from(name)
}

/// The rejected-rows report, appended to across resumed runs.
struct Rejections {
    file: std::fs::File,
}

impl Rejections {
    fn open(output: &Path, resumed: bool) -> Result<Self, Stop> {
        let path = rejected_path(output);
        let file = if resumed {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
        } else {
            crate::private_file::open_new(&path)
        }
        .map_err(|e| Stop::Failed(format!("{}: {e}", path.display())))?;
        Ok(Self { file })
    }

    /// Notes row `line` as rejected for `reason` (which never quotes it).
    fn add(&mut self, line: u64, reason: &str) -> Result<(), Stop> {
        eprintln!("tessera: line {line} rejected: {reason}");
        writeln!(self.file, "line {line}: {reason}")
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Stop::Failed(format!("writing the rejected-rows report: {e}")))
    }
}

async fn import(args: &ImportArgs) -> Result<Checkpoint, Stop> {
    let format = args
        .format
        .or_else(|| Format::of_path(&args.input))
        .ok_or_else(|| {
            Stop::Usage("cannot tell the format from the file name; pass --format csv|jsonl".into())
        })?;
    let input_len = std::fs::metadata(&args.input)
        .map_err(|e| Stop::Usage(format!("{}: {e}", args.input.display())))?
        .len();
    let resumed = checkpoint::load(&args.output).map_err(|e| {
        Stop::Usage(format!(
            "{}: {e}",
            checkpoint::path_of(&args.output).display()
        ))
    })?;
    if let Some(at) = &resumed {
        if at.input_len != input_len {
            return Err(Stop::Usage(format!(
                "{} holds the progress of another input (or this one changed); remove it and {} to start over",
                checkpoint::path_of(&args.output).display(),
                args.output.display()
            )));
        }
        eprintln!(
            "tessera: resuming after {} rows ({} tokenized, {} rejected)",
            at.rows, at.written, at.rejected
        );
    } else if args.output.exists() {
        return Err(Stop::Usage(format!(
            "{} exists and no interrupted run left it; choose another output",
            args.output.display()
        )));
    }
    let mut reader = Reader::open(&args.input, format, &args.column)
        .map_err(|e| Stop::Usage(format!("{}: {e}", args.input.display())))?;
    let mut done = resumed.unwrap_or(Checkpoint {
        input_len,
        ..Checkpoint::default()
    });
    // Skip what the checkpoint covers.
    for _ in 0..done.rows {
        if read(&mut reader)?.is_none() {
            return Err(Stop::Usage(
                "the input is shorter than its checkpoint".into(),
            ));
        }
    }
    let mut writer = Writer::open(
        &args.output,
        &reader,
        &args.column,
        resumed.map(|c| c.output_len),
    )
    .map_err(|e| Stop::Failed(e.to_string()))?;
    let mut rejections = Rejections::open(&args.output, resumed.is_some())?;
    if resumed.is_none() {
        done.output_len = writer.sync().map_err(|e| Stop::Failed(e.to_string()))?;
        checkpoint::save(&args.output, &done).map_err(|e| Stop::Failed(e.to_string()))?;
    }
    let mut client = client::connect(&args.conn).await.map_err(Stop::Failed)?;
    let mut progress = Progress::new("tokenized", input_len, done.rows, done.input_pos);
    let mut batch_size = usize::try_from(args.batch).unwrap_or(500);
    loop {
        let mut rows = Vec::with_capacity(batch_size);
        while rows.len() < batch_size {
            match read(&mut reader)? {
                None => break,
                Some(Ok(row)) if row.value.as_deref().is_some_and(|v| !v.is_empty()) => {
                    rows.push(row);
                }
                Some(Ok(row)) => {
                    done.rows += 1;
                    done.rejected += 1;
                    rejections.add(row.line, &format!("no value in column {:?}", args.column))?;
                }
                Some(Err(bad)) => {
                    done.rows += 1;
                    done.rejected += 1;
                    rejections.add(bad.line, bad.reason)?;
                }
            }
        }
        let end = rows.is_empty();
        if !end {
            let results = tokenize(&mut client, &rows, &mut batch_size).await?;
            for (row, result) in rows.into_iter().zip(results) {
                done.rows += 1;
                match result {
                    Ok(token) => {
                        writer
                            .write(row, &token)
                            .map_err(|e| Stop::Failed(e.to_string()))?;
                        done.written += 1;
                    }
                    Err(reason) => {
                        done.rejected += 1;
                        rejections.add(row.line, &reason)?;
                    }
                }
            }
        }
        done.output_len = writer.sync().map_err(|e| Stop::Failed(e.to_string()))?;
        done.input_pos = reader.position();
        checkpoint::save(&args.output, &done).map_err(|e| Stop::Failed(e.to_string()))?;
        if end {
            break;
        }
        progress.update(done.input_pos, done.rows);
    }
    progress.finish(input_len, done.rows);
    checkpoint::finish(&args.output).map_err(|e| Stop::Failed(e.to_string()))?;
    Ok(done)
}

fn read(reader: &mut Reader) -> Result<Option<Result<Row, crate::cardfile::BadRow>>, Stop> {
    reader
        .next_row()
        .map_err(|e| Stop::Failed(format!("reading the input: {e}")))
}

/// Tokenizes `rows`' values in one call (or several, if the server's batch
/// limit is lower than asked): per row, the token or why it was refused.
/// Retries what may pass later; stops the run on what will not.
async fn tokenize(
    client: &mut client::Client,
    rows: &[Row],
    batch_size: &mut usize,
) -> Result<Vec<Result<String, String>>, Stop> {
    let mut results = Vec::with_capacity(rows.len());
    let mut from = 0;
    let mut attempt = 0;
    while from < rows.len() {
        let to = (from + *batch_size).min(rows.len());
        let items = rows[from..to]
            .iter()
            .map(|row| v1::TokenizeRequest {
                pan: row.value.clone().unwrap_or_default(),
                deterministic: Some(true),
                ..Default::default()
            })
            .collect();
        match client
            .tokenize_batch(v1::TokenizeBatchRequest { items })
            .await
        {
            Ok(response) => {
                attempt = 0;
                for result in response.into_inner().results {
                    results.push(match result.result {
                        Some(v1::tokenize_result::Result::Token(t)) => Ok(t.token),
                        Some(v1::tokenize_result::Result::Error(status)) => Err(format!(
                            "{:?}: {}",
                            Code::from_i32(status.code),
                            status.message
                        )),
                        None => Err("the server gave no result".to_owned()),
                    });
                }
                from = to;
            }
            // Over the server's batch limit: halve and go on.
            Err(status) if status.code() == Code::InvalidArgument && *batch_size > 1 => {
                *batch_size = (*batch_size / 2).max(1);
                eprintln!(
                    "tessera: the server refused the batch size; now {batch_size} rows per call"
                );
            }
            Err(status)
                if matches!(status.code(), Code::Unavailable | Code::ResourceExhausted)
                    && attempt + 1 < ATTEMPTS =>
            {
                attempt += 1;
                let wait = Duration::from_millis(250 << attempt.min(6));
                eprintln!(
                    "tessera: {:?} ({}); retrying in {} ms",
                    status.code(),
                    status.message(),
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
            }
            Err(status) => {
                return Err(Stop::Failed(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                )));
            }
        }
    }
    Ok(results)
}
