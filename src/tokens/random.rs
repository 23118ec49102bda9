//! Random tokens: free digits from the OS CSPRNG (the default generator).
//!
//! A random token has no mathematical relation to its PAN: a stolen token or
//! key reveals nothing without the vault's store (SECURITY.md §1.1).

use crate::csprng;
use crate::domain::{Pan, Token};
use crate::tokens::{
    GenerateError, MIN_RANDOM_DIGITS, TokenFormat, TokenGenerator, apply_luhn_policy,
};

/// Draws the free digits from the OS CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomGenerator;

impl TokenGenerator for RandomGenerator {
    fn generate(
        &self,
        pan: &Pan,
        format: &TokenFormat,
        _attempt: u32,
    ) -> Result<Token, GenerateError> {
        let layout = format.layout(pan.len());
        let random = layout.generated_len();
        if random < MIN_RANDOM_DIGITS {
            return Err(GenerateError::TokenSpaceTooSmall {
                random,
                minimum: MIN_RANDOM_DIGITS,
            });
        }
        let mut digits = zeroize::Zeroizing::new(pan.expose_digits().to_vec());
        loop {
            csprng::fill_digits(&mut digits[layout.generated()])?;
            let choice = csprng::below(9)?;
            apply_luhn_policy(&mut digits, &layout, format.luhn(), choice);
            // A token equal to its PAN is possible under Valid/Any (p = 10^-n);
            // draw again rather than issue it.
            if digits.as_slice() != pan.expose_digits() {
                break;
            }
        }
        Token::from_digits(&digits).map_err(|_| GenerateError::Ff1Internal)
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
            len in 15usize..=19,
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
    fn refuses_tiny_token_space() {
        let pan = test_pan(12, 1);
        let err = RandomGenerator
            .generate(&pan, &TokenFormat::default(), 0)
            .unwrap_err();
        assert!(matches!(
            err,
            GenerateError::TokenSpaceTooSmall { random: 1, .. }
        ));
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
