//! A software master key split by Shamir secret sharing (split knowledge and
//! dual control, PCI DSS 3.6.1.2 and 3.7.6).
//!
//! `tessera init` makes a random 256-bit master key, splits it into N
//! full-length shares with threshold M (GF(256) arithmetic from the `blahaj`
//! crate, the maintained fork of `sharks`; never hand-rolled), writes one share
//! file per custodian, and keeps in the data dir only public facts
//! (`shamir.json`): the key id, M and N, a SHA-256 of each share (so a wrong
//! share is refused at once) and a check value of the key (so a wrong
//! combination is never used).
//!
//! The vault starts sealed. Shares arrive one at a time; one custodian (one
//! principal) may submit only one share, a share already received is refused,
//! and at M distinct shares the key is rebuilt, checked and the vault unseals.
//! [`Kms::seal`] drops the key at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use blahaj::{Share, Sharks};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kms::soft::{SoftwareKek, SoftwareKeyring};
use crate::kms::{KeyContext, KeyId, Kms, KmsError, UnsealProgress, WrappedKey};
use crate::secret::DataKey;

/// Domain separation for Shamir-KMS wraps.
const WRAP_DOMAIN: &[u8] = b"tessera/kms/shamir/v1";
/// HMAC message for the key check value.
const CHECK_INFO: &[u8] = b"tessera/shamir/check/v1";
/// Format tag of `shamir.json`.
pub const SETUP_FORMAT: &str = "tessera-shamir/v1";
/// Format tag of a share file.
pub const SHARE_FORMAT: &str = "tessera-unseal-share/v1";
/// File name of the public setup in the data dir.
pub const SETUP_FILE: &str = "shamir.json";

/// Public facts about a split master key, kept in the data dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShamirSetup {
    /// Always [`SETUP_FORMAT`].
    pub format: String,
    /// The master key's id.
    pub key_id: String,
    /// Shares needed to unseal (M).
    pub threshold: u8,
    /// Shares made (N).
    pub shares: u8,
    /// Hex SHA-256 of each share's bytes, by share number (1-based).
    pub share_sha256: Vec<String>,
    /// Hex HMAC-SHA256(master key, "tessera/shamir/check/v1").
    pub check: String,
    /// Current master key version. Version N wraps with
    /// HKDF-SHA256(rebuilt key, info = "tessera/shamir/kek/vN"), so rotating
    /// the master key needs no new shares (as HashiCorp Vault's keyring
    /// rotation keeps its unseal keys); `tessera init` on a new data dir
    /// replaces the shares themselves.
    #[serde(default = "first_version")]
    pub kek_version: u32,
}

fn first_version() -> u32 {
    1
}

/// The wrapping key of master key version `version`.
fn derive_kek(root: &DataKey, version: u32) -> Result<SoftwareKek, KmsError> {
    let hkdf = hkdf::Hkdf::<Sha256>::new(None, root.expose_secret());
    let mut okm = Zeroizing::new([0u8; 32]);
    hkdf.expand(
        format!("tessera/shamir/kek/v{version}").as_bytes(),
        okm.as_mut(),
    )
    .map_err(|_| KmsError::Unwrap)?;
    SoftwareKek::new(DataKey::from_bytes(*okm), "shamir", WRAP_DOMAIN)
}

fn keyring(root: &DataKey, versions: u32) -> Result<SoftwareKeyring, KmsError> {
    SoftwareKeyring::new(
        (1..=versions.max(1))
            .map(|v| derive_kek(root, v))
            .collect::<Result<Vec<_>, _>>()?,
    )
}

/// One custodian's share, as written to its own file.
#[derive(Serialize, Deserialize)]
pub struct ShareFile {
    /// Always [`SHARE_FORMAT`].
    pub format: String,
    /// The master key this share belongs to.
    pub key_id: String,
    /// Share number, 1..=N.
    pub number: u8,
    /// M.
    pub threshold: u8,
    /// N.
    pub shares: u8,
    /// The share bytes in hex (33 bytes for a 32-byte key: full length).
    pub share: String,
}

impl Drop for ShareFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.share);
    }
}

fn check_value(key: &DataKey) -> [u8; 32] {
    key.hmac_sha256(&[CHECK_INFO])
}

/// Makes a new master key and splits it into `shares` shares, any
/// `threshold` of which rebuild it. The key itself is dropped (zeroized)
/// before this returns: only the shares can bring it back.
pub fn split_new_master_key(
    threshold: u8,
    shares: u8,
) -> Result<(ShamirSetup, Vec<ShareFile>), KmsError> {
    if threshold < 2 {
        return Err(KmsError::Refused(
            "threshold must be at least 2: one custodian must never hold the key alone".into(),
        ));
    }
    if shares < threshold {
        return Err(KmsError::Refused(
            "shares must be at least the threshold".into(),
        ));
    }
    let master = DataKey::generate()?;
    let kek = SoftwareKek::new(
        DataKey::from_bytes(*master.expose_secret()),
        "shamir",
        WRAP_DOMAIN,
    )?;
    let dealt: Vec<Share> = Sharks(threshold)
        .dealer(master.expose_secret())
        .take(usize::from(shares))
        .collect();
    let mut files = Vec::with_capacity(dealt.len());
    let mut hashes = Vec::with_capacity(dealt.len());
    for (i, share) in dealt.iter().enumerate() {
        let bytes = Zeroizing::new(Vec::from(share));
        hashes.push(hex::encode(Sha256::digest(bytes.as_slice())));
        files.push(ShareFile {
            format: SHARE_FORMAT.to_owned(),
            key_id: kek.key_id().as_str().to_owned(),
            number: u8::try_from(i + 1).map_err(|_| KmsError::Refused("too many shares".into()))?,
            threshold,
            shares,
            share: hex::encode(bytes.as_slice()),
        });
    }
    let setup = ShamirSetup {
        format: SETUP_FORMAT.to_owned(),
        key_id: kek.key_id().as_str().to_owned(),
        threshold,
        shares,
        share_sha256: hashes,
        check: hex::encode(check_value(&master)),
        kek_version: 1,
    };
    Ok((setup, files))
}

enum State {
    Sealed {
        received: BTreeMap<u8, (String, Share)>,
    },
    Unsealed {
        root: DataKey,
        keyring: SoftwareKeyring,
    },
}

/// The Shamir-unsealed KMS.
pub struct ShamirKms {
    setup: ShamirSetup,
    /// Current master key version (starts at `setup.kek_version`).
    kek_version: std::sync::atomic::AtomicU32,
    /// Where `shamir.json` lives, to record master key rotations.
    setup_path: Option<std::path::PathBuf>,
    state: Mutex<State>,
}

impl std::fmt::Debug for ShamirKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShamirKms")
            .field("key_id", &self.setup.key_id)
            .field("threshold", &self.setup.threshold)
            .finish_non_exhaustive()
    }
}

impl ShamirKms {
    /// A sealed KMS for `setup`.
    pub fn sealed(setup: ShamirSetup) -> Result<Self, KmsError> {
        if setup.format != SETUP_FORMAT
            || setup.threshold < 2
            || setup.share_sha256.len() != usize::from(setup.shares)
        {
            return Err(KmsError::Refused(format!(
                "{SETUP_FILE} is not a valid Shamir setup"
            )));
        }
        Ok(Self {
            kek_version: std::sync::atomic::AtomicU32::new(setup.kek_version.max(1)),
            setup,
            setup_path: None,
            state: Mutex::new(State::Sealed {
                received: BTreeMap::new(),
            }),
        })
    }

    /// Reads `DIR/shamir.json` and starts sealed.
    pub fn open(data_dir: &Path) -> Result<Self, KmsError> {
        let path = data_dir.join(SETUP_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            KmsError::Refused(format!(
                "cannot read {}: {e}; run `tessera init` first",
                path.display()
            ))
        })?;
        let setup: ShamirSetup = serde_json::from_slice(&bytes).map_err(|_| {
            KmsError::Refused(format!("{} is not a valid Shamir setup", path.display()))
        })?;
        let mut kms = Self::sealed(setup)?;
        kms.setup_path = Some(path);
        Ok(kms)
    }

    /// The public setup.
    pub fn setup(&self) -> &ShamirSetup {
        &self.setup
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is replaced whole under the lock; a panic elsewhere
        // cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_kek<T>(
        &self,
        f: impl FnOnce(&SoftwareKeyring) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        match &*self.lock() {
            State::Unsealed { keyring, .. } => f(keyring),
            State::Sealed { .. } => Err(KmsError::Sealed),
        }
    }

    fn progress(&self, state: &State) -> UnsealProgress {
        let threshold = u32::from(self.setup.threshold);
        match state {
            State::Sealed { received } => UnsealProgress {
                sealed: true,
                received: u32::try_from(received.len()).unwrap_or(u32::MAX),
                threshold,
            },
            State::Unsealed { .. } => UnsealProgress {
                sealed: false,
                received: threshold,
                threshold,
            },
        }
    }

    fn parse_share(&self, bytes: &[u8]) -> Result<(u8, Share), KmsError> {
        let refused = |why: &str| KmsError::ShareRefused(why.to_owned());
        let file: ShareFile =
            serde_json::from_slice(bytes).map_err(|_| refused("not a Tessera share file"))?;
        if file.format != SHARE_FORMAT {
            return Err(refused("not a Tessera share file"));
        }
        if file.key_id != self.setup.key_id {
            return Err(refused("the share belongs to another master key"));
        }
        let raw = Zeroizing::new(hex::decode(&file.share).map_err(|_| refused("malformed share"))?);
        let expected = self
            .setup
            .share_sha256
            .get(usize::from(file.number).wrapping_sub(1))
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| refused("not one of this vault's shares"))?;
        let actual = Sha256::digest(raw.as_slice());
        if !bool::from(actual.as_slice().ct_eq(&expected)) {
            return Err(refused("not one of this vault's shares"));
        }
        let share = Share::try_from(raw.as_slice()).map_err(|_| refused("malformed share"))?;
        Ok((file.number, share))
    }
}

#[async_trait]
impl Kms for ShamirKms {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<(DataKey, WrappedKey), KmsError> {
        self.with_kek(|kek| kek.generate(ctx))
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &KeyContext,
    ) -> Result<DataKey, KmsError> {
        self.with_kek(|kek| kek.unwrap(wrapped, ctx))
    }

    async fn wrap_data_key(&self, key: &DataKey, ctx: &KeyContext) -> Result<WrappedKey, KmsError> {
        self.with_kek(|kek| kek.wrap(key, ctx))
    }

    async fn rotate_master_key(&self) -> Result<KeyId, KmsError> {
        let mut state = self.lock();
        let State::Unsealed { root, keyring } = &mut *state else {
            return Err(KmsError::Sealed);
        };
        let next = keyring.current_version() + 1;
        let kek = derive_kek(root, next)?;
        let mut updated = self.setup.clone();
        updated.kek_version = next;
        if let Some(path) = &self.setup_path {
            let json = serde_json::to_vec_pretty(&updated)
                .map_err(|e| KmsError::Refused(e.to_string()))?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, json)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, path)?;
        }
        self.kek_version
            .store(next, std::sync::atomic::Ordering::SeqCst);
        keyring.push(kek);
        keyring.key_id().cloned().ok_or(KmsError::Unwrap)
    }

    fn master_key_id(&self) -> Option<KeyId> {
        match &*self.lock() {
            State::Unsealed { keyring, .. } => keyring.key_id().cloned(),
            State::Sealed { .. } => None,
        }
    }

    fn master_key_version(&self) -> Option<u32> {
        match &*self.lock() {
            State::Unsealed { keyring, .. } => Some(keyring.current_version()),
            State::Sealed { .. } => None,
        }
    }

    fn backend_name(&self) -> &'static str {
        "shamir"
    }

    fn is_production_grade(&self) -> bool {
        true
    }

    fn unseal_progress(&self) -> Option<UnsealProgress> {
        Some(self.progress(&self.lock()))
    }

    async fn submit_share(&self, holder: &str, share: &[u8]) -> Result<UnsealProgress, KmsError> {
        let (number, share) = self.parse_share(share)?;
        let mut state = self.lock();
        let State::Sealed { received } = &mut *state else {
            return Err(KmsError::ShareRefused(
                "the vault is already unsealed".into(),
            ));
        };
        if received.contains_key(&number) {
            return Err(KmsError::ShareRefused(
                "this share was already submitted".into(),
            ));
        }
        if received.values().any(|(who, _)| who == holder) {
            return Err(KmsError::ShareRefused(
                "this custodian already submitted a share; each share needs its own custodian"
                    .into(),
            ));
        }
        received.insert(number, (holder.to_owned(), share));
        if received.len() < usize::from(self.setup.threshold) {
            return Ok(self.progress(&state));
        }
        let shares: Vec<&Share> = received.values().map(|(_, s)| s).collect();
        let sharks = Sharks(self.setup.threshold);
        let key = sharks
            .recover(shares)
            .ok()
            .map(Zeroizing::new)
            .and_then(|bytes| DataKey::from_slice(&bytes));
        let expected = hex::decode(&self.setup.check).unwrap_or_default();
        match key {
            Some(key) if bool::from(check_value(&key).as_slice().ct_eq(&expected)) => {
                let root_id = SoftwareKek::new(
                    DataKey::from_bytes(*key.expose_secret()),
                    "shamir",
                    WRAP_DOMAIN,
                )?;
                let versions = self.kek_version.load(std::sync::atomic::Ordering::SeqCst);
                if root_id.key_id().as_str() != self.setup.key_id {
                    *state = State::Sealed {
                        received: BTreeMap::new(),
                    };
                    return Err(KmsError::ShareRefused(
                        "the shares rebuilt another key; start again".into(),
                    ));
                }
                let keyring = keyring(&key, versions)?;
                *state = State::Unsealed { root: key, keyring };
                Ok(self.progress(&state))
            }
            _ => {
                *state = State::Sealed {
                    received: BTreeMap::new(),
                };
                Err(KmsError::ShareRefused(
                    "the shares did not rebuild the master key; start again".into(),
                ))
            }
        }
    }

    fn seal(&self) {
        // Dropping the SoftwareKek zeroizes the master key.
        *self.lock() = State::Sealed {
            received: BTreeMap::new(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share_bytes(file: &ShareFile) -> Vec<u8> {
        serde_json::to_vec(file).unwrap()
    }

    #[test]
    fn shares_are_full_length_and_threshold_minus_one_recovers_nothing() {
        let (setup, files) = split_new_master_key(3, 5).unwrap();
        assert_eq!(files.len(), 5);
        assert_eq!(setup.share_sha256.len(), 5);
        let shares: Vec<Share> = files
            .iter()
            .map(|f| {
                let raw = hex::decode(&f.share).unwrap();
                assert_eq!(
                    raw.len(),
                    33,
                    "x coordinate + 32 bytes: a full-length share"
                );
                Share::try_from(raw.as_slice()).unwrap()
            })
            .collect();
        assert!(Sharks(3).recover(shares[..2].iter()).is_err());
        let key = Sharks(3).recover(shares[1..4].iter()).unwrap();
        assert_eq!(
            hex::encode(check_value(&DataKey::from_slice(&key).unwrap())),
            setup.check
        );
    }

    #[test]
    fn refuses_weak_splits() {
        assert!(split_new_master_key(1, 3).is_err());
        assert!(split_new_master_key(3, 2).is_err());
    }

    #[tokio::test]
    async fn unseal_flow_refuses_duplicate_same_holder_and_foreign_shares() {
        let (setup, files) = split_new_master_key(3, 5).unwrap();
        let kms = ShamirKms::sealed(setup).unwrap();
        let ctx = KeyContext {
            tenant: crate::domain::TenantId::new("t").unwrap(),
            purpose: crate::kms::KeyPurpose::Data,
            version: 1,
        };
        assert!(matches!(
            kms.generate_data_key(&ctx).await,
            Err(KmsError::Sealed)
        ));
        assert!(kms.master_key_id().is_none());

        let p = kms
            .submit_share("alice", &share_bytes(&files[0]))
            .await
            .unwrap();
        assert_eq!((p.sealed, p.received, p.threshold), (true, 1, 3));
        // The same share again, from anyone: refused.
        assert!(matches!(
            kms.submit_share("bob", &share_bytes(&files[0])).await,
            Err(KmsError::ShareRefused(_))
        ));
        // The same custodian with a second share: refused.
        assert!(matches!(
            kms.submit_share("alice", &share_bytes(&files[1])).await,
            Err(KmsError::ShareRefused(_))
        ));
        // A share of another vault: refused.
        let (_, other) = split_new_master_key(3, 5).unwrap();
        assert!(matches!(
            kms.submit_share("bob", &share_bytes(&other[1])).await,
            Err(KmsError::ShareRefused(_))
        ));
        // A tampered share: refused by its hash.
        let mut tampered = share_bytes(&files[1]);
        let pos = tampered.len() - 3;
        tampered[pos] = if tampered[pos] == b'0' { b'1' } else { b'0' };
        assert!(matches!(
            kms.submit_share("bob", &tampered).await,
            Err(KmsError::ShareRefused(_))
        ));
        assert!(matches!(
            kms.submit_share("bob", b"garbage").await,
            Err(KmsError::ShareRefused(_))
        ));

        let p = kms
            .submit_share("bob", &share_bytes(&files[3]))
            .await
            .unwrap();
        assert_eq!((p.sealed, p.received), (true, 2));
        assert!(
            matches!(kms.generate_data_key(&ctx).await, Err(KmsError::Sealed)),
            "threshold - 1 shares unseal nothing"
        );
        let p = kms
            .submit_share("carol", &share_bytes(&files[4]))
            .await
            .unwrap();
        assert!(!p.sealed);
        let (key, wrapped) = kms.generate_data_key(&ctx).await.unwrap();
        assert_eq!(
            kms.unwrap_data_key(&wrapped, &ctx)
                .await
                .unwrap()
                .expose_secret(),
            key.expose_secret()
        );

        kms.seal();
        assert!(matches!(
            kms.unwrap_data_key(&wrapped, &ctx).await,
            Err(KmsError::Sealed)
        ));
        assert_eq!(kms.unseal_progress().unwrap().received, 0);
        // Another three custodians with other shares unseal the same key.
        for (who, f) in [
            ("dan", &files[1]),
            ("erin", &files[2]),
            ("frank", &files[0]),
        ] {
            kms.submit_share(who, &share_bytes(f)).await.unwrap();
        }
        assert_eq!(
            kms.unwrap_data_key(&wrapped, &ctx)
                .await
                .unwrap()
                .expose_secret(),
            key.expose_secret()
        );
    }
}
