//! Sealing and opening PANs: AES-256-GCM under per-record keys.
//!
//! - Record key = HKDF-SHA256(ikm = tenant DEK, salt = token id,
//!   info = `"tessera/record/v1"`) (RFC 5869). Every record has its own key,
//!   so the 2^32 random-nonce limit per key (NIST SP 800-38D §8.3) is never
//!   approached however many records one DEK seals.
//! - Nonce: 96 random bits from the OS CSPRNG, made here; callers never pass
//!   one.
//! - AAD: see [`aad`]. Header layout: see [`header`].
//! - Every failure to open, whatever the cause, is the one opaque
//!   [`EnvelopeError::Unreadable`], so an attacker learns nothing from which
//!   check failed.

pub mod aad;
pub mod header;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::csprng::{self, RngError};
use crate::domain::{TenantId, TokenId};
use crate::secret::{DataKey, KEY_LEN};
use header::{FORMAT_V1, HEADER_LEN, Header, NONCE_LEN, TAG_LEN};

/// HKDF info string for record keys (versioned with the format).
pub const RECORD_KEY_INFO: &[u8] = b"tessera/record/v1";

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The record could not be opened: malformed, tampered, moved, or the
    /// wrong key. Deliberately one variant (the opaque decryption error).
    #[error("sealed record could not be opened")]
    Unreadable,
    /// No nonce could be drawn.
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// Where a record belongs: its tenant, its id and the DEK version sealing it.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The owning tenant.
    pub tenant: &'a TenantId,
    /// The record's token id.
    pub token_id: &'a TokenId,
    /// The DEK version.
    pub dek_version: u32,
}

/// Seals `plaintext` for the record named by `binding`, under `dek`.
///
/// ```
/// use tessera::domain::{TenantId, TokenId};
/// use tessera::envelope::{self, Binding};
/// use tessera::secret::DataKey;
///
/// let dek = DataKey::generate().unwrap();
/// let tenant = TenantId::new("default").unwrap();
/// let id = TokenId::from_bytes([1; 32]);
/// let binding = Binding { tenant: &tenant, token_id: &id, dek_version: 1 };
/// let sealed = envelope::seal(&dek, binding, b"secret").unwrap();
/// assert_eq!(envelope::open(&dek, binding, &sealed).unwrap().as_slice(), b"secret");
/// let other = TokenId::from_bytes([2; 32]);
/// assert!(envelope::open(&dek, Binding { token_id: &other, ..binding }, &sealed).is_err());
/// ```
pub fn seal(
    dek: &DataKey,
    binding: Binding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; NONCE_LEN];
    csprng::fill(&mut nonce)?;
    seal_with_nonce(dek, binding, plaintext, nonce)
}

fn seal_with_nonce(
    dek: &DataKey,
    binding: Binding<'_>,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, EnvelopeError> {
    let header = Header {
        version: FORMAT_V1,
        dek_version: binding.dek_version,
        nonce,
    };
    let cipher = record_cipher(dek, binding.token_id)?;
    let aad = aad::record_aad(
        FORMAT_V1,
        binding.tenant,
        binding.token_id,
        binding.dek_version,
    );
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| EnvelopeError::Unreadable)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    header.encode_into(&mut out);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// The DEK version named in a sealed record's header, so the caller can
/// fetch the right key before [`open`].
pub fn dek_version(sealed: &[u8]) -> Result<u32, EnvelopeError> {
    Header::parse(sealed).map(|(header, _)| header.dek_version)
}

/// Opens a record sealed by [`seal`] for the same binding.
pub fn open(
    dek: &DataKey,
    binding: Binding<'_>,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let (header, ciphertext) = Header::parse(sealed)?;
    if header.dek_version != binding.dek_version {
        return Err(EnvelopeError::Unreadable);
    }
    let cipher = record_cipher(dek, binding.token_id)?;
    let aad = aad::record_aad(
        header.version,
        binding.tenant,
        binding.token_id,
        header.dek_version,
    );
    cipher
        .decrypt(
            &Nonce::from(header.nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::Unreadable)
}

fn record_cipher(dek: &DataKey, token_id: &TokenId) -> Result<Aes256Gcm, EnvelopeError> {
    let hkdf = Hkdf::<Sha256>::new(Some(token_id.as_bytes()), dek.expose_secret());
    let mut record_key = Zeroizing::new([0u8; KEY_LEN]);
    hkdf.expand(RECORD_KEY_INFO, record_key.as_mut())
        .map_err(|_| EnvelopeError::Unreadable)?;
    Aes256Gcm::new_from_slice(record_key.as_ref()).map_err(|_| EnvelopeError::Unreadable)
}

#[cfg(test)]
mod tests;
