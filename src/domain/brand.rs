//! Card brand from the issuer identification number (IIN, ISO/IEC 7812).
//!
//! Ranges follow the networks' published IIN tables as summarised in
//! ISO/IEC 7812 registries; first match wins, most specific ranges first.

/// A card network. `Unknown` IINs are allowed (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CardBrand {
    /// No range matched.
    Unknown,
    /// Visa: 4.
    Visa,
    /// Mastercard: 51–55 and the 2-series 2221–2720.
    Mastercard,
    /// American Express: 34, 37.
    Amex,
    /// Discover: 6011, 644–649, 65.
    Discover,
    /// JCB: 3528–3589.
    Jcb,
    /// UnionPay: 62.
    UnionPay,
    /// Diners Club: 300–305, 3095, 36, 38, 39.
    Diners,
    /// Maestro: 50, 56–58, 639, 67.
    Maestro,
}

impl CardBrand {
    /// Brand of a PAN given as digit values (at least 6 of them).
    pub fn from_iin(digits: &[u8]) -> Self {
        let prefix = |n: usize| -> u32 {
            digits
                .iter()
                .take(n)
                .fold(0u32, |acc, d| acc * 10 + u32::from(*d))
        };
        let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
        match () {
            _ if p1 == 4 => Self::Visa,
            _ if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) => Self::Mastercard,
            _ if p2 == 34 || p2 == 37 => Self::Amex,
            _ if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 => Self::Discover,
            _ if (3528..=3589).contains(&p4) => Self::Jcb,
            _ if p2 == 62 => Self::UnionPay,
            _ if (300..=305).contains(&p3) || p4 == 3095 || matches!(p2, 36 | 38 | 39) => {
                Self::Diners
            }
            _ if p2 == 50 || (56..=58).contains(&p2) || p3 == 639 || p2 == 67 => Self::Maestro,
            _ => Self::Unknown,
        }
    }

    /// Upper-case name as used in the API enum and CLI output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Visa => "VISA",
            Self::Mastercard => "MASTERCARD",
            Self::Amex => "AMEX",
            Self::Discover => "DISCOVER",
            Self::Jcb => "JCB",
            Self::UnionPay => "UNIONPAY",
            Self::Diners => "DINERS",
            Self::Maestro => "MAESTRO",
        }
    }

    /// A stable one-byte code for storage.
    pub fn code(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Visa => 1,
            Self::Mastercard => 2,
            Self::Amex => 3,
            Self::Discover => 4,
            Self::Jcb => 5,
            Self::UnionPay => 6,
            Self::Diners => 7,
            Self::Maestro => 8,
        }
    }

    /// Inverse of [`CardBrand::code`]; unknown codes read as `Unknown`.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Visa,
            2 => Self::Mastercard,
            3 => Self::Amex,
            4 => Self::Discover,
            5 => Self::Jcb,
            6 => Self::UnionPay,
            7 => Self::Diners,
            8 => Self::Maestro,
            _ => Self::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brand(prefix: &str) -> CardBrand {
        let digits: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
        CardBrand::from_iin(&digits)
    }

    #[test]
    fn iin_table() {
        let cases = [
            ("411111", CardBrand::Visa),
            ("510000", CardBrand::Mastercard),
            ("555555", CardBrand::Mastercard),
            ("222100", CardBrand::Mastercard),
            ("272099", CardBrand::Mastercard),
            ("222099", CardBrand::Unknown),
            ("272100", CardBrand::Unknown),
            ("340000", CardBrand::Amex),
            ("378282", CardBrand::Amex),
            ("601111", CardBrand::Discover),
            ("644000", CardBrand::Discover),
            ("650000", CardBrand::Discover),
            ("352800", CardBrand::Jcb),
            ("358999", CardBrand::Jcb),
            ("620000", CardBrand::UnionPay),
            ("300000", CardBrand::Diners),
            ("309500", CardBrand::Diners),
            ("360000", CardBrand::Diners),
            ("500000", CardBrand::Maestro),
            ("670000", CardBrand::Maestro),
            ("100000", CardBrand::Unknown),
            ("990000", CardBrand::Unknown),
        ];
        for (prefix, expected) in cases {
            assert_eq!(brand(prefix), expected, "{prefix}");
        }
    }

    #[test]
    fn codes_round_trip() {
        for b in [
            CardBrand::Unknown,
            CardBrand::Visa,
            CardBrand::Mastercard,
            CardBrand::Amex,
            CardBrand::Discover,
            CardBrand::Jcb,
            CardBrand::UnionPay,
            CardBrand::Diners,
            CardBrand::Maestro,
        ] {
            assert_eq!(CardBrand::from_code(b.code()), b);
        }
    }
}
