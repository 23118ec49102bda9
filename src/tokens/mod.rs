//! Token generation: format-preserving tokens from a PAN.
//!
//! A token has the PAN's length, keeps `keep_leading` (0, 6 or 8) leading and
//! `keep_trailing` (0 or 4) trailing digits, and replaces the rest: the *free*
//! digits. When the Luhn policy is `Invalid` or `Valid`, the last free digit is
//! *spent* on the policy and the others are *generated* (random) or
//! *encrypted* (FF1). The spent digit carries no information about the PAN:
//! in a Luhn-valid PAN any one digit follows from the others, so FF1 loses
//! nothing by leaving it out (see [`luhn::completing_digit`]).
//!
//! | generator | relation to the PAN | what the format must leave |
//! |---|---|---|
//! | [`random::RandomGenerator`] (default) | none: OS CSPRNG | one token value other than the PAN ([`random::RandomGenerator::capacity`]) |
//! | [`ff1::Ff1Generator`] | NIST SP 800-38G FF1, AES-256 | [`ff1::MIN_FF1_DIGITS`] encrypted digits (10^6 domain) |
//!
//! Every format also keeps no more digits than PCI SSC FAQ 1091 allows for
//! the PAN's length ([`TokenFormat::check_disclosure`],
//! [`crate::domain::disclosure`]).

pub mod ff1;
pub mod luhn;
pub mod random;

use std::ops::Range;

use crate::csprng::RngError;
use crate::domain::{Pan, Token, disclosure};

/// How the free digits are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GeneratorKind {
    /// OS CSPRNG digits; no relation to the PAN. The default (SECURITY.md §1.1).
    Random,
    /// FF1 format-preserving encryption; deterministic per tenant.
    Ff1,
}

/// Whether a token passes the Luhn check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LuhnPolicy {
    /// Always fails Luhn: a token can never be mistaken for a card. Default.
    Invalid,
    /// Always passes Luhn.
    Valid,
    /// No constraint.
    Any,
}

/// A token format was outside what the API allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// `keep_leading` must be 0, 6 or 8.
    #[error("keep_leading must be 0, 6 or 8")]
    KeepLeading,
    /// `keep_trailing` must be 0 or 4.
    #[error("keep_trailing must be 0 or 4")]
    KeepTrailing,
}

/// The shape of a token: generator, kept digits and Luhn policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenFormat {
    generator: GeneratorKind,
    keep_leading: u8,
    keep_trailing: u8,
    luhn: LuhnPolicy,
}

impl Default for TokenFormat {
    /// Random, first 6 and last 4 kept, Luhn-invalid (DESIGN.md §2).
    fn default() -> Self {
        Self {
            generator: GeneratorKind::Random,
            keep_leading: 6,
            keep_trailing: 4,
            luhn: LuhnPolicy::Invalid,
        }
    }
}

impl TokenFormat {
    /// Checks the kept-digit counts.
    pub fn new(
        generator: GeneratorKind,
        keep_leading: u32,
        keep_trailing: u32,
        luhn: LuhnPolicy,
    ) -> Result<Self, FormatError> {
        let keep_leading = match keep_leading {
            0 => 0,
            6 => 6,
            8 => 8,
            _ => return Err(FormatError::KeepLeading),
        };
        let keep_trailing = match keep_trailing {
            0 => 0,
            4 => 4,
            _ => return Err(FormatError::KeepTrailing),
        };
        Ok(Self {
            generator,
            keep_leading,
            keep_trailing,
            luhn,
        })
    }

    /// The generator.
    pub fn generator(&self) -> GeneratorKind {
        self.generator
    }

    /// Leading digits kept.
    pub fn keep_leading(&self) -> usize {
        usize::from(self.keep_leading)
    }

    /// Trailing digits kept.
    pub fn keep_trailing(&self) -> usize {
        usize::from(self.keep_trailing)
    }

    /// The Luhn policy.
    pub fn luhn(&self) -> LuhnPolicy {
        self.luhn
    }

    /// The same format keeping other digit counts, unchecked (tests build
    /// formats the API would refuse).
    #[cfg(test)]
    pub(crate) fn with_kept(self, keep_leading: u8, keep_trailing: u8) -> Self {
        Self {
            keep_leading,
            keep_trailing,
            ..self
        }
    }

    /// Refuses a format that would keep more digits of a PAN of `len` than
    /// PCI SSC FAQ 1091 allows ([`disclosure::allows`]).
    ///
    /// ```
    /// use tessera::tokens::{GeneratorKind, LuhnPolicy, TokenFormat};
    ///
    /// assert!(TokenFormat::default().check_disclosure(15).is_ok());
    /// assert!(TokenFormat::default().check_disclosure(13).is_err());
    /// let bin8 = TokenFormat::new(GeneratorKind::Random, 8, 4, LuhnPolicy::Invalid).unwrap();
    /// assert!(bin8.check_disclosure(16).is_ok());
    /// ```
    pub fn check_disclosure(&self, len: usize) -> Result<(), GenerateError> {
        let (lead, trail) = (self.keep_leading(), self.keep_trailing());
        if disclosure::allows(len, lead, trail) {
            Ok(())
        } else {
            Err(GenerateError::KeepsTooMany {
                kept: lead + trail,
                len,
                max_kept: disclosure::max_kept(len, lead),
            })
        }
    }

    /// Where the free, spent and generated digits sit for a PAN of `len`.
    ///
    /// ```
    /// use tessera::tokens::{GeneratorKind, LuhnPolicy, TokenFormat};
    ///
    /// // 16 digits keeping 6 + 4 leaves 6 free; the Luhn policy spends the last.
    /// let layout = TokenFormat::default().layout(16);
    /// assert_eq!(layout.free, 6..12);
    /// assert_eq!(layout.generated_len(), 5);
    /// let any = TokenFormat::new(GeneratorKind::Ff1, 6, 4, LuhnPolicy::Any).unwrap();
    /// assert_eq!(any.layout(16).generated_len(), 6);
    /// ```
    pub fn layout(&self, len: usize) -> Layout {
        let start = self.keep_leading().min(len);
        let end = len.saturating_sub(self.keep_trailing()).max(start);
        let spent = match self.luhn {
            LuhnPolicy::Any => None,
            LuhnPolicy::Invalid | LuhnPolicy::Valid => end.checked_sub(1).filter(|p| *p >= start),
        };
        Layout {
            free: start..end,
            spent,
        }
    }
}

/// Positions of one token's digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Positions replaced in the token.
    pub free: Range<usize>,
    /// The free position spent on the Luhn policy, if any: the last free one.
    pub spent: Option<usize>,
}

impl Layout {
    /// Positions whose digits are generated or encrypted (free minus spent).
    pub fn generated(&self) -> Range<usize> {
        match self.spent {
            Some(spent) => self.free.start..spent,
            None => self.free.clone(),
        }
    }

    /// How many digits are generated or encrypted.
    pub fn generated_len(&self) -> usize {
        self.generated().len()
    }
}

/// A token could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// FF1 would encrypt fewer than 6 digits: NIST SP 800-38G Rev.1 requires
    /// radix^len ≥ 10^6. Refused, never weakened.
    #[error("FF1 needs at least {minimum} encrypted digits, this format leaves {encrypted}")]
    Ff1DomainTooSmall {
        /// Digits FF1 would encrypt.
        encrypted: usize,
        /// The minimum.
        minimum: usize,
    },
    /// The format keeps more digits than PCI SSC FAQ 1091 allows for the
    /// PAN's length.
    #[error(
        "the format keeps {kept} of the card's {len} digits; PCI SSC FAQ 1091 allows at most {max_kept} for that length"
    )]
    KeepsTooMany {
        /// Digits the format keeps.
        kept: usize,
        /// The PAN's length.
        len: usize,
        /// Most digits that length may keep.
        max_kept: usize,
    },
    /// The format leaves no token value other than the card itself.
    #[error("the format leaves {free} replaceable digits: no token can differ from the card")]
    TokenSpaceTooSmall {
        /// Digits the format replaces.
        free: usize,
    },
    /// Every token of the card's bucket (its kept digits and Luhn policy)
    /// is taken.
    #[error(
        "all {capacity} tokens for this card's kept digits are in use; use a format that keeps fewer digits"
    )]
    BucketExhausted {
        /// How many tokens the bucket holds.
        capacity: u64,
    },
    /// The OS CSPRNG failed.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// FF1 itself failed (an internal invariant was broken).
    #[error("FF1 encryption failed")]
    Ff1Internal,
}

/// Produces a token for a PAN under a format.
///
/// Security contract: the token has the PAN's length and kept digits, meets
/// the Luhn policy, differs from the PAN, and reveals nothing of the free
/// digits beyond what the generator's row in the module table says.
/// `attempt` starts at 0 and grows when the vault finds the token taken;
/// deterministic generators must return a different token for each attempt.
pub trait TokenGenerator: Send + Sync {
    /// Generates the token for `pan`.
    fn generate(
        &self,
        pan: &Pan,
        format: &TokenFormat,
        attempt: u32,
    ) -> Result<Token, GenerateError>;
}

/// Writes the spent digit of `digits` so they meet `policy`. `choice` picks
/// which of the nine Luhn-invalid digits to use (any value; reduced mod 9).
pub(crate) fn apply_luhn_policy(
    digits: &mut [u8],
    layout: &Layout,
    policy: LuhnPolicy,
    choice: u8,
) {
    let Some(spent) = layout.spent else {
        return;
    };
    let valid = luhn::completing_digit(digits, spent);
    digits[spent] = match policy {
        LuhnPolicy::Valid => valid,
        LuhnPolicy::Invalid => (valid + 1 + choice % 9) % 10,
        LuhnPolicy::Any => digits[spent],
    };
}

/// A Luhn-valid test PAN of `len` digits whose digits vary with `seed`.
#[cfg(test)]
pub(crate) fn test_pan(len: usize, seed: u64) -> Pan {
    let mut digits: Vec<u8> = (0..len)
        .map(|i| {
            u8::try_from((seed >> (i % 60)).wrapping_add(u64::try_from(i).unwrap_or(0)) % 10)
                .unwrap_or(0)
        })
        .collect();
    digits[0] = 4;
    let last = len - 1;
    digits[last] = luhn::completing_digit(&digits, last);
    Pan::from_digits(&digits).unwrap_or_else(|_| unreachable!("Luhn-completed digits parse"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_validation() {
        assert!(TokenFormat::new(GeneratorKind::Random, 0, 0, LuhnPolicy::Any).is_ok());
        assert!(TokenFormat::new(GeneratorKind::Random, 8, 4, LuhnPolicy::Any).is_ok());
        assert_eq!(
            TokenFormat::new(GeneratorKind::Random, 4, 4, LuhnPolicy::Any),
            Err(FormatError::KeepLeading)
        );
        assert_eq!(
            TokenFormat::new(GeneratorKind::Random, 6, 2, LuhnPolicy::Any),
            Err(FormatError::KeepTrailing)
        );
    }

    #[test]
    fn layout_spends_last_free_digit() {
        let format = TokenFormat::default();
        let layout = format.layout(16);
        assert_eq!(layout.free, 6..12);
        assert_eq!(layout.spent, Some(11));
        assert_eq!(layout.generated(), 6..11);
        let any = TokenFormat::new(GeneratorKind::Ff1, 6, 4, LuhnPolicy::Any).unwrap();
        assert_eq!(any.layout(16).generated_len(), 6);
    }
}
