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
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::{Map, Value};

/// The longest JSON line read; a longer one is a rejected row.
pub const MAX_LINE_BYTES: u64 = 1024 * 1024;

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
    /// The CSV header names the column twice.
    #[error("the header has two columns named {0:?}")]
    TwoColumns(String),
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
                // A second column of the same name would pass through in
                // clear: refuse rather than guess which one holds cards.
                if headers.iter().filter(|h| *h == column).count() > 1 {
                    return Err(CardFileError::TwoColumns(column.to_owned()));
                }
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
                // Bytes first: a line that is not UTF-8 is one bad row, and
                // the next line is still read (read_line would have consumed
                // it past the newline already). A line is bounded, so one
                // huge line costs a bounded buffer and one rejection.
                let mut raw = Vec::new();
                let read = (&mut *reader)
                    .take(MAX_LINE_BYTES + 1)
                    .read_until(b'\n', &mut raw)?;
                if read == 0 {
                    return Ok(None);
                }
                *line += 1;
                *bytes += u64::try_from(read).unwrap_or(0);
                if raw.len() > usize::try_from(MAX_LINE_BYTES).unwrap_or(usize::MAX) {
                    // Skip to the end of the over-long line.
                    loop {
                        let buffered = reader.fill_buf()?;
                        if buffered.is_empty() {
                            break;
                        }
                        let (used, done) = match buffered.iter().position(|b| *b == b'\n') {
                            Some(at) => (at + 1, true),
                            None => (buffered.len(), false),
                        };
                        reader.consume(used);
                        *bytes += u64::try_from(used).unwrap_or(0);
                        if done {
                            break;
                        }
                    }
                    return Ok(Some(Err(BadRow {
                        line: *line,
                        reason: "longer than 1 MiB",
                    })));
                }
                let Ok(text) = std::str::from_utf8(&raw) else {
                    return Ok(Some(Err(BadRow {
                        line: *line,
                        reason: "not UTF-8",
                    })));
                };
                if text.trim().is_empty() {
                    continue;
                }
                let row = match serde_json::from_str::<Value>(text) {
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
                // Only our own private regular file: see private_file::open_own.
                let mut file = crate::private_file::open_own(path).map_err(io_error(path))?;
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

    /// The output file's device and inode, which a checkpoint records: a
    /// resumed run writes only into the very file the run created.
    pub fn file_id(&self) -> Result<(u64, u64), CardFileError> {
        use std::os::unix::fs::MetadataExt;
        let file = match &self.inner {
            WriterInner::Csv { writer, .. } => writer.get_ref(),
            WriterInner::Json(writer) => writer.get_ref(),
        };
        let meta = file.metadata().map_err(io_error(&self.path))?;
        Ok((meta.dev(), meta.ino()))
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

    /// Review finding: after a line that was not UTF-8, the next line was
    /// skipped without a report (its card lost), and later line numbers
    /// were off by one.
    #[test]
    fn a_line_that_is_not_utf8_is_one_bad_row_and_the_next_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("in.jsonl");
        let mut input =
            b"{\"pan\":\"1\"}\n{\"pan\":\"\xff\xfe\"}\n{\"pan\":\"3\"}\nnot json\n".to_vec();
        input.extend(vec![b'x'; 2 * 1024 * 1024]);
        input.extend(b"\n{\"pan\":\"6\"}\n");
        std::fs::write(&from, input).unwrap();
        let mut reader = Reader::open(&from, Format::Jsonl, "pan").unwrap();
        let mut seen = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            seen.push(match row {
                Ok(row) => format!("{}:{}", row.line, row.value.unwrap()),
                Err(bad) => format!("{}:{}", bad.line, bad.reason),
            });
        }
        assert_eq!(
            seen,
            [
                "1:1",
                "2:not UTF-8",
                "3:3",
                "4:not valid JSON",
                "5:longer than 1 MiB",
                "6:6"
            ]
        );
    }

    #[test]
    fn a_column_named_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("in.csv");
        std::fs::write(&from, "id,pan,pan\n1,4111111111111111,5555555555554444\n").unwrap();
        let err = Reader::open(&from, Format::Csv, "pan").unwrap_err();
        assert_eq!(err.to_string(), "the header has two columns named \"pan\"");
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
