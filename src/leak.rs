//! Finding card numbers where they must not be (PCI DSS 12.10.7).
//!
//! Used to refuse PAN-like metadata, and by the tests that scan every log
//! line and data file of an end-to-end run. It can also be pointed at
//! production logs (`tessera` has no command for that yet; the function is
//! public).

use crate::tokens::luhn;

/// Whether `text` holds a maximal run of 13–19 ASCII digits that passes
/// Luhn: the shape of a real PAN.
///
/// ```
/// assert!(tessera::leak::contains_pan("pan=4111111111111111"));
/// assert!(!tessera::leak::contains_pan("masked=411111******1111"));
/// ```
pub fn contains_pan(text: &str) -> bool {
    pan_like_runs(text.as_bytes()).next().is_some()
}

/// Byte ranges of every maximal 13–19 digit, Luhn-valid run in `bytes`.
pub fn pan_like_runs(bytes: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if !bytes[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let run = &bytes[start..i];
            if (13..=19).contains(&run.len()) {
                let digits: Vec<u8> = run.iter().map(|b| b - b'0').collect();
                if luhn::is_valid(&digits) {
                    return Some(start..i);
                }
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pans_not_tokens_or_short_numbers() {
        assert!(contains_pan("card 4111111111111111 used"));
        assert!(!contains_pan("token 4111111111111112"));
        assert!(!contains_pan("order 123456"));
        assert!(!contains_pan("41111111111111110000000"));
        assert!(!contains_pan("411111******1111"));
    }
}
