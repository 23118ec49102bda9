//! The run both `tessera import` and `tessera export` make over a card
//! file: read rows, send their column's values in batches, write each row
//! back with the answer, checkpoint after every batch, report rejected
//! rows by line number. What a batch call is differs (TokenizeBatch,
//! ExportBatch); the rest is here.
//!
//! Exit codes: 0 every row done, 2 done with rejected rows, 1 stopped (run
//! the same command again to resume), 64 bad usage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tonic::{Code, Status};

use crate::cardfile::checkpoint::{self, Checkpoint};
use crate::cardfile::progress::Progress;
use crate::cardfile::{BadRow, Format, Reader, Row, Writer};
use crate::cli::EXIT_CONFIG;

/// Exit code of a run that finished with rejected rows.
pub const EXIT_REJECTED: u8 = 2;

/// Tries of one batch before the run stops (resumable).
const ATTEMPTS: u32 = 8;

/// The files of a run.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// The card file (CSV with a header row, or JSON Lines).
    pub input: PathBuf,
    /// Where to write the result (created with mode 0600; an interrupted
    /// run's output is resumed, any other existing file refused).
    #[arg(long, short)]
    pub output: PathBuf,
    /// The column (CSV header) or key (JSON Lines) to replace.
    #[arg(long)]
    pub column: Option<String>,
    /// The file format; by default from the input's extension.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Rows per batch call (at most the server's `limits.max_batch_items`).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

/// Why a run stopped.
#[derive(Debug)]
pub enum Stop {
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

/// One batch call: per value, the replacement or why the row is rejected
/// (a reason that never quotes the value). An `Err` of the whole call is
/// retried when it may pass later.
pub trait BatchCall {
    /// Sends `values`.
    fn call(
        &mut self,
        values: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Result<String, String>>, Status>>;
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
            match crate::private_file::open_own(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    crate::private_file::open_new(&path)
                }
                opened => opened.and_then(|mut file| {
                    use std::io::Seek;
                    file.seek(std::io::SeekFrom::End(0)).map(|_| file)
                }),
            }
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

/// Runs `files` through `batch`; `column` is the default column and
/// `verb` what the summary says was done (`tokenized`, `exported`).
pub async fn run(
    files: &FileArgs,
    default_column: &str,
    verb: &'static str,
    batch: &mut impl BatchCall,
) -> ExitCode {
    let column = files.column.as_deref().unwrap_or(default_column);
    match transform(files, column, verb, batch).await {
        Ok(done) => {
            eprintln!(
                "tessera: {} rows {verb} into {}, {} rejected{}",
                done.written,
                files.output.display(),
                done.rejected,
                if done.rejected > 0 {
                    format!(
                        " (line numbers in {})",
                        rejected_path(&files.output).display()
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

fn read(reader: &mut Reader) -> Result<Option<Result<Row, BadRow>>, Stop> {
    reader
        .next_row()
        .map_err(|e| Stop::Failed(format!("reading the input: {e}")))
}

async fn transform(
    files: &FileArgs,
    column: &str,
    verb: &'static str,
    batch: &mut impl BatchCall,
) -> Result<Checkpoint, Stop> {
    let format = files
        .format
        .or_else(|| Format::of_path(&files.input))
        .ok_or_else(|| {
            Stop::Usage("cannot tell the format from the file name; pass --format csv|jsonl".into())
        })?;
    let input_len = std::fs::metadata(&files.input)
        .map_err(|e| Stop::Usage(format!("{}: {e}", files.input.display())))?
        .len();
    let progress_file = checkpoint::path_of(&files.output);
    let resumed = checkpoint::load(&files.output)
        .map_err(|e| Stop::Usage(format!("{}: {e}", progress_file.display())))?;
    if let Some(at) = &resumed {
        if at.input_len != input_len {
            return Err(Stop::Usage(format!(
                "{} holds the progress of another input (or this one changed); remove it and {} to start over",
                progress_file.display(),
                files.output.display()
            )));
        }
        eprintln!(
            "tessera: resuming after {} rows ({} {verb}, {} rejected)",
            at.rows, at.written, at.rejected
        );
    } else {
        for taken in [files.output.clone(), rejected_path(&files.output)] {
            if taken.exists() {
                return Err(Stop::Usage(format!(
                    "{} exists and no interrupted run left it; choose another output",
                    taken.display()
                )));
            }
        }
    }
    let mut reader = Reader::open(&files.input, format, column)
        .map_err(|e| Stop::Usage(format!("{}: {e}", files.input.display())))?;
    let resumed_at = resumed.as_ref().map(|c| c.output_len);
    let mut done = resumed.clone().unwrap_or(Checkpoint {
        input_len,
        ..Checkpoint::default()
    });
    let mut prefix = checkpoint::PrefixHash::open(&files.input)
        .map_err(|e| Stop::Usage(format!("{}: {e}", files.input.display())))?;
    if resumed.is_some() {
        let digest = prefix
            .advance_to(done.input_pos)
            .map_err(|e| Stop::Failed(format!("reading the input: {e}")))?;
        if digest != done.input_prefix_sha256 {
            return Err(Stop::Usage(format!(
                "{} holds the progress of another input (or this one changed); remove it and {} to start over",
                progress_file.display(),
                files.output.display()
            )));
        }
    }
    // Skip what the checkpoint covers.
    for _ in 0..done.rows {
        if read(&mut reader)?.is_none() {
            return Err(Stop::Usage(
                "the input is shorter than its checkpoint".into(),
            ));
        }
    }
    let mut writer = Writer::open(&files.output, &reader, column, resumed_at)
        .map_err(|e| Stop::Failed(e.to_string()))?;
    let file_id = writer.file_id().map_err(|e| Stop::Failed(e.to_string()))?;
    if resumed.is_some() && file_id != done.output_file {
        return Err(Stop::Usage(format!(
            "{} is not the file this run created; remove it and {} to start over",
            files.output.display(),
            progress_file.display()
        )));
    }
    done.output_file = file_id;
    let mut rejections = Rejections::open(&files.output, resumed.is_some())?;
    let save = |done: &Checkpoint| {
        checkpoint::save(&files.output, done).map_err(|e| Stop::Failed(e.to_string()))
    };
    if resumed.is_none() {
        done.output_len = writer.sync().map_err(|e| Stop::Failed(e.to_string()))?;
        done.input_prefix_sha256 = prefix
            .advance_to(0)
            .map_err(|e| Stop::Failed(format!("reading the input: {e}")))?;
        save(&done)?;
    }
    let mut progress = Progress::new(verb, input_len, done.rows, done.input_pos);
    let mut batch_size = usize::try_from(files.batch).unwrap_or(500);
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
                    rejections.add(row.line, &format!("no value in column {column:?}"))?;
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
            let values = rows
                .iter()
                .map(|r| r.value.clone().unwrap_or_default())
                .collect();
            let results = call_with_retries(batch, values, &mut batch_size).await?;
            for (row, result) in rows.into_iter().zip(results) {
                done.rows += 1;
                match result {
                    Ok(value) => {
                        writer
                            .write(row, &value)
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
        done.input_prefix_sha256 = prefix
            .advance_to(done.input_pos)
            .map_err(|e| Stop::Failed(format!("reading the input: {e}")))?;
        save(&done)?;
        if end {
            break;
        }
        progress.update(done.input_pos, done.rows);
    }
    progress.finish(input_len, done.rows);
    checkpoint::finish(&files.output).map_err(|e| Stop::Failed(e.to_string()))?;
    Ok(done)
}

/// Sends `values` in calls of at most `batch_size` (halved when the server
/// refuses the size), retrying what may pass later; stops the run on what
/// will not.
async fn call_with_retries(
    batch: &mut impl BatchCall,
    values: Vec<String>,
    batch_size: &mut usize,
) -> Result<Vec<Result<String, String>>, Stop> {
    let mut results = Vec::with_capacity(values.len());
    let mut from = 0;
    let mut attempt = 0;
    while from < values.len() {
        let to = (from + *batch_size).min(values.len());
        match batch.call(values[from..to].to_vec()).await {
            Ok(answers) if answers.len() == to - from => {
                attempt = 0;
                results.extend(answers);
                from = to;
            }
            Ok(_) => {
                return Err(Stop::Failed(
                    "the server answered a different number of items".into(),
                ));
            }
            // Over the server's batch limit: halve and go on. Any other
            // refusal of the whole call (a malformed approval id) stops.
            Err(status) if over_batch_limit(&status) && *batch_size > 1 => {
                *batch_size = (*batch_size / 2).max(1);
                eprintln!(
                    "tessera: the server refused the batch ({}); now {batch_size} rows per call",
                    status.message()
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

/// A batch item's failure as a rejection reason: its code and the server's
/// message (which never quotes a card number or token).
pub fn item_error(status: &crate::proto::google::rpc::Status) -> String {
    format!("{:?}: {}", Code::from_i32(status.code), status.message)
}

/// Whether the server refused a call for its number of items (the field
/// violation `items`, "at most N items per batch").
fn over_batch_limit(status: &Status) -> bool {
    use tonic_types::StatusExt;
    status.code() == Code::InvalidArgument
        && status.get_details_bad_request().is_some_and(|bad| {
            bad.field_violations
                .iter()
                .any(|v| v.field == "items" && v.description.starts_with("at most"))
        })
}
