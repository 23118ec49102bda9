//! The Luhn (mod 10) check, ISO/IEC 7812-1 Annex B.
//!
//! Works on digit values (0..=9), not ASCII, so token generators can reason
//! about one position at a time.

/// The Luhn sum of `digits` taken mod 10; a number is Luhn-valid when it is 0.
pub fn checksum(digits: &[u8]) -> u8 {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let d = u32::from(d);
        sum += if i % 2 == 1 { double(d) } else { d };
    }
    // `sum % 10` is below 10, so the conversion cannot fail.
    u8::try_from(sum % 10).unwrap_or(0)
}

/// Whether `digits` pass the Luhn check.
///
/// ```
/// use tessera::tokens::luhn;
///
/// let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<u8>>();
/// assert!(luhn::is_valid(&digits("79927398713")));
/// assert!(!luhn::is_valid(&digits("79927398710")));
/// ```
pub fn is_valid(digits: &[u8]) -> bool {
    checksum(digits) == 0
}

/// The digit that, written at `position` of `digits`, makes them Luhn-valid.
///
/// Every position's contribution is a bijection on 0..=9 (the identity, or the
/// doubling map), so exactly one such digit exists. This is what lets a token
/// generator "spend" one free digit on a Luhn policy, and lets FF1 drop one PAN
/// digit without losing information: in a Luhn-valid PAN any one digit is
/// determined by the others.
pub fn completing_digit(digits: &[u8], position: usize) -> u8 {
    let mut scratch = digits.to_vec();
    for candidate in 0..10u8 {
        scratch[position] = candidate;
        if is_valid(&scratch) {
            return candidate;
        }
    }
    unreachable_luhn()
}

fn double(d: u32) -> u32 {
    let doubled = d * 2;
    if doubled > 9 { doubled - 9 } else { doubled }
}

#[cold]
fn unreachable_luhn() -> u8 {
    // Each position's map is a bijection on 0..=9, so the loop above always
    // returns; reaching here would mean a digit outside 0..=9 was passed.
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(s: &str) -> Vec<u8> {
        s.bytes().map(|b| b - b'0').collect()
    }

    #[test]
    fn known_valid_and_invalid_numbers() {
        assert!(is_valid(&digits("4111111111111111")));
        assert!(is_valid(&digits("378282246310005")));
        assert!(is_valid(&digits("79927398713")));
        assert!(!is_valid(&digits("4111111111111112")));
        assert!(!is_valid(&digits("79927398710")));
    }

    #[test]
    fn completing_digit_fixes_any_position() {
        let base = digits("4111111111111111");
        for position in 0..base.len() {
            let mut broken = base.clone();
            broken[position] = (broken[position] + 3) % 10;
            let digit = completing_digit(&broken, position);
            broken[position] = digit;
            assert!(is_valid(&broken), "position {position}");
            assert_eq!(digit, base[position]);
        }
    }
}
