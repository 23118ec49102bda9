//! Card files: the CSV or JSON Lines files that `tessera import` and
//! `tessera export` read and write, one record per row, with one column
//! (chosen by name) holding card numbers or tokens.
//!
//! A row is written back as it was read but for that one column, so the
//! other columns (customer ids, expiry dates, anything) pass through. The
//! contract with callers: an error names a line number and what is wrong
//! with its shape, never a field's content, since that content may be a
//! card number.

pub mod checkpoint;
pub mod progress;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::{Map, Value};

/// The file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row naming the columns.
    Csv,
    /// One JSON object per line; the column is a key.
    Jsonl,
}

impl Format {
    /// The format a file name says (`.csv`, `.jsonl`, `.ndjson`).
    pub fn of_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// A card file could not be read or written. Never quotes file content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardFileError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CSV header does not name the column.
    #[error("the header has no column named {0:?}")]
    NoColumn(String),
    /// The CSV header row is unreadable.
    #[error("the header row is not valid CSV")]
    BadHeader,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> CardFileError + '_ {
    move |source| CardFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One row: where it started, the column's value, and the rest to write
/// back.
#[derive(Debug)]
pub struct Row {
    /// The line the row starts on (1-based; a CSV header is line 1).
    pub line: u64,
    /// The column's value; `None` when the row has no such column or it is
    /// not a string or an integer.
    pub value: Option<String>,
    record: Record,
}

#[derive(Debug)]
enum Record {
    Csv(csv::StringRecord),
    Json(Map<String, Value>),
}

/// A row that could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// Its line.
    pub line: u64,
    /// What is wrong with its shape.
    pub reason: &'static str,
}

/// Reads rows.
pub struct Reader {
    column: String,
    inner: ReaderInner,
}

enum ReaderInner {
    Csv {
        reader: csv::Reader<File>,
        index: usize,
        headers: csv::StringRecord,
        record: csv::StringRecord,
    },
    Json {
        reader: BufReader<File>,
        line: u64,
        bytes: u64,
    },
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("column", &self.column)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Opens `path` as `format`, with card data in `column`.
    pub fn open(path: &Path, format: Format, column: &str) -> Result<Self, CardFileError> {
        let file = File::open(path).map_err(io_error(path))?;
        let inner = match format {
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
                let headers = reader
                    .headers()
                    .map_err(|_| CardFileError::BadHeader)?
                    .clone();
                let index = headers
                    .iter()
                    .position(|h| h == column)
                    .ok_or_else(|| CardFileError::NoColumn(column.to_owned()))?;
                ReaderInner::Csv {
                    reader,
                    index,
                    headers,
                    record: csv::StringRecord::new(),
                }
            }
            Format::Jsonl => ReaderInner::Json {
                reader: BufReader::new(file),
                line: 0,
                bytes: 0,
            },
        };
        Ok(Self {
            column: column.to_owned(),
            inner,
        })
    }

    /// The CSV header (`None` for JSON Lines).
    pub fn headers(&self) -> Option<&csv::StringRecord> {
        match &self.inner {
            ReaderInner::Csv { headers, .. } => Some(headers),
            ReaderInner::Json { .. } => None,
        }
    }

    /// Bytes of the file consumed so far.
    pub fn position(&self) -> u64 {
        match &self.inner {
            ReaderInner::Csv { reader, .. } => reader.position().byte(),
            ReaderInner::Json { bytes, .. } => *bytes,
        }
    }

    /// The next row; `None` at the end. An unreadable file is an error; an
    /// unreadable row is a [`BadRow`] and the reader goes on after it.
    pub fn next_row(&mut self) -> Result<Option<Result<Row, BadRow>>, std::io::Error> {
        match &mut self.inner {
            ReaderInner::Csv {
                reader,
                index,
                record,
                ..
            } => {
                let line = reader.position().line();
                match reader.read_record(record) {
                    Ok(false) => Ok(None),
                    Ok(true) => {
                        let line = record.position().map_or(line, csv::Position::line);
                        Ok(Some(Ok(Row {
                            line,
                            value: record.get(*index).map(str::to_owned),
                            record: Record::Csv(record.clone()),
                        })))
                    }
                    Err(e) => match e.kind() {
                        csv::ErrorKind::Io(_) => {
                            Err(std::io::Error::other("reading the CSV file failed"))
                        }
                        _ => Ok(Some(Err(BadRow {
                            line: e.position().map_or(line, csv::Position::line),
                            reason: "not a valid CSV record",
                        }))),
                    },
                }
            }
            ReaderInner::Json {
                reader,
                line,
                bytes,
            } => loop {
                let mut text = String::new();
                let read = match reader.read_line(&mut text) {
                    Ok(read) => read,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        // Not UTF-8: skip the rest of the line.
                        *line += 1;
                        let mut rest = Vec::new();
                        let skipped = reader.read_until(b'\n', &mut rest)?;
                        *bytes += u64::try_from(skipped).unwrap_or(0);
                        return Ok(Some(Err(BadRow {
                            line: *line,
                            reason: "not UTF-8",
                        })));
                    }
                    Err(e) => return Err(e),
                };
                if read == 0 {
                    return Ok(None);
                }
                *line += 1;
                *bytes += u64::try_from(read).unwrap_or(0);
                if text.trim().is_empty() {
                    continue;
                }
                let row = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(map)) => Ok(Row {
                        line: *line,
                        value: match map.get(&self.column) {
                            Some(Value::String(s)) => Some(s.clone()),
                            Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
                            _ => None,
                        },
                        record: Record::Json(map),
                    }),
                    Ok(_) => Err(BadRow {
                        line: *line,
                        reason: "not a JSON object",
                    }),
                    Err(_) => Err(BadRow {
                        line: *line,
                        reason: "not valid JSON",
                    }),
                };
                return Ok(Some(row));
            },
        }
    }
}

/// Writes rows, the column replaced, to a file only its owner can read.
pub struct Writer {
    path: std::path::PathBuf,
    column: String,
    inner: WriterInner,
}

enum WriterInner {
    Csv {
        writer: Box<csv::Writer<File>>,
        index: usize,
    },
    Json(BufWriter<File>),
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Creates `path` (mode 0600; it must not exist) and writes the header
    /// of `reader`'s file; or, with `resume_at`, opens it and cuts it back
    /// to that length, where the last checkpoint left it.
    pub fn open(
        path: &Path,
        reader: &Reader,
        column: &str,
        resume_at: Option<u64>,
    ) -> Result<Self, CardFileError> {
        let file = match resume_at {
            None => crate::private_file::open_new(path).map_err(io_error(path))?,
            Some(length) => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error(path))?;
                file.set_len(length).map_err(io_error(path))?;
                file.seek(SeekFrom::End(0)).map_err(io_error(path))?;
                file
            }
        };
        let inner = match reader.headers() {
            Some(headers) => {
                let mut writer = csv::WriterBuilder::new().flexible(true).from_writer(file);
                if resume_at.is_none() {
                    writer
                        .write_record(headers)
                        .map_err(|e| io_error(path)(std::io::Error::other(e.to_string())))?;
                }
                let index = headers.iter().position(|h| h == column).unwrap_or(0);
                WriterInner::Csv {
                    writer: Box::new(writer),
                    index,
                }
            }
            None => WriterInner::Json(BufWriter::new(file)),
        };
        Ok(Self {
            path: path.to_owned(),
            column: column.to_owned(),
            inner,
        })
    }

    /// Writes `row` with its column set to `value`.
    pub fn write(&mut self, row: Row, value: &str) -> Result<(), CardFileError> {
        let path = self.path.clone();
        let failed = |e: String| io_error(&path)(std::io::Error::other(e));
        match (&mut self.inner, row.record) {
            (WriterInner::Csv { writer, index }, Record::Csv(record)) => {
                let fields = record
                    .iter()
                    .enumerate()
                    .map(|(i, field)| if i == *index { value } else { field });
                writer
                    .write_record(fields)
                    .map_err(|_| failed("writing a CSV record failed".into()))
            }
            (WriterInner::Json(writer), Record::Json(mut map)) => {
                map.insert(self.column.clone(), Value::String(value.to_owned()));
                serde_json::to_writer(&mut *writer, &map)
                    .map_err(|_| failed("writing a JSON line failed".into()))?;
                writer.write_all(b"\n").map_err(io_error(&self.path))
            }
            _ => Err(failed("a row of another format".into())),
        }
    }

    /// Flushes and syncs what was written; returns the file's length (what
    /// a checkpoint records).
    pub fn sync(&mut self) -> Result<u64, CardFileError> {
        let file = match &mut self.inner {
            WriterInner::Csv { writer, .. } => {
                writer.flush().map_err(io_error(&self.path))?;
                writer.get_ref()
            }
            WriterInner::Json(writer) => {
                writer.flush().map_err(io_error(&self.path))?;
                writer.get_ref()
            }
        };
        file.sync_data().map_err(io_error(&self.path))?;
        file.metadata()
            .map(|m| m.len())
            .map_err(io_error(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(format: Format, input: &str, column: &str) -> (String, Vec<BadRow>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::write(&from, input).unwrap();
        let mut reader = Reader::open(&from, format, column).unwrap();
        let mut writer = Writer::open(&to, &reader, column, None).unwrap();
        let (mut bad, mut values) = (Vec::new(), Vec::new());
        while let Some(row) = reader.next_row().unwrap() {
            match row {
                Ok(row) => {
                    values.push(row.value.clone().unwrap_or_default());
                    let replaced = format!("T{}", row.line);
                    writer.write(row, &replaced).unwrap();
                }
                Err(e) => bad.push(e),
            }
        }
        let length = writer.sync().unwrap();
        let text = std::fs::read_to_string(&to).unwrap();
        assert_eq!(length, u64::try_from(text.len()).unwrap());
        (text, bad, values)
    }

    #[test]
    fn csv_rows_keep_every_other_column_and_quoting() {
        let input = "id,pan,note\n1,4111111111111111,plain\n2,\"5555 5555 5555 4444\",\"with, comma\"\n3,\"x\ny\",multi-line\n";
        let (text, bad, values) = round_trip(Format::Csv, input, "pan");
        assert!(bad.is_empty());
        assert_eq!(values, ["4111111111111111", "5555 5555 5555 4444", "x\ny"]);
        assert_eq!(
            text,
            "id,pan,note\n1,T2,plain\n2,T3,\"with, comma\"\n3,T4,multi-line\n"
        );
    }

    #[test]
    fn json_lines_keep_key_order_and_report_bad_lines_by_number() {
        let input = "{\"b\":1,\"pan\":\"4111111111111111\",\"a\":[1]}\n\nnot json\n[1]\n{\"pan\":5555555555554444}\n";
        let (text, bad, values) = round_trip(Format::Jsonl, input, "pan");
        assert_eq!(values, ["4111111111111111", "5555555555554444"]);
        assert_eq!(
            bad,
            [
                BadRow {
                    line: 3,
                    reason: "not valid JSON"
                },
                BadRow {
                    line: 4,
                    reason: "not a JSON object"
                }
            ]
        );
        assert_eq!(
            text,
            "{\"b\":1,\"pan\":\"T1\",\"a\":[1]}\n{\"pan\":\"T5\"}\n"
        );
    }

    #[test]
    fn a_missing_column_is_named_and_an_existing_output_refused() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("in.csv");
        std::fs::write(&from, "id,card\n1,4111111111111111\n").unwrap();
        let err = Reader::open(&from, Format::Csv, "pan").unwrap_err();
        assert_eq!(err.to_string(), "the header has no column named \"pan\"");
        let reader = Reader::open(&from, Format::Csv, "card").unwrap();
        assert!(Writer::open(&from, &reader, "card", None).is_err());
    }
}
