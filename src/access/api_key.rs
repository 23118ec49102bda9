//! API keys: `tsk_<key id>_<secret>`, stored only as SHA-256 hashes.
//!
//! A key carries 256 random bits, so a fast hash is enough (no password
//! stretching is needed for keys nobody can guess). The public key id picks
//! the candidate; the hash comparison is constant-time, and an unknown id
//! still runs a comparison so the two failures take the same path.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::csprng::{self, RngError};
use crate::domain::Principal;
use crate::secret::SecretString;

const PREFIX: &str = "tsk_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// SHA-256 of an API key, as kept in configuration: `sha256:<hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(sha256:…)")
    }
}

impl KeyHash {
    /// Hashes a presented key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex>`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex_part = text.strip_prefix("sha256:")?;
        let bytes = hex::decode(hex_part).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// The `sha256:<hex>` form.
    pub fn to_config_string(&self) -> String {
        format!("sha256:{}", hex::encode(self.0))
    }

    fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A newly generated key: shown once, then only its hash is kept.
pub struct NewApiKey {
    /// The full key, to hand to the caller.
    pub key: SecretString,
    /// Its hash, to store.
    pub hash: KeyHash,
}

/// Generates a key from the OS CSPRNG.
pub fn generate() -> Result<NewApiKey, RngError> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    csprng::fill(&mut id)?;
    csprng::fill(secret.as_mut())?;
    let key = format!(
        "{PREFIX}{}_{}",
        hex::encode(id),
        hex::encode(secret.as_ref())
    );
    let hash = KeyHash::of(&key);
    Ok(NewApiKey {
        key: SecretString::new(key),
        hash,
    })
}

/// The key id (public part) of a well-formed key; `None` for anything else.
pub fn key_id(key: &str) -> Option<&str> {
    split_credential(key, PREFIX, ID_BYTES, SECRET_BYTES).map(|(id, _)| id)
}

/// Splits `<prefix><hex id>_<hex secret>` (API keys, admin sessions) into
/// id and secret when both have the expected byte lengths.
pub(crate) fn split_credential<'a>(
    text: &'a str,
    prefix: &str,
    id_bytes: usize,
    secret_bytes: usize,
) -> Option<(&'a str, &'a str)> {
    let (id, secret) = text.strip_prefix(prefix)?.split_once('_')?;
    let well_formed = id.len() == 2 * id_bytes
        && secret.len() == 2 * secret_bytes
        && id
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_hexdigit());
    well_formed.then_some((id, secret))
}

/// Looks principals up by API key.
#[derive(Debug, Default)]
pub struct ApiKeyRegistry {
    by_id: HashMap<String, (KeyHash, Principal)>,
    /// Compared against when the id is unknown, so that path costs the same.
    decoy: Option<KeyHash>,
}

/// Registering a key failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two principals hold keys with the same id (or the same key).
    #[error("duplicate API key for principal {0}")]
    Duplicate(String),
}

impl ApiKeyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            by_id: HashMap::new(),
            decoy: Some(KeyHash([0u8; 32])),
        }
    }

    /// Registers a principal by the hash of its key. The key id is not
    /// recoverable from a hash, so configured principals are indexed under
    /// the hash's hex; see [`ApiKeyRegistry::authenticate`].
    pub fn insert(&mut self, hash: KeyHash, principal: Principal) -> Result<(), RegistryError> {
        let slot = hex::encode(hash.0);
        if self.by_id.contains_key(&slot) {
            return Err(RegistryError::Duplicate(principal.name));
        }
        self.by_id.insert(slot, (hash, principal));
        Ok(())
    }

    /// Whether a key with this public id is registered.
    pub fn has_id(&self, key_id: &str) -> bool {
        self.by_id.contains_key(key_id)
    }

    /// How many keys are registered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The principal holding `key`, if any.
    ///
    /// The lookup is by the key's SHA-256 (a hash-map probe reveals nothing
    /// about the key itself), then the stored hash is compared in constant
    /// time. Malformed and unknown keys run the same comparison against a
    /// decoy.
    pub fn authenticate(&self, key: &str) -> Option<&Principal> {
        let presented = KeyHash::of(key);
        let well_formed = key_id(key).is_some();
        let slot = hex::encode(presented.0);
        match self.by_id.get(&slot) {
            Some((stored, principal)) if well_formed && stored.ct_eq(&presented) => Some(principal),
            _ => {
                if let Some(decoy) = &self.decoy {
                    let _ = decoy.ct_eq(&presented);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::{Role, TenantId};

    fn principal(name: &str) -> Principal {
        Principal {
            name: name.into(),
            tenant: TenantId::new("default").unwrap(),
            roles: BTreeSet::from([Role::Tokenize]),
        }
    }

    #[test]
    fn generated_keys_authenticate_and_others_do_not() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.key.expose_secret(), b.key.expose_secret());
        let mut reg = ApiKeyRegistry::new();
        reg.insert(a.hash.clone(), principal("a")).unwrap();
        assert_eq!(reg.authenticate(a.key.expose_secret()).unwrap().name, "a");
        assert!(reg.authenticate(b.key.expose_secret()).is_none());
        assert!(reg.authenticate("").is_none());
        assert!(reg.authenticate("tsk_zz").is_none());
        let mut tampered = a.key.expose_secret().to_owned();
        tampered.pop();
        tampered.push('0');
        assert!(reg.authenticate(&tampered).is_none() || tampered == a.key.expose_secret());
        assert!(matches!(
            reg.insert(a.hash, principal("dup")),
            Err(RegistryError::Duplicate(_))
        ));
    }

    #[test]
    fn hash_config_form_round_trips() {
        let k = generate().unwrap();
        let text = k.hash.to_config_string();
        assert_eq!(KeyHash::parse(&text).unwrap(), k.hash);
        assert!(KeyHash::parse("md5:00").is_none());
        assert!(!format!("{:?}", k.hash).contains(&text[7..20]));
    }
}
