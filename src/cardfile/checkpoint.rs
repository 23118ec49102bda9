//! Where an interrupted import or export resumes: `OUTPUT.progress`, beside
//! the output, replaced atomically after every batch once the output up
//! to it is synced.
//!
//! A run that stops (a crash, ctrl-c, a server that stays unavailable)
//! between a batch's answer and its checkpoint loses only output past the
//! checkpoint: the next run cuts the output back to the recorded length and
//! sends those rows again. Import tokenizes deterministically, so a row
//! sent twice gets the same token back (`reused`), never a second one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How far a run got.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The input's length when the run started: a different file (or one
    /// changed since) is not resumed.
    pub input_len: u64,
    /// SHA-256 of the input's first `input_pos` bytes, hex: an input of
    /// the same length but other rows is not resumed either.
    #[serde(default)]
    pub input_prefix_sha256: String,
    /// Input bytes consumed.
    pub input_pos: u64,
    /// Rows read (written or rejected).
    pub rows: u64,
    /// Rows written.
    pub written: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// The output's synced length.
    pub output_len: u64,
    /// The output file's device and inode: a resumed run writes only into
    /// the file the run created, not one put in its place.
    #[serde(default)]
    pub output_file: (u64, u64),
}

/// The checkpoint file of `output`.
pub fn path_of(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".progress");
    PathBuf::from(name)
}

/// The checkpoint of `output`, if a run left one.
/// Only a private file of this user's is read (see
/// [`crate::private_file::open_own`]).
pub fn load(output: &Path) -> std::io::Result<Option<Checkpoint>> {
    use std::io::Read;
    let mut file = match crate::private_file::open_own(&path_of(output)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| std::io::Error::other("the progress file is not a checkpoint"))
}

/// Records `checkpoint` (durable on return).
pub fn save(output: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(checkpoint).map_err(std::io::Error::other)?;
    crate::private_file::replace(&path_of(output), &bytes)
}

/// Removes the checkpoint of a finished run.
pub fn finish(output: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path_of(output)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A running SHA-256 of a file's first bytes, read through a handle of its
/// own as the run's reader moves on.
#[derive(Debug)]
pub struct PrefixHash {
    file: std::io::BufReader<std::fs::File>,
    hasher: sha2::Sha256,
    position: u64,
}

impl PrefixHash {
    /// Starts at the beginning of `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use sha2::Digest;
        Ok(Self {
            file: std::io::BufReader::new(std::fs::File::open(path)?),
            hasher: sha2::Sha256::new(),
            position: 0,
        })
    }

    /// Hashes up to byte `position`; returns the digest so far, hex.
    pub fn advance_to(&mut self, position: u64) -> std::io::Result<String> {
        use sha2::Digest;
        use std::io::Read;
        let wanted = position.saturating_sub(self.position);
        let copied = std::io::copy(
            &mut (&mut self.file).take(wanted),
            &mut HashWriter(&mut self.hasher),
        )?;
        self.position += copied;
        Ok(hex::encode(self.hasher.clone().finalize()))
    }
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
