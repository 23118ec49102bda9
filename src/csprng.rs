//! The one source of randomness: the operating system's CSPRNG.
//!
//! Keys, nonces and token digits all come from here (PCI DSS 3.7.1; PCI
//! tokenization guidance on non-correlation). It cannot be seeded, by design.

use rand::TryRng;
use rand::rngs::SysRng;

/// The OS refused to produce random bytes. Nothing secret can be made safely,
/// so the caller must fail the request.
#[derive(Debug, thiserror::Error)]
#[error("the operating system random number generator failed")]
pub struct RngError;

/// Fills `buf` with bytes from the OS CSPRNG.
pub fn fill(buf: &mut [u8]) -> Result<(), RngError> {
    SysRng.try_fill_bytes(buf).map_err(|_| RngError)
}

/// Fills `digits` with uniformly random decimal digits (values 0..=9).
///
/// Rejection sampling over bytes below 250 keeps every digit equally likely.
pub fn fill_digits(digits: &mut [u8]) -> Result<(), RngError> {
    let mut pool = [0u8; 32];
    let mut used = pool.len();
    for digit in digits.iter_mut() {
        loop {
            if used == pool.len() {
                fill(&mut pool)?;
                used = 0;
            }
            let byte = pool[used];
            used += 1;
            if byte < 250 {
                *digit = byte % 10;
                break;
            }
        }
    }
    Ok(())
}

/// A uniformly random number in `0..bound` (`bound` ≤ 256).
pub fn below(bound: u16) -> Result<u8, RngError> {
    debug_assert!(bound > 0 && bound <= 256);
    let limit = 256 - (256 % bound);
    loop {
        let mut byte = [0u8; 1];
        fill(&mut byte)?;
        if u16::from(byte[0]) < limit {
            return u8::try_from(u16::from(byte[0]) % bound).map_err(|_| RngError);
        }
    }
}

/// A uniformly random number in `0..bound` (`bound` > 0), by rejection
/// sampling over whole `u64`s so no value is favoured.
pub fn below_u64(bound: u64) -> Result<u64, RngError> {
    debug_assert!(bound > 0);
    let bound = bound.max(1);
    // The largest multiple of `bound` that fits: draws at or above it would
    // favour the low values.
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let mut bytes = [0u8; 8];
        fill(&mut bytes)?;
        let draw = u64::from_le_bytes(bytes);
        if draw < zone {
            return Ok(draw % bound);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_decimal_and_cover_every_value() {
        let mut digits = [0u8; 2000];
        fill_digits(&mut digits).unwrap();
        assert!(digits.iter().all(|d| *d < 10));
        for value in 0..10 {
            assert!(digits.contains(&value), "digit {value} never drawn");
        }
    }

    #[test]
    fn below_u64_stays_in_range_and_reaches_both_ends() {
        let draws: Vec<u64> = (0..2000).map(|_| below_u64(3).unwrap()).collect();
        assert!(draws.iter().all(|d| *d < 3));
        assert!(draws.contains(&0) && draws.contains(&2));
        assert_eq!(below_u64(1).unwrap(), 0);
    }

    #[test]
    fn below_stays_in_range() {
        for _ in 0..500 {
            assert!(below(9).unwrap() < 9);
        }
    }
}
