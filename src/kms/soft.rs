//! A software master key that wraps data keys with AES-256-GCM.
//!
//! Shared by the backends whose master key lives in process memory (dev,
//! Shamir). The wrap binds the master key id and the [`KeyContext`] as AAD,
//! so a wrapped key moved to another tenant, purpose or version, or offered
//! to another master key, fails to unwrap (PCI DSS 3.7.7).

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::csprng;
use crate::kms::{KeyContext, KeyId, KmsError, WrappedKey};
use crate::secret::{DataKey, KEY_LEN};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A master key held in memory.
pub struct SoftwareKek {
    key: DataKey,
    key_id: KeyId,
    domain: &'static [u8],
}

impl std::fmt::Debug for SoftwareKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareKek")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SoftwareKek {
    /// Wraps `key`; its id is `prefix:` and the first 8 bytes of
    /// SHA-256(key) in hex, which names the key without revealing it.
    /// `domain` separates one backend's wraps from another's.
    pub fn new(key: DataKey, prefix: &str, domain: &'static [u8]) -> Result<Self, KmsError> {
        let digest = Sha256::digest(key.expose_secret());
        let key_id = KeyId::new(format!("{prefix}:{}", hex::encode(&digest[..8])))
            .ok_or_else(|| KmsError::Refused("empty key id".into()))?;
        Ok(Self {
            key,
            key_id,
            domain,
        })
    }

    /// The master key's id.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    fn cipher(&self) -> Result<Aes256Gcm, KmsError> {
        Aes256Gcm::new_from_slice(self.key.expose_secret()).map_err(|_| KmsError::Unwrap)
    }

    fn aad(&self, ctx: &KeyContext) -> Vec<u8> {
        let mut aad = self.domain.to_vec();
        aad.extend_from_slice(self.key_id.as_str().as_bytes());
        aad.push(0);
        aad.extend_from_slice(&ctx.to_bytes());
        aad
    }

    /// Generates a data key and wraps it: `nonce ‖ ciphertext ‖ tag`.
    pub(crate) fn generate(&self, ctx: &KeyContext) -> Result<(DataKey, WrappedKey), KmsError> {
        let key = DataKey::generate()?;
        let wrapped = self.wrap(&key, ctx)?;
        Ok((key, wrapped))
    }

    /// Wraps an existing data key (used when rewrapping under a new master key).
    pub(crate) fn wrap(&self, key: &DataKey, ctx: &KeyContext) -> Result<WrappedKey, KmsError> {
        let mut nonce = [0u8; NONCE_LEN];
        csprng::fill(&mut nonce)?;
        let aad = self.aad(ctx);
        let sealed = self
            .cipher()?
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: key.expose_secret(),
                    aad: &aad,
                },
            )
            .map_err(|_| KmsError::Unwrap)?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&sealed);
        WrappedKey::new(wrapped).ok_or(KmsError::Unwrap)
    }

    /// Unwraps a key made by [`SoftwareKek::generate`] for `ctx`.
    pub(crate) fn unwrap(
        &self,
        wrapped: &WrappedKey,
        ctx: &KeyContext,
    ) -> Result<DataKey, KmsError> {
        let bytes = wrapped.as_bytes();
        if bytes.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
            return Err(KmsError::Unwrap);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KmsError::Unwrap)?;
        let aad = self.aad(ctx);
        let plain = Zeroizing::new(
            self.cipher()?
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| KmsError::Unwrap)?,
        );
        DataKey::from_slice(&plain).ok_or(KmsError::Unwrap)
    }
}

/// Master key versions held in memory; the newest wraps, any unwraps.
///
/// A wrapped key names the version that wrapped it in its first four bytes
/// (big-endian), so rotation never strands an existing wrap.
#[derive(Debug)]
pub struct SoftwareKeyring {
    versions: Vec<SoftwareKek>,
}

impl SoftwareKeyring {
    /// A keyring over versions 1..=n, oldest first; at least one.
    pub fn new(versions: Vec<SoftwareKek>) -> Result<Self, KmsError> {
        if versions.is_empty() {
            return Err(KmsError::Refused(
                "a keyring needs at least one master key".into(),
            ));
        }
        Ok(Self { versions })
    }

    /// Adds a new current version.
    pub fn push(&mut self, kek: SoftwareKek) {
        self.versions.push(kek);
    }

    /// The current (newest) version number, from 1.
    pub fn current_version(&self) -> u32 {
        u32::try_from(self.versions.len()).unwrap_or(u32::MAX)
    }

    fn current(&self) -> Result<&SoftwareKek, KmsError> {
        self.versions.last().ok_or(KmsError::Unwrap)
    }

    /// The current master key's id.
    pub fn key_id(&self) -> Option<&KeyId> {
        self.versions.last().map(SoftwareKek::key_id)
    }

    fn tagged(version: u32, wrapped: &WrappedKey) -> Result<WrappedKey, KmsError> {
        let mut out = version.to_be_bytes().to_vec();
        out.extend_from_slice(wrapped.as_bytes());
        WrappedKey::new(out).ok_or(KmsError::Unwrap)
    }

    /// Generates a data key wrapped under the current version.
    pub fn generate(&self, ctx: &KeyContext) -> Result<(DataKey, WrappedKey), KmsError> {
        let (key, wrapped) = self.current()?.generate(ctx)?;
        Ok((key, Self::tagged(self.current_version(), &wrapped)?))
    }

    /// Wraps an existing data key under the current version.
    pub fn wrap(&self, key: &DataKey, ctx: &KeyContext) -> Result<WrappedKey, KmsError> {
        let wrapped = self.current()?.wrap(key, ctx)?;
        Self::tagged(self.current_version(), &wrapped)
    }

    /// Unwraps with the version the wrap names.
    pub fn unwrap(&self, wrapped: &WrappedKey, ctx: &KeyContext) -> Result<DataKey, KmsError> {
        let bytes = wrapped.as_bytes();
        let (version, rest) = bytes.split_first_chunk::<4>().ok_or(KmsError::Unwrap)?;
        let index = usize::try_from(u32::from_be_bytes(*version))
            .ok()
            .and_then(|v| v.checked_sub(1))
            .ok_or(KmsError::Unwrap)?;
        let kek = self.versions.get(index).ok_or(KmsError::Unwrap)?;
        kek.unwrap(
            &WrappedKey::new(rest.to_vec()).ok_or(KmsError::Unwrap)?,
            ctx,
        )
    }
}
