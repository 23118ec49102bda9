//! Primary account numbers: parsing, Luhn, brand, masking.
//!
//! A [`Pan`] is the most sensitive value in the system. It zeroizes on drop,
//! has no `Clone`, and its `Debug` shows only the last four digits. Parse
//! errors say what is wrong, never what was sent.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::domain::brand::CardBrand;
use crate::domain::disclosure::{self, MASK_TRAILING};
use crate::tokens::luhn;

/// Shortest PAN accepted (ISO/IEC 7812-1 allows 8, but payment cards in use
/// have at least 12 digits; DESIGN.md §2).
pub const MIN_PAN_LEN: usize = 12;
/// Longest PAN (ISO/IEC 7812-1).
pub const MAX_PAN_LEN: usize = 19;

/// Why a PAN was refused. No variant carries the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PanError {
    /// Nothing but separators, or nothing at all.
    #[error("PAN is empty")]
    Empty,
    /// A character other than a digit, space or dash.
    #[error("PAN may contain only digits, spaces and dashes")]
    InvalidCharacter,
    /// Too few or too many digits.
    #[error("PAN must have 12 to 19 digits, got {digits}")]
    BadLength {
        /// How many digits were present.
        digits: usize,
    },
    /// The Luhn check failed.
    #[error("PAN fails the Luhn check")]
    LuhnMismatch,
}

/// A validated PAN: 12–19 Luhn-valid digits, held as digit values (0..=9).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Pan {
    digits: [u8; MAX_PAN_LEN],
    len: u8,
}

impl Pan {
    /// Parses a PAN, stripping spaces and dashes.
    ///
    /// ```
    /// use tessera::domain::{CardBrand, Pan, PanError};
    ///
    /// let pan = Pan::parse("4111 1111-1111 1111").unwrap();
    /// assert_eq!(pan.brand(), CardBrand::Visa);
    /// assert_eq!(pan.masked().as_str(), "411111******1111");
    /// assert_eq!(format!("{pan:?}"), "Pan(****1111)");
    /// assert_eq!(Pan::parse("4111111111111112").err(), Some(PanError::LuhnMismatch));
    /// ```
    pub fn parse(input: &str) -> Result<Self, PanError> {
        Self::parse_bytes(input.as_bytes())
    }

    /// Parses a PAN from ASCII bytes, stripping spaces and dashes.
    pub fn parse_bytes(input: &[u8]) -> Result<Self, PanError> {
        let mut digits = [0u8; MAX_PAN_LEN];
        let mut len = 0usize;
        for &byte in input {
            match byte {
                b'0'..=b'9' => {
                    if len < MAX_PAN_LEN {
                        digits[len] = byte - b'0';
                    }
                    len += 1;
                }
                b' ' | b'-' => {}
                _ => {
                    digits.zeroize();
                    return Err(PanError::InvalidCharacter);
                }
            }
        }
        let result = Self::from_digit_values(&digits[..len.min(MAX_PAN_LEN)], len);
        digits.zeroize();
        result
    }

    /// Builds a PAN from digit values; `counted` is the true digit count (it
    /// may exceed the slice when the input was too long).
    fn from_digit_values(values: &[u8], counted: usize) -> Result<Self, PanError> {
        if counted == 0 {
            return Err(PanError::Empty);
        }
        if !(MIN_PAN_LEN..=MAX_PAN_LEN).contains(&counted) {
            return Err(PanError::BadLength { digits: counted });
        }
        if !luhn::is_valid(values) {
            return Err(PanError::LuhnMismatch);
        }
        let mut digits = [0u8; MAX_PAN_LEN];
        digits[..values.len()].copy_from_slice(values);
        Ok(Self {
            digits,
            len: u8::try_from(values.len()).map_err(|_| PanError::BadLength { digits: counted })?,
        })
    }

    /// Builds a PAN from digit values (0..=9), checking length and Luhn.
    pub fn from_digits(values: &[u8]) -> Result<Self, PanError> {
        if values.iter().any(|d| *d > 9) {
            return Err(PanError::InvalidCharacter);
        }
        Self::from_digit_values(values, values.len())
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false: a PAN has at least 12 digits. Present for clippy's
    /// `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digit values (0..=9). Every caller handles card data.
    pub fn expose_digits(&self) -> &[u8] {
        &self.digits[..self.len()]
    }

    /// The PAN as ASCII digits, in a buffer that zeroizes on drop. Used only
    /// to seal the PAN and to build `DetokenizeResponse`.
    pub fn expose_ascii(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.expose_digits().iter().map(|d| d + b'0').collect())
    }

    /// The brand, from the issuer identification number.
    pub fn brand(&self) -> CardBrand {
        CardBrand::from_iin(self.expose_digits())
    }

    /// The PAN masked to at most the first six and last four digits, fewer
    /// leading ones for short PANs ([`disclosure::mask_leading`]).
    pub fn masked(&self) -> MaskedPan {
        MaskedPan::of_digits(self.expose_digits())
    }

    /// The last four digits, which PCI DSS lets any system show.
    pub fn last_four(&self) -> [u8; 4] {
        let d = self.expose_digits();
        let n = d.len();
        [
            d[n - 4] + b'0',
            d[n - 3] + b'0',
            d[n - 2] + b'0',
            d[n - 1] + b'0',
        ]
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.last_four();
        write!(f, "Pan(****{})", String::from_utf8_lossy(&last))
    }
}

/// A PAN masked for display: the leading digits [`disclosure::mask_leading`]
/// allows (the first six from 15 digits up), `*`, and the last four.
#[derive(Clone, PartialEq, Eq)]
pub struct MaskedPan(String);

impl MaskedPan {
    /// Masks digit values (0..=9).
    pub fn of_digits(digits: &[u8]) -> Self {
        let n = digits.len();
        let leading = disclosure::mask_leading(n);
        let masked = digits
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if i < leading || i + MASK_TRAILING >= n {
                    char::from(d + b'0')
                } else {
                    '*'
                }
            })
            .collect();
        Self(masked)
    }

    /// Restores a masked PAN read back from the store, checking its shape:
    /// digits only in the leading places the length allows and the last
    /// four. Records written before short PANs were masked more strictly
    /// show six leading digits; they are read as stored.
    pub fn from_stored(text: String) -> Option<Self> {
        let n = text.len();
        let leading = text.bytes().take_while(u8::is_ascii_digit).count();
        let well_formed = (MIN_PAN_LEN..=MAX_PAN_LEN).contains(&n)
            && (leading == disclosure::mask_leading(n) || leading == disclosure::MASK_LEADING_MAX)
            && text.bytes().enumerate().all(|(i, b)| {
                if i < leading || i + MASK_TRAILING >= n {
                    b.is_ascii_digit()
                } else {
                    b == b'*'
                }
            });
        well_formed.then_some(Self(text))
    }

    /// The masked text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MaskedPan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for MaskedPan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_strips_separators() {
        let pan = Pan::parse("4111 1111-1111 1111").unwrap();
        assert_eq!(pan.len(), 16);
        assert_eq!(pan.brand(), CardBrand::Visa);
        assert_eq!(pan.masked().as_str(), "411111******1111");
    }

    #[test]
    fn refuses_bad_input_without_echoing_it() {
        assert_eq!(Pan::parse("").err(), Some(PanError::Empty));
        assert_eq!(Pan::parse(" - ").err(), Some(PanError::Empty));
        assert_eq!(
            Pan::parse("4111x111").err(),
            Some(PanError::InvalidCharacter)
        );
        assert_eq!(
            Pan::parse("41111111116").err(),
            Some(PanError::BadLength { digits: 11 })
        );
        assert_eq!(
            Pan::parse("41111111111111111111").err(),
            Some(PanError::BadLength { digits: 20 })
        );
        assert_eq!(
            Pan::parse("4111111111111112").err(),
            Some(PanError::LuhnMismatch)
        );
        let message = Pan::parse("4111111111111112").unwrap_err().to_string();
        assert!(!message.contains("4111"), "{message}");
    }

    #[test]
    fn lengths_twelve_to_nineteen_accepted() {
        for len in MIN_PAN_LEN..=MAX_PAN_LEN {
            let mut digits = vec![5u8; len];
            let last = len - 1;
            digits[last] = luhn::completing_digit(&digits, last);
            let pan = Pan::from_digits(&digits).unwrap();
            assert_eq!(pan.len(), len);
            let masked = pan.masked();
            assert_eq!(masked.as_str().len(), len);
            // PCI SSC FAQ 1091: at least 5 hidden up to 15 digits, 6 above.
            let hidden = masked.as_str().bytes().filter(|b| *b == b'*').count();
            assert_eq!(hidden, if len <= 15 { 5.max(len - 10) } else { len - 10 });
            assert!(
                masked
                    .as_str()
                    .ends_with(&String::from_utf8_lossy(&pan.last_four()).into_owned())
            );
            assert!(MaskedPan::from_stored(masked.as_str().to_owned()).is_some());
        }
    }

    /// Finding 12: a 12-digit PAN masked as 6 + 4 left 2 hidden digits,
    /// 10 Luhn candidates.
    #[test]
    fn short_pans_hide_at_least_five_digits() {
        let pan = Pan::parse("501800000009").unwrap();
        assert_eq!(pan.masked().as_str(), "501*****0009");
        let amex = Pan::parse("378282246310005").unwrap();
        assert_eq!(amex.masked().as_str(), "378282*****0005");
    }

    #[test]
    fn debug_shows_only_last_four() {
        let pan = Pan::parse("4111111111111111").unwrap();
        assert_eq!(format!("{pan:?}"), "Pan(****1111)");
    }

    #[test]
    fn stored_mask_shape_is_checked() {
        assert!(MaskedPan::from_stored("411111******1111".to_owned()).is_some());
        assert!(MaskedPan::from_stored("4111111111111111".to_owned()).is_none());
        assert!(MaskedPan::from_stored("41111*******1111".to_owned()).is_none());
        // 12 digits show 3 + 4 (and legacy 6 + 4 records still read).
        assert!(MaskedPan::from_stored("555*****4444".to_owned()).is_some());
        assert!(MaskedPan::from_stored("555555**4444".to_owned()).is_some());
        assert!(MaskedPan::from_stored("5555555*4444".to_owned()).is_none());
    }
}
