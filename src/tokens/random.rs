//! Random tokens: free digits from the OS CSPRNG (the default generator).
//!
//! A random token has no mathematical relation to its PAN: a stolen token or
//! key reveals nothing without the vault's store (SECURITY.md §1.1).

use crate::csprng;
use crate::domain::{Pan, Token};
use crate::tokens::{
    GenerateError, Layout, LuhnPolicy, TokenFormat, TokenGenerator, apply_luhn_policy,
};

/// Draws a token uniformly from the PAN's bucket: every token with the PAN's
/// length and kept digits that meets the Luhn policy, except the PAN itself.
///
/// The bucket is numbered ([`RandomGenerator::candidate`]) so that a random
/// token is one uniform draw of an index below [`RandomGenerator::capacity`],
/// and a nearly full small bucket can be searched to the end instead of
/// drawn from until the attempts run out. The Luhn policy is met by the
/// numbering, not by a floor on random digits: under `Invalid` the last free
/// digit takes one of the nine values that fail Luhn, under `Valid` the one
/// that passes (DESIGN.md §2).
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomGenerator;

impl RandomGenerator {
    /// How many tokens `format` allows for `pan`: 9 · 10^(n−1) under
    /// `Invalid`, 10^(n−1) − 1 under `Valid` and 10^n − 1 under `Any`, for
    /// n replaced digits (the PAN is Luhn-valid, so it is excluded from the
    /// last two).
    ///
    /// ```
    /// use tessera::domain::Pan;
    /// use tessera::tokens::random::RandomGenerator;
    /// use tessera::tokens::{GeneratorKind, LuhnPolicy, TokenFormat};
    ///
    /// let pan = Pan::parse("4111111111111111").unwrap();
    /// let bin8 = TokenFormat::new(GeneratorKind::Random, 8, 4, LuhnPolicy::Invalid).unwrap();
    /// assert_eq!(RandomGenerator::capacity(&pan, &bin8), 9_000);
    /// let valid = TokenFormat::new(GeneratorKind::Random, 8, 4, LuhnPolicy::Valid).unwrap();
    /// assert_eq!(RandomGenerator::capacity(&pan, &valid), 999);
    /// ```
    pub fn capacity(pan: &Pan, format: &TokenFormat) -> u64 {
        let layout = format.layout(pan.len());
        if layout.free.is_empty() {
            return 0;
        }
        let Some(prefixes) = pow10(layout.generated_len()) else {
            return 0;
        };
        match format.luhn() {
            LuhnPolicy::Invalid => prefixes.saturating_mul(9),
            LuhnPolicy::Valid | LuhnPolicy::Any => prefixes - 1,
        }
    }

    /// The token numbered `index` (below [`Self::capacity`]) in `pan`'s
    /// bucket. Distinct indexes give distinct tokens, none equal to the PAN.
    pub fn candidate(pan: &Pan, format: &TokenFormat, index: u64) -> Result<Token, GenerateError> {
        let layout = format.layout(pan.len());
        let mut digits = zeroize::Zeroizing::new(pan.expose_digits().to_vec());
        let generated = layout.generated();
        let (prefix, choice) = match format.luhn() {
            LuhnPolicy::Invalid => (index / 9, index % 9),
            // The PAN's own prefix (under `Valid`, its Luhn digit completes
            // it back to the PAN; under `Any` it is the PAN) is skipped.
            LuhnPolicy::Valid | LuhnPolicy::Any => {
                let own = read_number(&digits[generated.clone()]);
                (index + u64::from(index >= own), 0)
            }
        };
        write_number(&mut digits[generated], prefix);
        let choice = u8::try_from(choice).map_err(|_| GenerateError::Ff1Internal)?;
        apply_luhn_policy(&mut digits, &layout, format.luhn(), choice);
        check_differs(&digits, pan, &layout)?;
        Token::from_digits(&digits).map_err(|_| GenerateError::Ff1Internal)
    }
}

impl TokenGenerator for RandomGenerator {
    fn generate(
        &self,
        pan: &Pan,
        format: &TokenFormat,
        _attempt: u32,
    ) -> Result<Token, GenerateError> {
        let capacity = Self::capacity(pan, format);
        if capacity == 0 {
            return Err(GenerateError::TokenSpaceTooSmall {
                free: format.layout(pan.len()).free.len(),
            });
        }
        Self::candidate(pan, format, csprng::below_u64(capacity)?)
    }
}

/// 10^`exponent`, or `None` past u64 (never for a PAN's 19 digits).
fn pow10(exponent: usize) -> Option<u64> {
    10u64.checked_pow(u32::try_from(exponent).ok()?)
}

/// The decimal number the digit values spell.
fn read_number(digits: &[u8]) -> u64 {
    digits
        .iter()
        .fold(0u64, |n, d| n.wrapping_mul(10).wrapping_add(u64::from(*d)))
}

/// Writes `n` into `digits` as zero-padded decimal digit values.
fn write_number(digits: &mut [u8], mut n: u64) {
    for digit in digits.iter_mut().rev() {
        // n % 10 < 10 always fits a u8.
        *digit = u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
    }
}

/// The numbering never yields the PAN; this is the invariant's last guard.
fn check_differs(digits: &[u8], pan: &Pan, layout: &Layout) -> Result<(), GenerateError> {
    if digits == pan.expose_digits() {
        Err(GenerateError::TokenSpaceTooSmall {
            free: layout.free.len(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tokens::{GeneratorKind, LuhnPolicy, luhn, test_pan};

    fn policy() -> impl Strategy<Value = LuhnPolicy> {
        prop_oneof![
            Just(LuhnPolicy::Invalid),
            Just(LuhnPolicy::Valid),
            Just(LuhnPolicy::Any)
        ]
    }

    proptest! {
        #[test]
        fn preserves_format_and_meets_luhn_policy(
            len in 12usize..=19,
            seed in any::<u8>(),
            lead in prop_oneof![Just(0u32), Just(6)],
            trail in prop_oneof![Just(0u32), Just(4)],
            policy in policy(),
        ) {
            let pan = test_pan(len, u64::from(seed));
            let format = TokenFormat::new(GeneratorKind::Random, lead, trail, policy).unwrap();
            let token = RandomGenerator.generate(&pan, &format, 0).unwrap();
            let digits = token.digits();
            prop_assert_eq!(digits.len(), len);
            let lead = usize::try_from(lead).unwrap();
            let trail = usize::try_from(trail).unwrap();
            prop_assert_eq!(&digits[..lead], &pan.expose_digits()[..lead]);
            prop_assert_eq!(&digits[len - trail..], &pan.expose_digits()[len - trail..]);
            prop_assert_ne!(digits.as_slice(), pan.expose_digits());
            match policy {
                LuhnPolicy::Invalid => prop_assert!(!luhn::is_valid(&digits)),
                LuhnPolicy::Valid => prop_assert!(luhn::is_valid(&digits)),
                LuhnPolicy::Any => {}
            }
        }
    }

    #[test]
    fn refuses_an_empty_token_space() {
        // One free digit under `Valid`: its only value is the PAN's.
        let pan = test_pan(12, 1);
        let format = TokenFormat::new(GeneratorKind::Random, 6, 4, LuhnPolicy::Valid)
            .unwrap()
            .with_kept(7, 4);
        assert_eq!(RandomGenerator::capacity(&pan, &format), 0);
        let err = RandomGenerator.generate(&pan, &format, 0).unwrap_err();
        assert!(matches!(err, GenerateError::TokenSpaceTooSmall { free: 1 }));
    }

    /// Finding 11: keep 8 + 4 of a 16-digit card leaves 4 free digits; the
    /// old floor of 4 random digits after the Luhn digit refused it.
    #[test]
    fn eight_four_works_for_sixteen_digits_under_every_policy() {
        let pan = test_pan(16, 7);
        for policy in [LuhnPolicy::Invalid, LuhnPolicy::Valid, LuhnPolicy::Any] {
            let format = TokenFormat::new(GeneratorKind::Random, 8, 4, policy).unwrap();
            let token = RandomGenerator.generate(&pan, &format, 0).unwrap();
            assert_eq!(&token.digits()[..8], &pan.expose_digits()[..8]);
        }
    }

    /// The numbering covers the whole bucket, once each, never the PAN, and
    /// every member meets the policy.
    #[test]
    fn candidates_enumerate_the_bucket_exactly() {
        let pan = test_pan(13, 9);
        for policy in [LuhnPolicy::Invalid, LuhnPolicy::Valid, LuhnPolicy::Any] {
            // 13 digits keeping 6 + 4 leaves 3 free: a small bucket.
            let format = TokenFormat::new(GeneratorKind::Random, 6, 4, policy).unwrap();
            let capacity = RandomGenerator::capacity(&pan, &format);
            let mut seen = std::collections::HashSet::new();
            for index in 0..capacity {
                let token = RandomGenerator::candidate(&pan, &format, index).unwrap();
                let digits = token.digits();
                assert_ne!(digits.as_slice(), pan.expose_digits());
                match policy {
                    LuhnPolicy::Invalid => assert!(!luhn::is_valid(&digits)),
                    LuhnPolicy::Valid => assert!(luhn::is_valid(&digits)),
                    LuhnPolicy::Any => {}
                }
                assert!(seen.insert(digits));
            }
            let expected = match policy {
                LuhnPolicy::Invalid => 900,
                LuhnPolicy::Valid => 99,
                LuhnPolicy::Any => 999,
            };
            assert_eq!(capacity, expected, "{policy:?}");
        }
    }

    /// Non-correlation: a χ² test per generated position over many tokens of
    /// one PAN (SECURITY.md §3). 9 degrees of freedom; 27.88 is the p = 0.001
    /// critical value, so a correct generator fails about once in a thousand
    /// runs per position — we allow one position over the line.
    #[test]
    fn generated_digits_are_uniform() {
        let pan = test_pan(19, 3);
        let format = TokenFormat::default();
        let layout = format.layout(19);
        let samples = 20_000u32;
        let mut counts = vec![[0u32; 10]; 19];
        for _ in 0..samples {
            let token = RandomGenerator.generate(&pan, &format, 0).unwrap();
            for (pos, d) in token.digits().into_iter().enumerate() {
                counts[pos][usize::from(d)] += 1;
            }
        }
        let expected = f64::from(samples) / 10.0;
        let over = layout
            .generated()
            .filter(|pos| {
                let chi2: f64 = counts[*pos]
                    .iter()
                    .map(|c| (f64::from(*c) - expected).powi(2) / expected)
                    .sum();
                chi2 > 27.88
            })
            .count();
        assert!(over <= 1, "{over} positions fail the χ² test");
    }
}
