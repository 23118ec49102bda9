//! Tokens and the identifiers the store knows them by.
//!
//! A token is public in shape (it keeps at most the BIN and last four of the
//! PAN) but it is also a bearer handle for detokenization, so its hidden
//! digits are never logged or put into errors. The store never sees a token:
//! it sees a [`TokenId`], a keyed hash of the token (DESIGN.md §4).

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::domain::pan::{MAX_PAN_LEN, MIN_PAN_LEN};

/// Why a token string was refused. No variant carries the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No characters.
    #[error("token is empty")]
    Empty,
    /// Something other than ASCII digits.
    #[error("token may contain only digits")]
    InvalidCharacter,
    /// Too few or too many digits.
    #[error("token must have 12 to 19 digits, got {digits}")]
    BadLength {
        /// How many characters were present.
        digits: usize,
    },
}

/// A token: 12–19 digits, as issued by a token generator.
#[derive(PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Token(String);

impl Token {
    /// Parses a token as a caller sends it: digits only.
    pub fn parse(input: &str) -> Result<Self, TokenError> {
        if input.is_empty() {
            return Err(TokenError::Empty);
        }
        if !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::InvalidCharacter);
        }
        if !(MIN_PAN_LEN..=MAX_PAN_LEN).contains(&input.len()) {
            return Err(TokenError::BadLength {
                digits: input.len(),
            });
        }
        Ok(Self(input.to_owned()))
    }

    /// A second copy, zeroized on drop like the first: a batch that names
    /// one card twice returns its token twice. Deliberately not `Clone`.
    pub(crate) fn copy(&self) -> Self {
        Self(self.0.clone())
    }

    /// Builds a token from digit values produced by a generator.
    pub fn from_digits(digits: &[u8]) -> Result<Self, TokenError> {
        if digits.iter().any(|d| *d > 9) {
            return Err(TokenError::InvalidCharacter);
        }
        let text: String = digits.iter().map(|d| char::from(d + b'0')).collect();
        Self::parse(&text)
    }

    /// The token text, for responses and for hashing into a [`TokenId`].
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token as digit values.
    pub fn digits(&self) -> Vec<u8> {
        self.0.bytes().map(|b| b - b'0').collect()
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a parsed token.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} digits>)", self.0.len())
    }
}

/// Length of a [`TokenId`]: a full HMAC-SHA256 output.
pub const TOKEN_ID_LEN: usize = 32;

/// The store's name for a token: `HMAC-SHA256(tenant token-id key, token)`.
///
/// A copy of the store alone therefore lists no tokens, and the same token
/// string in two tenants names two different records.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId([u8; TOKEN_ID_LEN]);

impl TokenId {
    /// Wraps hash bytes.
    pub fn from_bytes(bytes: [u8; TOKEN_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads an id from exactly [`TOKEN_ID_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The id bytes.
    pub fn as_bytes(&self) -> &[u8; TOKEN_ID_LEN] {
        &self.0
    }

    /// A short public reference for logs and audit: the first 8 bytes in hex.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({})", self.short())
    }
}

/// Length of a [`Fingerprint`].
pub const FINGERPRINT_LEN: usize = 32;

/// `HMAC-SHA256(tenant fingerprint key, PAN)`: finds the live token of a PAN
/// in deterministic mode without storing the PAN (PCI DSS 3.5.1.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// Wraps hash bytes.
    pub fn from_bytes(bytes: [u8; FINGERPRINT_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a fingerprint from exactly [`FINGERPRINT_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The hash bytes.
    pub fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(<keyed hash>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_digits_only() {
        assert!(Token::parse("4111110000001234").is_ok());
        assert_eq!(Token::parse(""), Err(TokenError::Empty));
        assert_eq!(
            Token::parse("4111 1100 0000 1234"),
            Err(TokenError::InvalidCharacter)
        );
        assert_eq!(
            Token::parse("12345"),
            Err(TokenError::BadLength { digits: 5 })
        );
    }

    #[test]
    fn debug_hides_digits() {
        let token = Token::parse("4111110000001234").unwrap();
        assert_eq!(format!("{token:?}"), "Token(<16 digits>)");
    }

    #[test]
    fn digits_round_trip() {
        let token = Token::parse("5500000000000004").unwrap();
        assert_eq!(Token::from_digits(&token.digits()).unwrap(), token);
    }
}
