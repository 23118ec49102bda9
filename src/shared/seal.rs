//! The key that seals shared state at rest.
//!
//! Shared entries hold what an attacker with write access to the database
//! would most like to forge or read: principals (API key hashes, TOTP
//! secrets), pending approvals, session hashes, locks. Each value is sealed
//! with AES-256-GCM under this key, its kind and key bound as associated
//! data, so a row that was edited, or moved to another entry, does not
//! open: the database alone can neither mint an admin nor read a second
//! factor.
//!
//! The key is not the vault's: a sealed vault must still authenticate its
//! operators (their TOTP secrets are shared state) to be unsealed. It is a
//! 32-byte file, mode 0600, that every replica of one vault is given
//! (`[access] state_key_file`; a Kubernetes Secret, for example). The
//! embedded stores, one node each, create it in the data directory.

use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use zeroize::Zeroizing;

use crate::csprng;
use crate::secret::{DataKey, KEY_LEN};
use crate::store::StateKind;

const NONCE_LEN: usize = 12;
const DOMAIN: &[u8] = b"tessera/state/v1";

/// File name of the key in the data directory (embedded stores).
pub const FILE_NAME: &str = "state.key";

/// The state key could not be read or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealKeyError {
    /// The file is unreadable, or not 32 bytes.
    #[error("state key file {path}: {reason}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// No randomness for a new key or nonce.
    #[error(transparent)]
    Rng(#[from] csprng::RngError),
    /// The value is too long to seal.
    #[error("a shared state value too long to seal")]
    TooLong,
}

/// A sealed value did not open: edited, moved, or sealed under another key.
/// One opaque error, whatever the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a shared state entry did not open under the state key")]
pub struct OpenError;

/// The state key.
pub struct StateSeal {
    key: DataKey,
}

impl std::fmt::Debug for StateSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSeal")
    }
}

impl StateSeal {
    /// A seal under `key`.
    pub fn new(key: DataKey) -> Self {
        Self { key }
    }

    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<Self, SealKeyError> {
        let error = |reason: String| SealKeyError::File {
            path: path.to_owned(),
            reason,
        };
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| error(e.to_string()))?);
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| error(format!("must hold exactly {KEY_LEN} bytes")))?;
        Ok(Self::new(DataKey::from_bytes(key)))
    }

    /// Reads the key file at `path`, creating it (random, mode 0600) when
    /// missing.
    pub fn load_or_create(path: &Path) -> Result<Self, SealKeyError> {
        if !path.exists() {
            let key = DataKey::generate()?;
            match crate::private_file::create_new(path, key.expose_secret()) {
                Ok(()) => return Ok(Self::new(key)),
                // Another process made it first: read theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(SealKeyError::File {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Self::load(path)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.key.expose_secret()).into())
    }

    fn aad(kind: StateKind, key: &str) -> Vec<u8> {
        let mut aad = DOMAIN.to_vec();
        aad.extend_from_slice(kind.name().as_bytes());
        aad.push(0);
        aad.extend_from_slice(key.as_bytes());
        aad
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plain` for entry `(kind, key)`.
    pub fn seal(&self, kind: StateKind, key: &str, plain: &[u8]) -> Result<Vec<u8>, SealKeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        csprng::fill(&mut nonce)?;
        let aad = Self::aad(kind, key);
        let sealed = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| SealKeyError::TooLong)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Self::seal`] made for the same entry.
    pub fn open(
        &self,
        kind: StateKind,
        key: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
        let aad = Self::aad(kind, key);
        self.cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_for_its_entry_under_its_key() {
        let seal = StateSeal::new(DataKey::from_bytes([1; 32]));
        let sealed = seal.seal(StateKind::Principal, "book", b"secret").unwrap();
        assert_eq!(
            seal.open(StateKind::Principal, "book", &sealed)
                .unwrap()
                .as_slice(),
            b"secret"
        );
        assert!(seal.open(StateKind::Principal, "other", &sealed).is_err());
        assert!(seal.open(StateKind::Approval, "book", &sealed).is_err());
        let other = StateSeal::new(DataKey::from_bytes([2; 32]));
        assert!(other.open(StateKind::Principal, "book", &sealed).is_err());
        let mut edited = sealed.clone();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        assert!(seal.open(StateKind::Principal, "book", &edited).is_err());
        assert!(
            seal.open(StateKind::Principal, "book", &sealed[..5])
                .is_err()
        );
    }

    #[test]
    fn the_key_file_is_made_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let first = StateSeal::load_or_create(&path).unwrap();
        let sealed = first.seal(StateKind::Lock, "k", b"x").unwrap();
        let again = StateSeal::load_or_create(&path).unwrap();
        assert_eq!(
            again
                .open(StateKind::Lock, "k", &sealed)
                .unwrap()
                .as_slice(),
            b"x"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"short").unwrap();
        assert!(StateSeal::load(&path).is_err());
    }
}
