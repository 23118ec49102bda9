//! Reading and writing the run-time part of the book: the principals file
//! and the shared entry.
//!
//! Shared, the whole run-time book is one entry (`principal`/`book`),
//! sealed under the state key and replaced by a conditional put: a change
//! is applied to the newest book and written only if no replica wrote
//! another meanwhile. Principals change rarely and are few; one entry keeps
//! every change atomic (a grant and its lineage, a revocation of a whole
//! subtree).

use std::collections::BTreeSet;
use std::path::Path;

use super::stored::{BookFile, StoredPrincipal};
use super::{BookError, PrincipalEntry, file_error};
use crate::shared::{Shared, SharedError};
use crate::store::{Expect, StateKind, StoreError};

/// The key of the book's shared entry.
const BOOK: &str = "book";

fn shared_error(e: SharedError) -> BookError {
    if e.is_retryable() {
        BookError::SharedUnavailable(e.to_string())
    } else {
        BookError::Shared(e.to_string())
    }
}

/// The principals file at `path`; empty when it does not exist.
pub(super) fn read_file(path: &Path) -> Result<BookFile, BookError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = zeroize::Zeroizing::new(bytes);
            serde_json::from_slice(&bytes).map_err(|e| file_error(path, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BookFile::default()),
        Err(e) => Err(file_error(path, e)),
    }
}

/// Writes the principals file atomically, mode 0600.
pub(super) fn write_file(path: &Path, file: &BookFile) -> Result<(), BookError> {
    let bytes =
        zeroize::Zeroizing::new(serde_json::to_vec_pretty(file).map_err(|e| file_error(path, e))?);
    crate::private_file::replace(path, &bytes).map_err(|e| file_error(path, e))
}

/// The stored form of a run-time book.
pub(super) fn book_file(
    added: &[PrincipalEntry],
    revoked: &BTreeSet<String>,
    generation: u64,
) -> BookFile {
    BookFile {
        added: added.iter().map(StoredPrincipal::from_entry).collect(),
        revoked: revoked.clone(),
        generation,
    }
}

/// The entries of a stored book.
pub(super) fn entries(
    file: BookFile,
) -> Result<(Vec<PrincipalEntry>, BTreeSet<String>), BookError> {
    let added = file
        .added
        .into_iter()
        .map(|p| p.into_entry().map_err(BookError::Shared))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((added, file.revoked))
}

/// The shared book and its version, if one was written.
pub(super) async fn load(shared: &Shared) -> Result<Option<(u64, BookFile)>, BookError> {
    shared
        .get::<BookFile>(StateKind::Principal, BOOK)
        .await
        .map_err(shared_error)
}

/// Writes `file` over the shared book at `version` (0: none yet); `None`
/// when another replica wrote it first.
pub(super) async fn store(
    shared: &Shared,
    file: &BookFile,
    version: u64,
) -> Result<Option<u64>, BookError> {
    let expect = match version {
        0 => Expect::Absent,
        v => Expect::Version(v),
    };
    match shared
        .put(StateKind::Principal, BOOK, Some(file), expect)
        .await
    {
        Ok(version) => Ok(Some(version)),
        Err(SharedError::Store(StoreError::Conflict)) => Ok(None),
        Err(e) => Err(shared_error(e)),
    }
}

/// The shared book; when there is none yet, the principals of `import`
/// (a principals file) moved into it.
pub(super) async fn load_or_import(
    shared: &Shared,
    import: Option<&Path>,
) -> Result<(u64, BookFile), BookError> {
    if let Some(found) = load(shared).await? {
        return Ok(found);
    }
    let Some(path) = import else {
        return Ok((0, BookFile::default()));
    };
    let file = read_file(path)?;
    if file.added.is_empty() && file.revoked.is_empty() {
        return Ok((0, file));
    }
    match store(shared, &file, 0).await? {
        Some(version) => {
            // Renamed, so a book deleted from the database later is never
            // silently replaced by this older file.
            let moved = path.with_extension("json.imported");
            if let Err(e) = std::fs::rename(path, &moved) {
                tracing::warn!(error = %e, file = %path.display(), "principals file not renamed; delete it");
            }
            tracing::warn!(
                file = %moved.display(),
                principals = file.added.len(),
                "run-time principals moved from the principals file into the store; \
                 the file is no longer read and may be deleted"
            );
            Ok((version, file))
        }
        // Another replica imported first: theirs.
        None => load(shared)
            .await?
            .ok_or_else(|| BookError::Shared("the principal book vanished".into())),
    }
}
