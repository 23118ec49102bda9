//! Request ids: the caller's `x-request-id` when it is safe to repeat in
//! logs and audit events, else one made here. Either way the response
//! carries it back, so a caller can quote it to an operator.

use crate::csprng;

/// The metadata key, as gRPC clients send it (lower case).
pub const HEADER: &str = "x-request-id";

/// Longest accepted caller id.
pub const MAX_LEN: usize = 64;

/// Whether a caller's id may be used as given: short, of
/// `[A-Za-z0-9._-]`, and nothing a card number could hide in (it lands in
/// every log line and audit event of the call): no card number as written,
/// and no run of 12 or more digits, in which one could sit inside a longer
/// number (a card followed by its CVV or expiry).
pub fn is_acceptable(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !super::card_shaped(id)
}

/// A fresh id: 16 hex digits that are not [`super::card_shaped`]. About
/// one id in 100 has a run of 12 decimal digits (and one in 20,000 is all
/// digits and passes Luhn); logged, the leak scans would rightly take it
/// for a PAN, so it is drawn again.
pub fn generate() -> String {
    loop {
        let mut bytes = [0u8; 8];
        // A request id needs no secrecy; an RNG failure still logs (as a
        // fixed id, which is not card-shaped).
        if csprng::fill_from_drbg(&mut bytes).is_err() {
            return "rng-failed".to_owned();
        }
        let id = hex::encode(bytes);
        if !super::card_shaped(&id) {
            return id;
        }
    }
}

/// The id for a call whose `x-request-id` is `given`.
pub fn choose(given: Option<&str>) -> String {
    given
        .filter(|id| is_acceptable(id))
        .map_or_else(generate, str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: `x-request-id: 4111-1111-1111-1111` was accepted and
    /// written into every event of the call.
    #[test]
    fn request_ids_are_never_card_numbers() {
        assert!(is_acceptable("req-42.a_b"));
        assert!(!is_acceptable("4111-1111-1111-1111"));
        assert!(!is_acceptable("4111_1111_1111_1111"));
        assert!(!is_acceptable("4111111111111111"));
        // Review finding: a card inside a longer digit run (card and CVV,
        // card and expiry) was accepted, echoed and audited.
        assert!(!is_acceptable("4111111111111111123"));
        assert!(!is_acceptable("41111111111111111225"));
        assert!(!is_acceptable("id-000000000000"));
        assert!(is_acceptable("f47ac10b-58cc-4372-a567-0e02b2c3d479"));
        assert!(is_acceptable("order-12345678901"));
        assert!(!is_acceptable(&"a".repeat(MAX_LEN + 1)));
        assert!(!is_acceptable("has space"));
        assert!(!is_acceptable(""));
    }

    #[test]
    fn a_refused_id_is_replaced_by_a_generated_one() {
        assert_eq!(choose(Some("abc-1")), "abc-1");
        let made = choose(Some("4111111111111111"));
        assert_eq!(made.len(), 16);
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(choose(None), choose(None));
    }

    /// Regression: generated ids were logged with every call, and one in
    /// about 20,000 was a Luhn-valid run of 16 decimal digits, which the
    /// end-to-end leak scans found in the log of a load test.
    #[test]
    fn generated_ids_never_read_as_card_numbers() {
        for _ in 0..200_000 {
            assert!(is_acceptable(&generate()));
        }
    }
}
