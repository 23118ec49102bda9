//! Secret types: key material that zeroizes on drop and never prints.
//!
//! Nothing here derives `Clone`, `Debug` or `Serialize`. The bytes are reached
//! only through `expose_secret()`, so every read of key material is greppable
//! (the same discipline as `FileKey` in age and `AeadKey` in rustls).

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::csprng::{self, RngError};

/// Length of every symmetric key Tessera holds: AES-256 and HMAC-SHA256 keys.
pub const KEY_LEN: usize = 32;

/// A 256-bit secret key: a data key (DEK), a tenant index key, or a key
/// derived from one. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_LEN]);

impl DataKey {
    /// Wraps raw key bytes. The caller's copy should be zeroized by the caller.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies key bytes from a slice of exactly [`KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(array))
    }

    /// A fresh key from the OS CSPRNG (PCI DSS 3.7.1).
    pub fn generate() -> Result<Self, RngError> {
        let mut bytes = [0u8; KEY_LEN];
        csprng::fill(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The key bytes. Every caller is a place key material is used.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// HMAC-SHA256 under this key over the concatenation of `parts`.
    pub fn hmac_sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        MacKey::new(self).mac(parts)
    }
}

/// An HMAC-SHA256 key with its inner and outer pads already hashed: a MAC
/// under it costs the message's blocks only, not two more for the key.
/// Each MAC works on a copy of the keyed state.
///
/// The keyed states are key-equivalent secrets. The cached state and the
/// copy each MAC works on are zeroized when dropped: the `zeroize`
/// features of `hmac` and `sha2` (and so of `digest` and `block-buffer`)
/// make the hash cores and buffers wipe themselves, which the assertion
/// below keeps true. What they cannot wipe are the bytes a move leaves
/// behind: `finalize` takes the working copy by value, and the tenant's
/// keys are moved into their `Arc` once. Those stack copies live until the
/// stack is reused, as with any Rust value that is moved.
pub struct MacKey(hmac::Hmac<sha2::Sha256>);

// Fails to build if the `zeroize` features are ever dropped: `Sha256` is
// `ZeroizeOnDrop` only when its core and its block buffer (the same kinds
// `Hmac<Sha256>` holds) wipe themselves.
const _: () = {
    fn wiped_on_drop<T: ZeroizeOnDrop>() {}
    let _ = wiped_on_drop::<sha2::Sha256>;
};

impl MacKey {
    /// Keys an HMAC-SHA256 state with `key`.
    pub fn new(key: &DataKey) -> Self {
        use hmac::KeyInit;
        // HMAC pads a key shorter than its block with zeros (RFC 2104 §2):
        // padding it here first is the same MAC, and keying a whole block
        // cannot fail, so there is no fallback key to get wrong.
        let mut block = hmac::digest::Key::<hmac::Hmac<sha2::Sha256>>::default();
        block[..KEY_LEN].copy_from_slice(key.expose_secret());
        let keyed = <hmac::Hmac<sha2::Sha256> as KeyInit>::new(&block);
        Zeroize::zeroize(&mut block[..]);
        Self(keyed)
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Secret bytes of any length (a plaintext in flight, an API key). Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of the bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Compares in constant time (for equal lengths).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.ct_eq(other).into()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// A secret string from configuration (a password, an API key). Zeroized on
/// drop, never formatted.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    /// Takes ownership of the string.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret text.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = DataKey::from_bytes([0xAB; KEY_LEN]);
        let shown = format!("{key:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        let secret = SecretString::new("hunter2".to_owned());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn generated_keys_differ() {
        let a = DataKey::generate().unwrap();
        let b = DataKey::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    /// RFC 4231 test case 2 (key "Jefe"): the keyed state gives the same
    /// MAC as keying afresh, message after message, in one part or several.
    #[test]
    fn a_keyed_state_macs_like_a_fresh_key() {
        let mut jefe = [0u8; KEY_LEN];
        jefe[..4].copy_from_slice(b"Jefe");
        // HMAC pads a short key with zeros: "Jefe" and "Jefe" + 28 zero
        // bytes are the same key (RFC 2104 §2).
        let key = DataKey::from_bytes(jefe);
        let mac_key = MacKey::new(&key);
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        for _ in 0..3 {
            assert_eq!(
                hex(mac_key.mac(&[b"what do ya want for nothing?"])),
                expected
            );
            assert_eq!(
                hex(mac_key.mac(&[b"what do ya ", b"want for nothing?"])),
                expected
            );
        }
        assert_eq!(
            hex(key.hmac_sha256(&[b"what do ya want for nothing?"])),
            expected
        );
        assert_ne!(mac_key.mac(&[b"other"]), mac_key.mac(&[b"another"]));
        assert!(!format!("{mac_key:?}").contains("Jefe"));
    }

    #[test]
    fn constant_time_compare_matches_equality() {
        let s = SecretBytes::new(b"abc".to_vec());
        assert!(s.ct_eq(b"abc"));
        assert!(!s.ct_eq(b"abd"));
        assert!(!s.ct_eq(b"ab"));
    }
}
