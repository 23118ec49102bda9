//! RFC 6238 time-based one-time passwords: the second factor of every
//! KeyAdmin and Audit call (PCI DSS 8.4.1).
//!
//! HMAC-SHA1, six digits, as every authenticator app expects. A code is
//! accepted for the current step and one step either side (clock skew,
//! RFC 6238 §5.2), and each accepted code is remembered until it can no
//! longer verify, so a captured code cannot be replayed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::csprng::{self, RngError};
use crate::secret::SecretString;

/// Header that carries the code.
pub const OTP_HEADER: &str = "x-tessera-otp";

/// Bytes of a generated secret: 160 bits (RFC 4226 §4 recommends at least).
const SECRET_BYTES: usize = 20;

/// Steps either side of now that still verify.
const SKEW_STEPS: u64 = 1;

/// A TOTP shared secret. Zeroized on drop; no `Clone`, no `Debug`.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl TotpSecret {
    /// A fresh secret from the OS CSPRNG.
    pub fn generate() -> Result<Self, RngError> {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        csprng::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Parses RFC 4648 base32 (padding, spaces and case ignored); `None`
    /// for other characters or fewer than 80 bits.
    pub fn from_base32(text: &str) -> Option<Self> {
        let mut out = Zeroizing::new(Vec::new());
        let mut buffer = 0u32;
        let mut bits = 0u32;
        for c in text
            .bytes()
            .filter(|c| !matches!(c, b' ' | b'=' | b'\n' | b'\r'))
        {
            let c = c.to_ascii_uppercase();
            let value = BASE32.iter().position(|&a| a == c)?;
            buffer = (buffer << 5) | u32::try_from(value).ok()?;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
            }
        }
        (out.len() >= 10).then_some(Self(out))
    }

    /// The base32 form (no padding), for otpauth:// URIs and files.
    pub fn to_base32(&self) -> SecretString {
        let mut out = String::new();
        let mut buffer = 0u32;
        let mut bits = 0u32;
        let mut push = |index: u32| {
            let i = usize::try_from(index & 31).unwrap_or(0);
            out.push(char::from(BASE32[i]));
        };
        for &b in self.0.iter() {
            buffer = (buffer << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                push(buffer >> bits);
            }
        }
        if bits > 0 {
            push(buffer << (5 - bits));
        }
        SecretString::new(out)
    }

    /// Whether `other` is the same secret (in constant time): a reload
    /// reports a changed second factor without showing either.
    pub fn same_as(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == other.0.len() && bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }

    /// The six-digit code for time step `counter` (RFC 4226 §5.3).
    pub fn code_at(&self, counter: u64) -> u32 {
        use hmac::{Hmac, KeyInit, Mac};
        let Ok(mut mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&self.0) else {
            // HMAC takes keys of any length; unreachable, but never a panic.
            return u32::MAX;
        };
        mac.update(&counter.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[19] & 0x0f);
        let word = [
            digest[offset] & 0x7f,
            digest[offset + 1],
            digest[offset + 2],
            digest[offset + 3],
        ];
        u32::from_be_bytes(word) % 1_000_000
    }

    /// The code for `now` with `step`, as the six-digit string a user types.
    pub fn code(&self, now: SystemTime, step: Duration) -> String {
        format!("{:06}", self.code_at(counter(now, step)))
    }

    /// The `otpauth://` URI an authenticator app imports (often as a QR code).
    pub fn otpauth_uri(&self, account: &str, step: Duration) -> SecretString {
        let account: String = account
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        SecretString::new(format!(
            "otpauth://totp/Tessera:{account}?secret={}&issuer=Tessera&algorithm=SHA1&digits=6&period={}",
            self.to_base32().expose_secret(),
            step.as_secs()
        ))
    }
}

/// The RFC 6238 time step of `now`.
pub fn counter(now: SystemTime, step: Duration) -> u64 {
    let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    seconds / step.as_secs().max(1)
}

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OtpError {
    /// No code was sent.
    #[error("this RPC needs a TOTP code in the x-tessera-otp header")]
    Missing,
    /// The code is wrong or outside the time window.
    #[error("the TOTP code is not valid")]
    Invalid,
    /// The code was already used.
    #[error("the TOTP code was already used; wait for the next one")]
    Replayed,
}

/// Checks codes and remembers the accepted ones per principal.
#[derive(Debug)]
pub struct OtpVerifier {
    step: Duration,
    used: Mutex<HashMap<String, BTreeSet<u64>>>,
}

impl OtpVerifier {
    /// A verifier with time step `step` (30 s unless configured).
    pub fn new(step: Duration) -> Self {
        Self {
            step,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// The time step.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Accepts `code` from `principal` once if it is valid at `now`.
    pub fn verify(
        &self,
        principal: &str,
        secret: &TotpSecret,
        code: Option<&str>,
        now: SystemTime,
    ) -> Result<(), OtpError> {
        let code = code.ok_or(OtpError::Missing)?.trim();
        let presented: u32 = if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            code.parse().map_err(|_| OtpError::Invalid)?
        } else {
            return Err(OtpError::Invalid);
        };
        let now_counter = counter(now, self.step);
        let window = now_counter.saturating_sub(SKEW_STEPS)..=now_counter + SKEW_STEPS;
        // Every candidate is compared, in constant time, so timing does not
        // reveal which step matched.
        let mut matched = None;
        for c in window.clone() {
            let equal: bool = secret
                .code_at(c)
                .to_be_bytes()
                .ct_eq(&presented.to_be_bytes())
                .into();
            if equal {
                matched = Some(c);
            }
        }
        let matched = matched.ok_or(OtpError::Invalid)?;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let seen = used.entry(principal.to_owned()).or_default();
        seen.retain(|c| window.contains(c) || *c > now_counter);
        if seen.insert(matched) {
            Ok(())
        } else {
            Err(OtpError::Replayed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (truncated to six digits).
    #[test]
    fn rfc6238_known_answers() {
        let secret = TotpSecret(Zeroizing::new(b"12345678901234567890".to_vec()));
        let step = Duration::from_secs(30);
        for (t, expected) in [
            (59u64, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
            (20_000_000_000, "353130"),
        ] {
            let now = UNIX_EPOCH + Duration::from_secs(t);
            assert_eq!(secret.code(now, step), expected, "T = {t}");
        }
    }

    #[test]
    fn base32_round_trips() {
        let secret = TotpSecret::generate().unwrap();
        let text = secret.to_base32();
        assert_eq!(text.expose_secret().len(), 32);
        let back = TotpSecret::from_base32(text.expose_secret()).unwrap();
        assert_eq!(back.code_at(7), secret.code_at(7));
        // RFC 4648 §10 test vectors.
        for (plain, encoded) in [("", ""), ("f", "MY"), ("foobar", "MZXW6YTBOI")] {
            let s = TotpSecret(Zeroizing::new(plain.as_bytes().to_vec()));
            assert_eq!(s.to_base32().expose_secret(), encoded);
        }
        assert!(TotpSecret::from_base32("not base32!").is_none());
        assert!(TotpSecret::from_base32("MZXW6").is_none());
    }

    #[test]
    fn valid_expired_and_replayed_codes() {
        let secret = TotpSecret::generate().unwrap();
        let step = Duration::from_secs(30);
        let verifier = OtpVerifier::new(step);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let code = secret.code(now, step);
        assert_eq!(
            verifier.verify("a", &secret, None, now),
            Err(OtpError::Missing)
        );
        assert_eq!(verifier.verify("a", &secret, Some(&code), now), Ok(()));
        assert_eq!(
            verifier.verify("a", &secret, Some(&code), now),
            Err(OtpError::Replayed)
        );
        // Another principal's use is independent.
        assert_eq!(verifier.verify("b", &secret, Some(&code), now), Ok(()));
        // Two steps later the old code has expired.
        let later = now + 2 * step;
        let old = secret.code(now - step, step);
        assert_eq!(
            verifier.verify("c", &secret, Some(&old), later),
            Err(OtpError::Invalid)
        );
        // The previous step is still accepted (skew), once.
        let previous = secret.code(now - step, step);
        assert_eq!(verifier.verify("a", &secret, Some(&previous), now), Ok(()));
        for bad in ["", "12345", "1234567", "abcdef", " 12 34"] {
            assert_eq!(
                verifier.verify("a", &secret, Some(bad), now),
                Err(OtpError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn otpauth_uri_names_the_account_and_period() {
        let secret = TotpSecret::generate().unwrap();
        let uri = secret.otpauth_uri("ops admin", Duration::from_secs(30));
        let uri = uri.expose_secret();
        assert!(uri.starts_with("otpauth://totp/Tessera:ops%20admin?secret="));
        assert!(uri.contains(secret.to_base32().expose_secret()));
        assert!(uri.ends_with("&period=30"));
    }
}
