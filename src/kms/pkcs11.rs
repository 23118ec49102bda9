//! A hardware security module through PKCS#11 (the `cryptoki` crate),
//! tested against SoftHSM2.
//!
//! - The master key (KEK) is an AES-256 token key, sensitive and
//!   non-extractable, found by label; it never leaves the HSM.
//! - Data keys come from the HSM's RNG (`C_GenerateRandom`) and are wrapped
//!   with `CKM_AES_KEY_WRAP_PAD` (RFC 5649) through `C_WrapKey`, unwrapped
//!   through `C_UnwrapKey` into a short-lived session object whose value is
//!   read once and the object destroyed.
//! - Key wrap has no associated data, so the [`KeyContext`] is bound by a
//!   tag: `HMAC-SHA256(DEK, "tessera/kms/pkcs11/bind/v1" ‖ key id ‖ 0 ‖
//!   context)`. A wrapped key moved to another tenant, purpose or version
//!   unwraps to a DEK whose tag does not match, and is refused (PCI DSS 3.7.7).
//! - Sessions are `Send` but not `Sync`, so they are pooled; PKCS#11 login
//!   state is per application, so one login serves every pooled session.
//! - SoftHSM2 answers a bad unwrap with `CKR_GENERAL_ERROR`; every unwrap
//!   failure is the one opaque [`KmsError::Unwrap`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::kms::{KeyContext, KeyId, Kms, KmsError, WrappedKey};
use crate::secret::{DataKey, KEY_LEN};

const BIND_INFO: &[u8] = b"tessera/kms/pkcs11/bind/v1";
const BLOB_V1: u8 = 1;
const TAG_LEN: usize = 32;

/// Where the HSM is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Label of the token holding the KEK.
    pub token_label: String,
    /// Label of the KEK on that token.
    pub key_label: String,
    /// File holding the user PIN (secrets come from files, PCI DSS 8.6.3).
    pub pin_file: PathBuf,
}

/// The PKCS#11 KMS.
pub struct Pkcs11Kms {
    ctx: Pkcs11,
    slot: Slot,
    kek: ObjectHandle,
    key_id: KeyId,
    sessions: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for Pkcs11Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Kms")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> KmsError {
    KmsError::Unavailable(format!("PKCS#11: {e}"))
}

fn read_pin(path: &Path) -> Result<AuthPin, KmsError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        KmsError::Refused(format!(
            "cannot read the HSM PIN file {}: {e}",
            path.display()
        ))
    })?);
    Ok(AuthPin::from(text.trim().to_owned()))
}

/// Loads the module, finds the token by label and logs in a first session.
fn open_token(config: &Pkcs11Config) -> Result<(Pkcs11, Slot, Session), KmsError> {
    let ctx = Pkcs11::new(&config.module).map_err(|e| {
        KmsError::Refused(format!(
            "cannot load PKCS#11 module {}: {e}",
            config.module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(unavailable(e)),
    }
    // Slot ids change when tokens are initialised: find by label.
    let slot = ctx
        .get_slots_with_initialized_token()
        .map_err(unavailable)?
        .into_iter()
        .find(|slot| {
            ctx.get_token_info(*slot)
                .is_ok_and(|info| info.label() == config.token_label)
        })
        .ok_or_else(|| {
            KmsError::Refused(format!(
                "no PKCS#11 token labelled {:?}",
                config.token_label
            ))
        })?;
    let session = ctx.open_rw_session(slot).map_err(unavailable)?;
    let pin = read_pin(&config.pin_file)?;
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(KmsError::Refused(format!("HSM login failed: {e}"))),
    }
    Ok((ctx, slot, session))
}

fn find_key(session: &Session, label: &str) -> Result<Option<ObjectHandle>, KmsError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(unavailable)?;
    Ok(found.into_iter().next())
}

impl Pkcs11Kms {
    /// Opens the HSM and finds the KEK by label; refused when it is missing.
    pub fn open(config: &Pkcs11Config) -> Result<Self, KmsError> {
        let (ctx, slot, session) = open_token(config)?;
        let kek = find_key(&session, &config.key_label)?.ok_or_else(|| {
            KmsError::Refused(format!(
                "no key labelled {:?} on token {:?}; create it with `tessera hsm create-kek`",
                config.key_label, config.token_label
            ))
        })?;
        let key_id = KeyId::new(format!(
            "pkcs11:{}/{}",
            config.token_label, config.key_label
        ))
        .ok_or_else(|| KmsError::Refused("empty key id".into()))?;
        Ok(Self {
            ctx,
            slot,
            kek,
            key_id,
            sessions: Mutex::new(vec![session]),
        })
    }

    /// Creates the KEK on the token: AES-256, a token object, sensitive,
    /// never extractable, usable only to wrap and unwrap. Refused when a key
    /// with that label exists.
    pub fn create_kek(config: &Pkcs11Config) -> Result<(), KmsError> {
        let (_ctx, _slot, session) = open_token(config)?;
        if find_key(&session, &config.key_label)?.is_some() {
            return Err(KmsError::Refused(format!(
                "a key labelled {:?} already exists",
                config.key_label
            )));
        }
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Wrap(true),
                    Attribute::Unwrap(true),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(false),
                    Attribute::Label(config.key_label.as_bytes().to_vec()),
                ],
            )
            .map_err(unavailable)?;
        Ok(())
    }

    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let pooled = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let session = match pooled {
            Some(s) => s,
            None => self.ctx.open_rw_session(self.slot).map_err(unavailable)?,
        };
        let result = f(&session);
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(session);
        result
    }

    fn bind_tag(&self, key: &DataKey, ctx: &KeyContext) -> [u8; TAG_LEN] {
        // HMAC takes keys of any length; a 32-byte key cannot be refused.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_secret())
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        mac.update(BIND_INFO);
        mac.update(self.key_id.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(&ctx.to_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// A session object holding `value`, destroyed when dropped.
struct TempKey<'a> {
    session: &'a Session,
    handle: ObjectHandle,
}

impl Drop for TempKey<'_> {
    fn drop(&mut self) {
        let _ = self.session.destroy_object(self.handle);
    }
}

#[async_trait]
impl Kms for Pkcs11Kms {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<(DataKey, WrappedKey), KmsError> {
        self.with_session(|session| {
            let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
            session
                .generate_random_slice(bytes.as_mut())
                .map_err(unavailable)?;
            let key = DataKey::from_bytes(*bytes);
            let handle = session
                .create_object(&[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                    Attribute::Value(bytes.to_vec()),
                ])
                .map_err(unavailable)?;
            let temp = TempKey { session, handle };
            let wrapped = session
                .wrap_key(&Mechanism::AesKeyWrapPad, self.kek, temp.handle)
                .map_err(unavailable)?;
            drop(temp);
            let mut w = Writer::new();
            w.u8(BLOB_V1)
                .bytes(&wrapped)
                .fixed(&self.bind_tag(&key, ctx));
            let blob = WrappedKey::new(w.finish()).ok_or(KmsError::Unwrap)?;
            Ok((key, blob))
        })
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &KeyContext,
    ) -> Result<DataKey, KmsError> {
        let mut r = Reader::new(wrapped.as_bytes());
        let (kwp, tag) = (|| {
            if r.u8().ok()? != BLOB_V1 {
                return None;
            }
            let kwp = r.bytes().ok()?;
            let tag = r.fixed(TAG_LEN).ok()?;
            r.end().ok()?;
            Some((kwp, tag))
        })()
        .ok_or(KmsError::Unwrap)?;
        let key = self.with_session(|session| {
            let handle = session
                .unwrap_key(
                    &Mechanism::AesKeyWrapPad,
                    self.kek,
                    kwp,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::Token(false),
                        Attribute::Sensitive(false),
                        Attribute::Extractable(true),
                    ],
                )
                .map_err(|_| KmsError::Unwrap)?;
            let temp = TempKey { session, handle };
            let attributes = session
                .get_attributes(temp.handle, &[AttributeType::Value])
                .map_err(|_| KmsError::Unwrap)?;
            let value = attributes.into_iter().find_map(|a| match a {
                Attribute::Value(v) => Some(Zeroizing::new(v)),
                _ => None,
            });
            value
                .and_then(|v| DataKey::from_slice(&v))
                .ok_or(KmsError::Unwrap)
        })?;
        if !bool::from(self.bind_tag(&key, ctx).as_slice().ct_eq(tag)) {
            return Err(KmsError::Unwrap);
        }
        Ok(key)
    }

    fn master_key_id(&self) -> Option<KeyId> {
        Some(self.key_id.clone())
    }

    fn backend_name(&self) -> &'static str {
        "pkcs11"
    }

    fn is_production_grade(&self) -> bool {
        true
    }
}
