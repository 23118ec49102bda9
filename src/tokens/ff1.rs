//! FF1 tokens: NIST SP 800-38G format-preserving encryption over the free
//! digits, AES-256, through the `fpe` crate.
//!
//! - Domain: FF1 never runs on fewer than [`MIN_FF1_DIGITS`] decimal digits
//!   (SP 800-38G Rev.1: radix^len ≥ 10^6). Too few is an error, never a
//!   weaker token. The count is of digits actually encrypted: a digit spent on
//!   the Luhn policy does not count (SECURITY.md §1.2).
//! - Tweak: `len(tenant) ‖ tenant ‖ kept leading ‖ kept trailing ‖ generation`,
//!   so equal middles under different BINs, last fours or tenants encrypt
//!   differently.
//! - Generation: FF1 tokens are deterministic, but the store never overwrites.
//!   When a PAN's earlier FF1 token was deleted, consumed or expired, its value
//!   stays taken, so the vault asks for generation 1, 2, … (the `attempt`)
//!   which changes the tweak and so the token. Detokenization never needs FF1:
//!   the PAN is always read from its sealed record.

use aes::Aes256;
use fpe::ff1::{FF1, FlexibleNumeralString};
use zeroize::Zeroizing;

use crate::domain::{Pan, TenantId, Token};
use crate::secret::DataKey;
use crate::tokens::{GenerateError, Layout, TokenFormat, TokenGenerator, apply_luhn_policy, luhn};

/// Fewest digits FF1 may encrypt: 10^6 ≤ 10^len (NIST SP 800-38G Rev.1 §5.2).
pub const MIN_FF1_DIGITS: usize = 6;

/// FF1 over one tenant's key.
pub struct Ff1Generator {
    cipher: FF1<Aes256>,
    tenant: TenantId,
}

impl std::fmt::Debug for Ff1Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ff1Generator")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Ff1Generator {
    /// Builds the generator from the tenant's FF1 key (an AES-256 key).
    pub fn new(key: &DataKey, tenant: TenantId) -> Self {
        // `Aes256` takes exactly 32 bytes and `DataKey` is always 32 bytes;
        // radix 10 is inside FF1's 2..=2^16, so neither can fail.
        #[allow(clippy::expect_used)]
        let cipher = FF1::<Aes256>::new(key.expose_secret(), 10).expect("radix 10 is valid");
        Self { cipher, tenant }
    }

    /// Recovers the PAN from an FF1 token made under `format` and `attempt`.
    /// The vault never needs this (it opens the sealed record); it exists to
    /// prove the construction is a bijection.
    pub fn recover(
        &self,
        token: &Token,
        format: &TokenFormat,
        attempt: u32,
    ) -> Result<Pan, GenerateError> {
        let digits = Zeroizing::new(token.digits());
        let layout = checked_layout(format, digits.len())?;
        let tweak = self.tweak(&digits, format, attempt);
        let range = layout.generated();
        let plain = decrypt_digits(&self.cipher, &tweak, &digits[range.clone()])?;
        let mut pan = digits;
        pan[range].copy_from_slice(&plain);
        if let Some(spent) = layout.spent {
            pan[spent] = luhn::completing_digit(&pan, spent);
        }
        Pan::from_digits(&pan).map_err(|_| GenerateError::Ff1Internal)
    }

    fn tweak(&self, digits: &[u8], format: &TokenFormat, attempt: u32) -> Vec<u8> {
        let tenant = self.tenant.as_str().as_bytes();
        let n = digits.len();
        let mut tweak = Vec::with_capacity(1 + tenant.len() + 12 + 4);
        // Tenant ids are at most 64 bytes (domain::tenant), so this fits.
        tweak.push(u8::try_from(tenant.len()).unwrap_or(u8::MAX));
        tweak.extend_from_slice(tenant);
        tweak.extend_from_slice(&digits[..format.keep_leading()]);
        tweak.push(0xFF);
        tweak.extend_from_slice(&digits[n - format.keep_trailing()..]);
        tweak.extend_from_slice(&attempt.to_be_bytes());
        tweak
    }
}

impl TokenGenerator for Ff1Generator {
    fn generate(
        &self,
        pan: &Pan,
        format: &TokenFormat,
        attempt: u32,
    ) -> Result<Token, GenerateError> {
        let layout = checked_layout(format, pan.len())?;
        let mut digits = Zeroizing::new(pan.expose_digits().to_vec());
        let tweak = self.tweak(&digits, format, attempt);
        let range = layout.generated();
        let encrypted = encrypt_digits(&self.cipher, &tweak, &digits[range.clone()])?;
        digits[range].copy_from_slice(&encrypted);
        // The choice among the nine Luhn-invalid digits must be deterministic;
        // deriving it from the first encrypted digit keeps it so.
        let choice = encrypted.first().copied().unwrap_or(0);
        apply_luhn_policy(&mut digits, &layout, format.luhn(), choice);
        Token::from_digits(&digits).map_err(|_| GenerateError::Ff1Internal)
    }
}

/// The layout, refused when FF1 would encrypt fewer than [`MIN_FF1_DIGITS`].
pub fn checked_layout(format: &TokenFormat, len: usize) -> Result<Layout, GenerateError> {
    let layout = format.layout(len);
    let encrypted = layout.generated_len();
    if encrypted < MIN_FF1_DIGITS {
        return Err(GenerateError::Ff1DomainTooSmall {
            encrypted,
            minimum: MIN_FF1_DIGITS,
        });
    }
    Ok(layout)
}

fn encrypt_digits(
    cipher: &FF1<Aes256>,
    tweak: &[u8],
    digits: &[u8],
) -> Result<Zeroizing<Vec<u8>>, GenerateError> {
    // The one guard in front of every FF1 call: the domain rule holds even if
    // a caller skipped `checked_layout`.
    if digits.len() < MIN_FF1_DIGITS {
        return Err(GenerateError::Ff1DomainTooSmall {
            encrypted: digits.len(),
            minimum: MIN_FF1_DIGITS,
        });
    }
    let input =
        FlexibleNumeralString::from(digits.iter().map(|d| u16::from(*d)).collect::<Vec<_>>());
    let output = cipher
        .encrypt(tweak, &input)
        .map_err(|_| GenerateError::Ff1Internal)?;
    narrow(output)
}

fn decrypt_digits(
    cipher: &FF1<Aes256>,
    tweak: &[u8],
    digits: &[u8],
) -> Result<Zeroizing<Vec<u8>>, GenerateError> {
    let input =
        FlexibleNumeralString::from(digits.iter().map(|d| u16::from(*d)).collect::<Vec<_>>());
    let output = cipher
        .decrypt(tweak, &input)
        .map_err(|_| GenerateError::Ff1Internal)?;
    narrow(output)
}

fn narrow(numerals: FlexibleNumeralString) -> Result<Zeroizing<Vec<u8>>, GenerateError> {
    let wide = Zeroizing::new(Vec::<u16>::from(numerals));
    wide.iter()
        .map(|n| u8::try_from(*n).map_err(|_| GenerateError::Ff1Internal))
        .collect::<Result<Vec<u8>, _>>()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    use aes::{Aes128, Aes192};
    use proptest::prelude::*;

    use super::*;
    use crate::tokens::{GeneratorKind, LuhnPolicy, test_pan};

    /// NIST SP 800-38G FF1 samples, from
    /// <https://csrc.nist.gov/CSRC/media/Projects/Cryptographic-Standards-and-Guidelines/documents/examples/FF1samples.pdf>,
    /// copied to `tests/data/ff1_nist_samples.json`.
    #[derive(serde::Deserialize)]
    struct Sample {
        key_hex: String,
        radix: u32,
        tweak_hex: String,
        plaintext: String,
        ciphertext: String,
    }

    fn numerals(text: &str, radix: u32) -> Vec<u16> {
        text.chars()
            .map(|c| u16::try_from(c.to_digit(radix).unwrap()).unwrap())
            .collect()
    }

    fn run_sample<C>(sample: &Sample)
    where
        C: KeyInit + BlockCipherEncrypt + Clone,
    {
        let key = hex::decode(&sample.key_hex).unwrap();
        let tweak = hex::decode(&sample.tweak_hex).unwrap();
        let ff1 = FF1::<C>::new(&key, sample.radix).unwrap();
        let pt = FlexibleNumeralString::from(numerals(&sample.plaintext, sample.radix));
        let ct = Vec::<u16>::from(ff1.encrypt(&tweak, &pt).unwrap());
        assert_eq!(
            ct,
            numerals(&sample.ciphertext, sample.radix),
            "{}",
            sample.key_hex
        );
        let back = ff1
            .decrypt(&tweak, &FlexibleNumeralString::from(ct))
            .unwrap();
        assert_eq!(
            Vec::<u16>::from(back),
            numerals(&sample.plaintext, sample.radix)
        );
    }

    fn samples() -> Vec<Sample> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/ff1_nist_samples.json"
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn nist_samples_all_key_sizes() {
        let samples = samples();
        assert_eq!(samples.len(), 9);
        for sample in &samples {
            match sample.key_hex.len() {
                32 => run_sample::<Aes128>(sample),
                48 => run_sample::<Aes192>(sample),
                64 => run_sample::<Aes256>(sample),
                other => panic!("unexpected key length {other}"),
            }
        }
    }

    #[test]
    fn nist_aes256_decimal_samples_through_our_wrapper() {
        for sample in samples()
            .iter()
            .filter(|s| s.key_hex.len() == 64 && s.radix == 10)
        {
            let key = DataKey::from_slice(&hex::decode(&sample.key_hex).unwrap()).unwrap();
            let generator = Ff1Generator::new(&key, TenantId::new("t").unwrap());
            let tweak = hex::decode(&sample.tweak_hex).unwrap();
            let pt: Vec<u8> = sample.plaintext.bytes().map(|b| b - b'0').collect();
            let ct = encrypt_digits(&generator.cipher, &tweak, &pt).unwrap();
            let expected: Vec<u8> = sample.ciphertext.bytes().map(|b| b - b'0').collect();
            assert_eq!(ct.as_slice(), expected.as_slice());
        }
    }

    fn generator(tenant: &str) -> Ff1Generator {
        Ff1Generator::new(
            &DataKey::from_bytes([7u8; 32]),
            TenantId::new(tenant).unwrap(),
        )
    }

    /// SECURITY.md §1.2: lengths 12–19 × keep 0/6/8 (+ 0/4) × every policy.
    /// FF1 is refused exactly when fewer than 6 digits would be encrypted,
    /// and when it runs it encrypts at least 6.
    #[test]
    fn domain_rule_table() {
        let g = generator("default");
        for len in 12..=19 {
            for lead in [0u32, 6, 8] {
                for trail in [0u32, 4] {
                    for policy in [LuhnPolicy::Invalid, LuhnPolicy::Valid, LuhnPolicy::Any] {
                        let format =
                            TokenFormat::new(GeneratorKind::Ff1, lead, trail, policy).unwrap();
                        let free = len - usize::try_from(lead + trail).unwrap();
                        let encrypted = if policy == LuhnPolicy::Any {
                            free
                        } else {
                            free.saturating_sub(1)
                        };
                        let result = g.generate(&test_pan(len, 99), &format, 0);
                        if encrypted < MIN_FF1_DIGITS {
                            assert!(
                                matches!(result, Err(GenerateError::Ff1DomainTooSmall { encrypted: e, minimum: 6 }) if e == encrypted),
                                "len {len} keep {lead}+{trail} {policy:?}"
                            );
                        } else {
                            assert!(result.is_ok(), "len {len} keep {lead}+{trail} {policy:?}");
                        }
                    }
                }
            }
        }
        // The SECURITY.md table, spelled out for the default Luhn-ANY case.
        let any = |lead, trail| {
            TokenFormat::new(GeneratorKind::Ff1, lead, trail, LuhnPolicy::Any).unwrap()
        };
        assert!(g.generate(&test_pan(15, 1), &any(6, 4), 0).is_err());
        assert!(g.generate(&test_pan(16, 1), &any(6, 4), 0).is_ok());
        assert!(g.generate(&test_pan(16, 1), &any(8, 4), 0).is_err());
        assert!(g.generate(&test_pan(18, 1), &any(8, 4), 0).is_ok());
    }

    #[test]
    fn encrypt_guard_refuses_short_input() {
        let g = generator("default");
        assert!(matches!(
            encrypt_digits(&g.cipher, b"", &[1, 2, 3, 4, 5]),
            Err(GenerateError::Ff1DomainTooSmall { encrypted: 5, .. })
        ));
    }

    #[test]
    fn tenant_and_generation_change_the_token() {
        let pan = test_pan(19, 12345);
        let format = TokenFormat::new(GeneratorKind::Ff1, 6, 4, LuhnPolicy::Invalid).unwrap();
        let a = generator("a").generate(&pan, &format, 0).unwrap();
        let a_again = generator("a").generate(&pan, &format, 0).unwrap();
        let b = generator("b").generate(&pan, &format, 0).unwrap();
        let a1 = generator("a").generate(&pan, &format, 1).unwrap();
        assert_eq!(a, a_again);
        assert_ne!(a, b);
        assert_ne!(a, a1);
    }

    proptest! {
        #[test]
        fn round_trip_format_and_policy(
            len in 17usize..=19,
            seed in any::<u64>(),
            lead in prop_oneof![Just(0u32), Just(6)],
            trail in prop_oneof![Just(0u32), Just(4)],
            policy in prop_oneof![Just(LuhnPolicy::Invalid), Just(LuhnPolicy::Valid), Just(LuhnPolicy::Any)],
            attempt in 0u32..3,
        ) {
            let g = generator("prop");
            let pan = test_pan(len, seed);
            let format = TokenFormat::new(GeneratorKind::Ff1, lead, trail, policy).unwrap();
            let token = g.generate(&pan, &format, attempt).unwrap();
            let digits = token.digits();
            prop_assert_eq!(digits.len(), len);
            let lead = usize::try_from(lead).unwrap();
            let trail = usize::try_from(trail).unwrap();
            prop_assert_eq!(&digits[..lead], &pan.expose_digits()[..lead]);
            prop_assert_eq!(&digits[len - trail..], &pan.expose_digits()[len - trail..]);
            match policy {
                LuhnPolicy::Invalid => prop_assert!(!luhn::is_valid(&digits)),
                LuhnPolicy::Valid => prop_assert!(luhn::is_valid(&digits)),
                LuhnPolicy::Any => {}
            }
            let back = g.recover(&token, &format, attempt).unwrap();
            prop_assert_eq!(back.expose_digits(), pan.expose_digits());
        }
    }
}
