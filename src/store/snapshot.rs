//! A snapshot of the embedded sled store in one file, and its restore
//! (`tessera backup`, `tessera restore`).
//!
//! The snapshot holds every tree of the store as it is on disk: records and
//! re-sealed versions (AES-256-GCM ciphertext), wrapped keys (wrapped by the
//! KMS), the audit log and its signed head, and the shared state (sealed
//! under the state key). It holds no key that opens any of them: the KMS
//! material (Shamir shares, the HSM, the cloud KMS key, the dev key file)
//! and `access.state_key_file` are backed up apart, by their own means.
//!
//! Format, version 1: the magic line, then tagged sections, then a SHA-256
//! of every byte before it, so a truncated or altered file is refused
//! before anything is restored:
//!
//! ```text
//! "TESSERA-SLED-SNAPSHOT-1\n"
//! ( 1 u32:len name               a tree; its entries follow
//! | 2 u32:len key u32:len value  an entry of the last tree )*
//! 0 [32] SHA-256
//! ```
//!
//! sled lets one process open a store at a time, so a snapshot is taken of
//! a stopped server (or of a file-system snapshot of a running one).
//! A restore writes into a new directory beside the target and renames it
//! into place only once the whole file checked out, so an interrupted
//! restore leaves no half store behind.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The first bytes of every snapshot.
const MAGIC: &[u8] = b"TESSERA-SLED-SNAPSHOT-1\n";
const END: u8 = 0;
const TREE: u8 = 1;
const ENTRY: u8 = 2;
/// Bytes of entries written per batch on restore.
const RESTORE_BATCH_BYTES: usize = 16 << 20;
/// Longest key or value a snapshot may hold: far above any the store
/// writes, and a bound on what a crafted file can make a restore allocate.
const MAX_FIELD: u64 = 64 << 20;

/// A snapshot could not be written or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The store could not be opened or written.
    #[error("store: {0}")]
    Store(String),
    /// The file is not a snapshot, or was cut or altered.
    #[error("not an intact snapshot: {0}")]
    Damaged(&'static str),
    /// A running server holds the store.
    #[error(
        "{0} is in use by a running server: stop it first, or back up a file-system snapshot of it"
    )]
    InUse(PathBuf),
    /// The restore target already holds a store.
    #[error("{0} exists; restore into a data directory without a store")]
    TargetExists(PathBuf),
}

/// What a snapshot or restore covered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Trees.
    pub trees: usize,
    /// Entries, all trees together.
    pub entries: u64,
}

/// sled on `dir` without its background flusher: a snapshot flushes once,
/// itself, and a store closes as soon as it is dropped (the flusher
/// thread held sled's file lock a moment longer, and a second open in the
/// same process then found the store in use).
fn quiet(dir: &Path) -> sled::Config {
    sled::Config::new().path(dir).flush_every_ms(None)
}

fn store_error(e: sled::Error) -> SnapshotError {
    SnapshotError::Store(e.to_string())
}

/// Writes a snapshot of the sled store in `store_dir` to `out` (created
/// with mode 0600; an existing file is refused).
pub fn write(store_dir: &Path, out: &Path) -> Result<Counts, SnapshotError> {
    if !store_dir.join("db").exists() {
        return Err(SnapshotError::Store(format!(
            "no sled store in {}",
            store_dir.display()
        )));
    }
    let db = quiet(store_dir).open().map_err(|e| {
        // sled names its lock file in a plain I/O error.
        if e.to_string().contains("could not acquire lock") {
            SnapshotError::InUse(store_dir.to_owned())
        } else {
            store_error(e)
        }
    })?;
    let file = crate::private_file::open_new(out)?;
    let mut writer = Hashed::new(BufWriter::new(file));
    writer.write_all(MAGIC)?;
    let mut counts = Counts::default();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).map_err(store_error)?;
        writer.write_all(&[TREE])?;
        write_field(&mut writer, &name)?;
        counts.trees += 1;
        for item in tree.iter() {
            let (key, value) = item.map_err(store_error)?;
            writer.write_all(&[ENTRY])?;
            write_field(&mut writer, &key)?;
            write_field(&mut writer, &value)?;
            counts.entries += 1;
        }
    }
    writer.write_all(&[END])?;
    let (mut inner, digest) = writer.finish();
    inner.write_all(&digest)?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(counts)
}

/// Restores the snapshot `from` as the sled store `store_dir`, which must
/// not exist yet.
pub fn restore(from: &Path, store_dir: &Path) -> Result<Counts, SnapshotError> {
    if store_dir.exists() {
        return Err(SnapshotError::TargetExists(store_dir.to_owned()));
    }
    // The whole file is checked before a byte of it is trusted.
    check(from)?;
    let staging = store_dir.with_extension("restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let db = quiet(&staging).open().map_err(store_error)?;
    // Read again, hashed again: the file checked above may have been
    // replaced since; the digest is compared once more before the rename.
    let mut reader = Hashed::new(BufReader::new(std::fs::File::open(from)?));
    let mut magic = [0u8; MAGIC.len()];
    reader.read_exact(&mut magic)?;
    let mut counts = Counts::default();
    let mut tree: Option<sled::Tree> = None;
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    loop {
        match read_tag(&mut reader)? {
            END => break,
            TREE => {
                if let Some(tree) = &tree {
                    tree.apply_batch(std::mem::take(&mut batch))
                        .map_err(store_error)?;
                    pending = 0;
                }
                let name = read_field(&mut reader)?;
                tree = Some(db.open_tree(name).map_err(store_error)?);
                counts.trees += 1;
            }
            ENTRY => {
                let Some(tree) = &tree else {
                    return Err(SnapshotError::Damaged("an entry before any tree"));
                };
                let key = read_field(&mut reader)?;
                let value = read_field(&mut reader)?;
                pending += key.len() + value.len();
                batch.insert(key, value);
                counts.entries += 1;
                if pending >= RESTORE_BATCH_BYTES {
                    tree.apply_batch(std::mem::take(&mut batch))
                        .map_err(store_error)?;
                    pending = 0;
                }
            }
            _ => return Err(SnapshotError::Damaged("an unknown section")),
        }
    }
    if let Some(tree) = &tree {
        tree.apply_batch(batch).map_err(store_error)?;
    }
    let (mut rest, digest) = reader.finish();
    let mut stored = [0u8; 32];
    rest.read_exact(&mut stored)
        .map_err(|_| SnapshotError::Damaged("the digest is missing"))?;
    if stored != digest {
        return Err(SnapshotError::Damaged(
            "the file changed while it was restored",
        ));
    }
    db.flush().map_err(store_error)?;
    drop(tree);
    drop(db);
    // sled's flush is not a full sync (see `store::sled`): the directory's
    // files are synced one by one before the rename makes them the store.
    sync_tree(&staging)?;
    std::fs::rename(&staging, store_dir)?;
    if let Some(parent) = store_dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(counts)
}

/// Reads `from` through and checks its framing and digest.
fn check(from: &Path) -> Result<(), SnapshotError> {
    let mut reader = Hashed::new(BufReader::new(std::fs::File::open(from)?));
    let mut magic = [0u8; MAGIC.len()];
    reader
        .read_exact(&mut magic)
        .map_err(|_| SnapshotError::Damaged("too short"))?;
    if magic != MAGIC {
        return Err(SnapshotError::Damaged("not a Tessera sled snapshot"));
    }
    loop {
        match read_tag(&mut reader)? {
            END => break,
            TREE => skip_field(&mut reader)?,
            ENTRY => {
                skip_field(&mut reader)?;
                skip_field(&mut reader)?;
            }
            _ => return Err(SnapshotError::Damaged("an unknown section")),
        }
    }
    let (mut inner, digest) = reader.finish();
    let mut stored = [0u8; 32];
    inner
        .read_exact(&mut stored)
        .map_err(|_| SnapshotError::Damaged("the digest is missing"))?;
    if stored != digest {
        return Err(SnapshotError::Damaged("the digest does not match"));
    }
    if inner.read(&mut [0u8; 1])? != 0 {
        return Err(SnapshotError::Damaged("bytes after the digest"));
    }
    Ok(())
}

fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

fn write_field(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| u64::from(*len) <= MAX_FIELD)
        .ok_or_else(|| std::io::Error::other("a value longer than 64 MiB"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

fn read_tag(input: &mut impl Read) -> Result<u8, SnapshotError> {
    let mut tag = [0u8; 1];
    input
        .read_exact(&mut tag)
        .map_err(|_| SnapshotError::Damaged("cut short"))?;
    Ok(tag[0])
}

fn read_len(input: &mut impl Read) -> Result<u64, SnapshotError> {
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .map_err(|_| SnapshotError::Damaged("cut short"))?;
    let len = u64::from(u32::from_be_bytes(len));
    if len > MAX_FIELD {
        return Err(SnapshotError::Damaged("a field longer than 64 MiB"));
    }
    Ok(len)
}

fn read_field(input: &mut impl Read) -> Result<Vec<u8>, SnapshotError> {
    let len = read_len(input)?;
    let mut bytes = Vec::new();
    input.take(len).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).ok() != Some(len) {
        return Err(SnapshotError::Damaged("cut short"));
    }
    Ok(bytes)
}

fn skip_field(input: &mut impl Read) -> Result<(), SnapshotError> {
    let len = read_len(input)?;
    let skipped = std::io::copy(&mut input.take(len), &mut std::io::sink())?;
    if skipped != len {
        return Err(SnapshotError::Damaged("cut short"));
    }
    Ok(())
}

/// A reader or writer that hashes every byte passing through.
struct Hashed<T> {
    inner: T,
    hash: Sha256,
}

impl<T> Hashed<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
        }
    }

    fn finish(self) -> (T, [u8; 32]) {
        (self.inner, self.hash.finalize().into())
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(dir: &Path, entries: u32) {
        let db = quiet(dir).open().unwrap();
        let records = db.open_tree("records").unwrap();
        for n in 0..entries {
            records
                .insert(n.to_be_bytes(), format!("sealed-{n}").as_bytes())
                .unwrap();
        }
        db.open_tree("audit").unwrap().insert(b"0", b"e").unwrap();
        db.flush().unwrap();
    }

    /// Opens a store this process just closed: sled's I/O threads may hold
    /// its file lock a moment after the last handle drops (a process that
    /// exits, like `tessera restore`, never meets this).
    fn open_when_free(dir: &Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match quiet(dir).open() {
                Ok(db) => return db,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("the restored store did not open: {e}"),
            }
        }
    }

    #[test]
    fn a_snapshot_restores_every_tree_and_entry() {
        let dir = tempfile::tempdir().unwrap();
        store_with(&dir.path().join("store"), 25_000);
        let file = dir.path().join("snap");
        let written = write(&dir.path().join("store"), &file).unwrap();
        let restored = restore(&file, &dir.path().join("copy/store")).unwrap();
        assert_eq!(written, restored);
        assert_eq!(written.entries, 25_001);
        let copy = open_when_free(&dir.path().join("copy/store"));
        let records = copy.open_tree("records").unwrap();
        assert_eq!(records.len(), 25_000);
        assert_eq!(
            records.get(24_999u32.to_be_bytes()).unwrap().unwrap(),
            b"sealed-24999".as_slice()
        );
        assert!(!dir.path().join("copy/store.restoring").exists());
    }

    /// A cut, altered or extended file is refused before anything is
    /// written; an existing store is never overwritten.
    #[test]
    fn a_damaged_snapshot_or_an_existing_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        store_with(&dir.path().join("store"), 10);
        let file = dir.path().join("snap");
        write(&dir.path().join("store"), &file).unwrap();
        let good = std::fs::read(&file).unwrap();
        let target = dir.path().join("copy/store");
        let mut cut = good.clone();
        cut.truncate(good.len() - 40);
        let mut altered = good.clone();
        altered[MAGIC.len() + 8] ^= 1;
        let mut extended = good.clone();
        extended.push(0);
        // A length field of 4 GiB must not make the restore allocate it.
        let mut huge = MAGIC.to_vec();
        huge.push(TREE);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        for (name, bytes) in [
            ("cut", cut),
            ("altered", altered),
            ("extended", extended),
            ("huge", huge),
        ] {
            std::fs::write(&file, bytes).unwrap();
            assert!(
                matches!(restore(&file, &target), Err(SnapshotError::Damaged(_))),
                "{name}"
            );
            assert!(!target.exists(), "{name}");
        }
        std::fs::write(&file, &good).unwrap();
        assert!(matches!(
            restore(&file, &dir.path().join("store")),
            Err(SnapshotError::TargetExists(_))
        ));
        // An existing output file is not overwritten either.
        assert!(write(&dir.path().join("store"), &file).is_err());
    }
}
