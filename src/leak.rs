//! Finding card numbers where they must not be (PCI DSS 12.10.7).
//!
//! One detector serves every place that looks: the metadata filter, the
//! validation of names, and the tests that scan every log line and data file
//! of an end-to-end run (SECURITY.md §5.5). It can also be pointed at
//! production logs (the function is public).
//!
//! Card numbers are written with separators (`5555 5555 5555 4444`,
//! `3782-822463-10005`, `4111.1111.1111.1111`, `4111/1111/1111/1111`), so the
//! detector normalises first: digit groups joined by at most
//! [`MAX_SEPARATOR_RUN`] spaces, dashes, dots or slashes form one run, and
//! every stretch of whole groups holding 12–19 digits that passes Luhn is a
//! card number. An unbroken run of digits counts only as a whole, so a long
//! id that merely contains a Luhn-valid stretch is not flagged.

use std::ops::Range;

use crate::domain::pan::{MAX_PAN_LEN, MIN_PAN_LEN};
use crate::tokens::luhn;

/// Most separator characters between two digit groups of one card number
/// (`4111 - 1111` has three).
pub const MAX_SEPARATOR_RUN: usize = 3;

/// Whether `text` holds something shaped like a real PAN: 12–19 digits,
/// possibly grouped by separators, that pass Luhn.
///
/// ```
/// use tessera::leak::contains_pan;
/// assert!(contains_pan("pan=4111111111111111"));
/// assert!(contains_pan("card 5555 5555 5555 4444"));
/// assert!(contains_pan("amex 3782-822463-10005"));
/// assert!(!contains_pan("masked=411111******1111"));
/// ```
pub fn contains_pan(text: &str) -> bool {
    !pan_like_runs(text.as_bytes()).is_empty()
}

/// Byte ranges of every card-shaped stretch in `bytes`, separators included.
pub fn pan_like_runs(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    for chain in group_chains(&digit_groups(bytes), bytes) {
        for (i, first) in chain.iter().enumerate() {
            let mut digits: Vec<u8> = Vec::with_capacity(MAX_PAN_LEN);
            for group in &chain[i..] {
                digits.extend(bytes[group.clone()].iter().map(|b| b - b'0'));
                if digits.len() > MAX_PAN_LEN {
                    break;
                }
                if digits.len() >= MIN_PAN_LEN && luhn::is_valid(&digits) {
                    found.push(first.start..group.end);
                }
            }
        }
    }
    found
}

/// `bytes` with the separator runs between digit groups removed, so that a
/// search for a known PAN finds `4111-1111-1111-1111` too (for scans of
/// binary files, where [`pan_like_runs`] would flag random digits).
///
/// ```
/// assert_eq!(tessera::leak::strip_separators(b"a 4111-1111 b"), b"a 41111111 b");
/// ```
pub fn strip_separators(bytes: &[u8]) -> Vec<u8> {
    let groups = digit_groups(bytes);
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for pair in groups.windows(2) {
        let gap = pair[0].end..pair[1].start;
        if is_separator_run(&bytes[gap.clone()]) {
            out.extend_from_slice(&bytes[copied..gap.start]);
            copied = gap.end;
        }
    }
    out.extend_from_slice(&bytes[copied..]);
    out
}

/// Maximal runs of ASCII digits.
fn digit_groups(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            groups.push(start..i);
        } else {
            i += 1;
        }
    }
    groups
}

/// Digit groups joined by short separator runs, each chain in order.
fn group_chains(groups: &[Range<usize>], bytes: &[u8]) -> Vec<Vec<Range<usize>>> {
    let mut chains: Vec<Vec<Range<usize>>> = Vec::new();
    for group in groups {
        let joins = chains
            .last()
            .and_then(|chain| chain.last())
            .is_some_and(|prev| is_separator_run(&bytes[prev.end..group.start]));
        match chains.last_mut() {
            Some(chain) if joins => chain.push(group.clone()),
            _ => chains.push(vec![group.clone()]),
        }
    }
    chains
}

fn is_separator_run(gap: &[u8]) -> bool {
    (1..=MAX_SEPARATOR_RUN).contains(&gap.len())
        && gap.iter().all(|b| matches!(b, b' ' | b'-' | b'.' | b'/'))
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

    /// Finding 3: separated card numbers passed the metadata filter and the
    /// leak scans, which looked only for unbroken digit runs.
    #[test]
    fn finds_card_numbers_written_with_separators() {
        for text in [
            "5555 5555 5555 4444",
            "3782-822463-10005",
            "4111.1111.1111.1111",
            "4111/1111/1111/1111",
            "note: 4111 - 1111 - 1111 - 1111!",
            "x5555 5555 5555 4444 7",
            // A 12-digit Maestro.
            "5018 0000 0009",
        ] {
            assert!(contains_pan(text), "{text}");
        }
        for text in [
            "5555 5555 5555 4445",
            "2026-12-01 10:00:00",
            "4111,1111,1111,1111",
            "4111    1111 1111 1111",
        ] {
            assert!(!contains_pan(text), "{text}");
        }
    }

    #[test]
    fn ranges_cover_the_separated_number() {
        let text = b"pan 3782-822463-10005 end";
        assert_eq!(pan_like_runs(text), vec![4..21]);
    }
}
