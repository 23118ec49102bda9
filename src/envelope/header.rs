//! The versioned header at the front of every sealed record.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "TS"
//! 2       1     format version (1)
//! 3       4     DEK version, big-endian
//! 7       12    AES-GCM nonce (random, 96 bits)
//! 19      n+16  ciphertext ‖ tag
//! ```
//!
//! The header is authenticated: version and DEK version also enter the AAD
//! (see `aad.rs`), so a header edited to name another key fails to open.

use crate::envelope::EnvelopeError;

/// Identifies a Tessera envelope.
pub const MAGIC: [u8; 2] = *b"TS";
/// The only format version so far.
pub const FORMAT_V1: u8 = 1;
/// AES-GCM nonce length: 96 bits (NIST SP 800-38D §8.2, the recommended size).
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length: 128 bits.
pub const TAG_LEN: usize = 16;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 2 + 1 + 4 + NONCE_LEN;

/// The parsed header of a sealed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u8,
    /// Which DEK version of the tenant sealed the record.
    pub dek_version: u32,
    /// The record's nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl Header {
    /// Appends the encoded header to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(self.version);
        out.extend_from_slice(&self.dek_version.to_be_bytes());
        out.extend_from_slice(&self.nonce);
    }

    /// Splits a sealed record into its header and the ciphertext ‖ tag.
    ///
    /// Anything malformed is the one opaque [`EnvelopeError::Unreadable`].
    pub fn parse(sealed: &[u8]) -> Result<(Self, &[u8]), EnvelopeError> {
        if sealed.len() < HEADER_LEN + TAG_LEN || sealed[..2] != MAGIC {
            return Err(EnvelopeError::Unreadable);
        }
        let version = sealed[2];
        if version != FORMAT_V1 {
            return Err(EnvelopeError::Unreadable);
        }
        let mut dek_version = [0u8; 4];
        dek_version.copy_from_slice(&sealed[3..7]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[7..HEADER_LEN]);
        Ok((
            Self {
                version,
                dek_version: u32::from_be_bytes(dek_version),
                nonce,
            },
            &sealed[HEADER_LEN..],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        let header = Header {
            version: FORMAT_V1,
            dek_version: 7,
            nonce: [9; NONCE_LEN],
        };
        let mut bytes = Vec::new();
        header.encode_into(&mut bytes);
        bytes.extend_from_slice(&[0; TAG_LEN]);
        let (parsed, rest) = Header::parse(&bytes).unwrap();
        assert_eq!(parsed, header);
        assert_eq!(rest.len(), TAG_LEN);
    }

    #[test]
    fn rejects_short_bad_magic_and_unknown_version() {
        assert!(Header::parse(&[0; 10]).is_err());
        let mut bytes = vec![b'T', b'S', FORMAT_V1];
        bytes.extend_from_slice(&[0; HEADER_LEN + TAG_LEN]);
        assert!(Header::parse(&bytes).is_ok());
        bytes[0] = b'X';
        assert!(Header::parse(&bytes).is_err());
        bytes[0] = b'T';
        bytes[2] = 2;
        assert!(Header::parse(&bytes).is_err());
    }
}
