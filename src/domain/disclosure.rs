//! How many digits of a PAN a token or a masked PAN may keep in clear.
//!
//! One rule serves both, from PCI SSC FAQ 1091 ("What are acceptable formats
//! for truncation of primary account numbers?", 2022): the baseline is the
//! first 6 and last 4 digits, and the digits that must be *hidden* depend on
//! the PAN's length:
//!
//! | PAN length | hidden at least | so at most kept |
//! |---|---|---|
//! | 12–15 | 5 ("15-digit PAN: at least 5 digits removed"; shorter PANs no fewer) | length − 5 |
//! | 16 with an 8-digit BIN kept | 4 (first 8 + last 4, the 16-digit 8-digit-BIN format) | 12 |
//! | 16–19 otherwise | 6 ("at least 6 digits removed") | length − 6 |
//!
//! A token that kept more would narrow the PAN to a handful of Luhn-valid
//! candidates (keeping 6 + 4 of a 12-digit PAN leaves 2 hidden digits, so 10
//! candidates): a format that would is refused when asked for explicitly and
//! never chosen as a default.

/// Trailing digits shown by a masked PAN.
pub const MASK_TRAILING: usize = 4;
/// Leading digits shown by a masked PAN when the length allows (the BIN).
pub const MASK_LEADING_MAX: usize = 6;

/// Fewest digits a PAN of `len` digits must hide when `keep_leading` leading
/// digits are kept.
///
/// ```
/// use tessera::domain::disclosure::min_hidden;
/// assert_eq!(min_hidden(15, 6), 5);
/// assert_eq!(min_hidden(16, 6), 6);
/// assert_eq!(min_hidden(16, 8), 4);
/// assert_eq!(min_hidden(19, 8), 6);
/// ```
pub fn min_hidden(len: usize, keep_leading: usize) -> usize {
    match len {
        ..=15 => 5,
        16 if keep_leading == 8 => 4,
        _ => 6,
    }
}

/// Whether keeping `keep_leading` + `keep_trailing` digits of a PAN of `len`
/// digits stays within the rule.
pub fn allows(len: usize, keep_leading: usize, keep_trailing: usize) -> bool {
    len.checked_sub(keep_leading + keep_trailing)
        .is_some_and(|hidden| hidden >= min_hidden(len, keep_leading))
}

/// Most digits a PAN of `len` digits may keep with `keep_leading` leading.
pub fn max_kept(len: usize, keep_leading: usize) -> usize {
    len.saturating_sub(min_hidden(len, keep_leading))
}

/// Leading digits a masked PAN of `len` digits shows next to the last four:
/// the 6-digit BIN from 15 digits up, fewer below so that at least 5 stay
/// hidden (12 digits show 3 + 4).
///
/// ```
/// use tessera::domain::disclosure::mask_leading;
/// assert_eq!(mask_leading(16), 6);
/// assert_eq!(mask_leading(15), 6);
/// assert_eq!(mask_leading(13), 4);
/// assert_eq!(mask_leading(12), 3);
/// ```
pub fn mask_leading(len: usize) -> usize {
    max_kept(len, MASK_LEADING_MAX)
        .saturating_sub(MASK_TRAILING)
        .min(MASK_LEADING_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_six_four_from_fifteen_digits() {
        for len in 15..=19 {
            assert!(allows(len, 6, 4), "{len}");
        }
        for len in 12..=14 {
            assert!(!allows(len, 6, 4), "{len}");
            assert!(allows(len, 0, 4), "{len}");
        }
    }

    #[test]
    fn eight_four_only_where_the_faq_allows_it() {
        assert!(allows(16, 8, 4));
        assert!(!allows(15, 8, 4));
        assert!(!allows(17, 8, 4));
        assert!(allows(18, 8, 4));
        assert!(allows(19, 8, 4));
    }

    #[test]
    fn masks_hide_at_least_what_the_rule_demands() {
        for len in 12..=19 {
            let hidden = len - mask_leading(len) - MASK_TRAILING;
            assert!(hidden >= min_hidden(len, mask_leading(len)), "{len}");
        }
    }
}
