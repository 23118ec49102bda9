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

/// Whether `text` could carry a card number: one as written (digit groups
/// and separators, Luhn-valid), or a run of 12 or more digits, in which
/// one could sit inside a longer number (a card followed by its CVV or
/// expiry). For identifiers a caller chooses (request ids, API key ids,
/// tenant ids, approval ids) before they reach a log line or an event.
pub fn card_shaped(text: &str) -> bool {
    let mut run = 0;
    for b in text.bytes() {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        if run >= MIN_PAN_LEN {
            return true;
        }
    }
    contains_card_number(text)
}

/// Most separator characters between two digit groups of one card number
/// (`4111 - 1111` has three).
pub const MAX_SEPARATOR_RUN: usize = 3;

/// Which characters may join the digit groups of one card number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separators {
    /// Spaces, dashes, dots and slashes: how card numbers are written.
    /// Scans of logs use this (wider sets would read timestamps such as
    /// `16:40:05.123456` as digit groups).
    Written,
    /// The written set and underscores: free text such as token metadata,
    /// where colons belong to times (`16:40:05.123456`).
    Text,
    /// Any ASCII punctuation or space (`4111_1111_1111_1111`,
    /// `4111:1111:…`): for identifiers checked before they are stored
    /// (names, tenant and request ids), where a false positive costs a
    /// refused name, not a missed leak.
    Any,
}

impl Separators {
    fn contains(self, b: u8) -> bool {
        match self {
            Self::Written => matches!(b, b' ' | b'-' | b'.' | b'/'),
            Self::Text => matches!(b, b' ' | b'-' | b'.' | b'/' | b'_'),
            Self::Any => b == b' ' || b.is_ascii_punctuation(),
        }
    }
}

/// Whether input holds a card number under the wide separator set
/// ([`Separators::Any`]): what metadata, names, tenant ids, request ids
/// and reasons are checked with before anything stores or logs them.
///
/// ```
/// assert!(tessera::leak::contains_card_number("4111_1111_1111_1111"));
/// assert!(!tessera::leak::contains_card_number("till-7@acme"));
/// ```
pub fn contains_card_number(text: &str) -> bool {
    !card_runs(text.as_bytes(), Separators::Any).is_empty()
}

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

/// Whether free text (token metadata) holds a card number
/// ([`Separators::Text`]).
pub fn contains_card_number_in_text(text: &str) -> bool {
    !card_runs(text.as_bytes(), Separators::Text).is_empty()
}

/// Byte ranges of every card-shaped stretch in `bytes`, separators included
/// (written separators: [`Separators::Written`]).
pub fn pan_like_runs(bytes: &[u8]) -> Vec<Range<usize>> {
    card_runs(bytes, Separators::Written)
}

/// Byte ranges of every card-shaped stretch, digit groups joined by
/// `separators`.
pub fn card_runs(bytes: &[u8], separators: Separators) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    for chain in group_chains(&digit_groups(bytes), bytes, separators) {
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
        if is_separator_run(&bytes[gap.clone()], Separators::Written) {
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
fn group_chains(
    groups: &[Range<usize>],
    bytes: &[u8],
    separators: Separators,
) -> Vec<Vec<Range<usize>>> {
    let mut chains: Vec<Vec<Range<usize>>> = Vec::new();
    for group in groups {
        let joins = chains
            .last()
            .and_then(|chain| chain.last())
            .is_some_and(|prev| is_separator_run(&bytes[prev.end..group.start], separators));
        match chains.last_mut() {
            Some(chain) if joins => chain.push(group.clone()),
            _ => chains.push(vec![group.clone()]),
        }
    }
    chains
}

fn is_separator_run(gap: &[u8], separators: Separators) -> bool {
    (1..=MAX_SEPARATOR_RUN).contains(&gap.len()) && gap.iter().all(|b| separators.contains(*b))
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

    /// Review finding: `4111_1111_1111_1111` passed the name check.
    #[test]
    fn input_checks_take_any_punctuation_as_a_separator() {
        for text in [
            "4111_1111_1111_1111",
            "4111:1111:1111:1111",
            "x@4111+1111+1111+1111",
        ] {
            assert!(contains_card_number(text), "{text}");
            assert!(!contains_pan(text), "logs keep the written set: {text}");
        }
        assert!(!contains_card_number("order_2026_12_01"));
    }

    #[test]
    fn ranges_cover_the_separated_number() {
        let text = b"pan 3782-822463-10005 end";
        assert_eq!(pan_like_runs(text), vec![4..21]);
    }
}
