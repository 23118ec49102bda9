//! Randomness, from two sources.
//!
//! - [`fill`]: the operating system's CSPRNG, one `getrandom` call each.
//!   Keys, AES-GCM nonces, API-key secrets, session ids (PCI DSS 3.7.1;
//!   NIST SP 800-38D §8.2.2 wants nonces from an approved RBG, which the
//!   kernel's is taken to be).
//! - [`fill_digits`], [`below`], [`below_u64`]: random token digits and
//!   bucket positions (PCI tokenization guidance: no relation to the PAN),
//!   from a per-thread deterministic random bit generator that the OS
//!   seeds: ChaCha20 keyed with 256 bits from [`fill`], rekeyed from the OS
//!   after every 64 KiB of output, and never seeded by anything else. Each
//!   draw rekeys the generator from its own output and zeroizes the old
//!   state (fast key erasure, as the kernel's CSPRNG does), so a copy of the
//!   process's memory does not give away tokens already drawn; it would
//!   predict this thread's draws until the next rekey from the OS, which is
//!   why keys and nonces never come from here. It is not one of SP
//!   800-90A's DRBGs. A rekey that fails is an error, never a panic, and
//!   never a fallback to weaker randomness. It made a random token 5 times
//!   cheaper (BENCHMARKS.md, `token/random_16_keep_6_4`).

use std::cell::RefCell;

use chacha20::ChaCha20Rng;
use rand::rngs::SysRng;
use rand::{Rng, SeedableRng, TryRng};
use zeroize::Zeroizing;

/// The OS refused to produce random bytes. Nothing secret can be made safely,
/// so the caller must fail the request.
#[derive(Debug, thiserror::Error)]
#[error("the operating system random number generator failed")]
pub struct RngError;

/// Fills `buf` with bytes from the OS CSPRNG.
pub fn fill(buf: &mut [u8]) -> Result<(), RngError> {
    SysRng.try_fill_bytes(buf).map_err(|_| RngError)
}

/// Fills `buf` from this thread's OS-keyed ChaCha20 generator: no system
/// call, for values made on every request (request ids), where `fill`'s
/// `getrandom` would cost a system call each.
pub fn fill_from_drbg(buf: &mut [u8]) -> Result<(), RngError> {
    drbg_fill(buf)
}

/// Output of one keying of a thread's generator before it is rekeyed from
/// the OS.
const REKEY_AFTER_BYTES: usize = 64 * 1024;

/// A thread's generator and how much it produced since its keying.
struct Drbg {
    rng: ChaCha20Rng,
    produced: usize,
}

thread_local! {
    static DRBG: RefCell<Option<Drbg>> = const { RefCell::new(None) };
}

/// Fills `buf` from this thread's OS-keyed generator, keying it first when
/// it is new or has produced [`REKEY_AFTER_BYTES`].
fn drbg_fill(buf: &mut [u8]) -> Result<(), RngError> {
    DRBG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let drbg = match slot.take() {
            Some(drbg) if drbg.produced < REKEY_AFTER_BYTES => drbg,
            _ => {
                let mut seed = Zeroizing::new([0u8; 32]);
                fill(seed.as_mut())?;
                Drbg {
                    rng: ChaCha20Rng::from_seed(*seed),
                    produced: 0,
                }
            }
        };
        let drbg = slot.insert(drbg);
        drbg.rng.fill_bytes(buf);
        // Fast key erasure: the generator rekeys from its own output at
        // once, and the old state is zeroized as it drops, so a later read
        // of this thread's memory cannot recompute the bytes just handed
        // out.
        let mut next = Zeroizing::new([0u8; 32]);
        drbg.rng.fill_bytes(next.as_mut());
        drbg.rng = ChaCha20Rng::from_seed(*next);
        drbg.produced = drbg
            .produced
            .saturating_add(buf.len())
            .saturating_add(next.len());
        Ok(())
    })
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
                drbg_fill(&mut pool)?;
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
        drbg_fill(&mut byte)?;
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
        drbg_fill(&mut bytes)?;
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
    fn the_generator_is_rekeyed_from_the_os_after_its_quota() {
        let produced = || DRBG.with(|c| c.borrow().as_ref().map(|d| d.produced));
        let mut quota = vec![0u8; REKEY_AFTER_BYTES];
        drbg_fill(&mut quota).unwrap();
        assert!(produced().unwrap() >= REKEY_AFTER_BYTES);
        let mut more = [0u8; 16];
        drbg_fill(&mut more).unwrap();
        assert_eq!(produced(), Some(16 + 32), "a fresh keying after the quota");
    }

    #[test]
    fn threads_draw_independent_streams() {
        let draw = || {
            std::thread::spawn(|| {
                let mut out = [0u8; 32];
                drbg_fill(&mut out).unwrap();
                out
            })
            .join()
            .unwrap()
        };
        assert_ne!(
            draw(),
            draw(),
            "each thread is keyed on its own from the OS"
        );
    }

    #[test]
    fn below_stays_in_range() {
        for _ in 0..500 {
            assert!(below(9).unwrap() < 9);
        }
    }
}
