//! A hardware security module through PKCS#11 (the `cryptoki` crate),
//! tested against SoftHSM2.
//!
//! - The master key (KEK) is an AES-256 token key, sensitive and
//!   non-extractable, found by label; it never leaves the HSM. Master key
//!   versions are further token keys labelled `LABEL.v2`, `LABEL.v3`, …;
//!   the highest is current, and a wrapped key names the version that
//!   wrapped it.
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
//!
//! Wrapped form: `1 ‖ u32 master key version ‖ u32 len ‖ KWP blob ‖ tag`.

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
    /// Label of the KEK (version 1) on that token.
    pub key_label: String,
    /// File holding the user PIN (secrets come from files, PCI DSS 8.6.3).
    pub pin_file: PathBuf,
}

/// One master key version on the token.
#[derive(Debug, Clone)]
struct Kek {
    handle: ObjectHandle,
    key_id: KeyId,
}

/// The PKCS#11 KMS.
pub struct Pkcs11Kms {
    ctx: Pkcs11,
    slot: Slot,
    config: Pkcs11Config,
    /// Master key versions, oldest first.
    keks: Mutex<Vec<Kek>>,
    sessions: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for Pkcs11Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Kms")
            .field("key_id", &self.master_key_id())
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

/// Label of master key version `version`: the configured label for 1,
/// `LABEL.vN` after.
fn version_label(label: &str, version: u32) -> String {
    if version == 1 {
        label.to_owned()
    } else {
        format!("{label}.v{version}")
    }
}

fn key_id(config: &Pkcs11Config, label: &str) -> Result<KeyId, KmsError> {
    KeyId::new(format!("pkcs11:{}/{label}", config.token_label))
        .ok_or_else(|| KmsError::Refused("empty key id".into()))
}

/// Creates an AES-256 token key: sensitive, never extractable, usable only
/// to wrap and unwrap. Refused when a key with that label exists.
fn create_key(session: &Session, label: &str) -> Result<ObjectHandle, KmsError> {
    if find_key(session, label)?.is_some() {
        return Err(KmsError::Refused(format!(
            "a key labelled {label:?} already exists"
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
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .map_err(unavailable)
}

fn bind_tag(key: &DataKey, key_id: &KeyId, ctx: &KeyContext) -> [u8; TAG_LEN] {
    key.hmac_sha256(&[BIND_INFO, key_id.as_str().as_bytes(), &[0], &ctx.to_bytes()])
}

/// A session object, destroyed when dropped.
struct TempKey<'a> {
    session: &'a Session,
    handle: ObjectHandle,
}

impl Drop for TempKey<'_> {
    fn drop(&mut self) {
        let _ = self.session.destroy_object(self.handle);
    }
}

impl Pkcs11Kms {
    /// Opens the HSM and finds the KEK versions by label; refused when the
    /// first is missing.
    pub fn open(config: &Pkcs11Config) -> Result<Self, KmsError> {
        let (ctx, slot, session) = open_token(config)?;
        let mut keks = Vec::new();
        for version in 1u32.. {
            let label = version_label(&config.key_label, version);
            match find_key(&session, &label)? {
                Some(handle) => keks.push(Kek {
                    handle,
                    key_id: key_id(config, &label)?,
                }),
                None => break,
            }
        }
        if keks.is_empty() {
            return Err(KmsError::Refused(format!(
                "no key labelled {:?} on token {:?}; create it with `tessera hsm create-kek`",
                config.key_label, config.token_label
            )));
        }
        Ok(Self {
            ctx,
            slot,
            config: config.clone(),
            keks: Mutex::new(keks),
            sessions: Mutex::new(vec![session]),
        })
    }

    /// Creates the first KEK on the token.
    pub fn create_kek(config: &Pkcs11Config) -> Result<(), KmsError> {
        let (_ctx, _slot, session) = open_token(config)?;
        create_key(&session, &config.key_label).map(|_| ())
    }

    fn keks(&self) -> std::sync::MutexGuard<'_, Vec<Kek>> {
        self.keks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(&self) -> Result<(u32, Kek), KmsError> {
        let keks = self.keks();
        let kek = keks.last().cloned().ok_or(KmsError::Unwrap)?;
        Ok((u32::try_from(keks.len()).unwrap_or(u32::MAX), kek))
    }

    fn version(&self, version: u32) -> Result<Kek, KmsError> {
        let index = usize::try_from(version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .ok_or(KmsError::Unwrap)?;
        self.keks().get(index).cloned().ok_or(KmsError::Unwrap)
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

    /// Wraps `key` under the current KEK.
    fn wrap(
        &self,
        session: &Session,
        key: &DataKey,
        ctx: &KeyContext,
    ) -> Result<WrappedKey, KmsError> {
        let (version, kek) = self.current()?;
        let handle = session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Value(key.expose_secret().to_vec()),
            ])
            .map_err(unavailable)?;
        let temp = TempKey { session, handle };
        let wrapped = session
            .wrap_key(&Mechanism::AesKeyWrapPad, kek.handle, temp.handle)
            .map_err(unavailable)?;
        drop(temp);
        let mut w = Writer::new();
        w.u8(BLOB_V1)
            .u32(version)
            .bytes(&wrapped)
            .fixed(&bind_tag(key, &kek.key_id, ctx));
        WrappedKey::new(w.finish()).ok_or(KmsError::Unwrap)
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
            let wrapped = self.wrap(session, &key, ctx)?;
            Ok((key, wrapped))
        })
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &KeyContext,
    ) -> Result<DataKey, KmsError> {
        let mut r = Reader::new(wrapped.as_bytes());
        let (version, kwp, tag) = (|| {
            if r.u8().ok()? != BLOB_V1 {
                return None;
            }
            let version = r.u32().ok()?;
            let kwp = r.bytes().ok()?;
            let tag = r.fixed(TAG_LEN).ok()?;
            r.end().ok()?;
            Some((version, kwp, tag))
        })()
        .ok_or(KmsError::Unwrap)?;
        let kek = self.version(version)?;
        let key = self.with_session(|session| {
            let handle = session
                .unwrap_key(
                    &Mechanism::AesKeyWrapPad,
                    kek.handle,
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
        if !bool::from(bind_tag(&key, &kek.key_id, ctx).as_slice().ct_eq(tag)) {
            return Err(KmsError::Unwrap);
        }
        Ok(key)
    }

    async fn wrap_data_key(&self, key: &DataKey, ctx: &KeyContext) -> Result<WrappedKey, KmsError> {
        self.with_session(|session| self.wrap(session, key, ctx))
    }

    async fn rotate_master_key(&self) -> Result<KeyId, KmsError> {
        let (version, _) = self.current()?;
        let label = version_label(&self.config.key_label, version + 1);
        let handle = self.with_session(|session| create_key(session, &label))?;
        let kek = Kek {
            handle,
            key_id: key_id(&self.config, &label)?,
        };
        let id = kek.key_id.clone();
        self.keks().push(kek);
        Ok(id)
    }

    fn master_key_id(&self) -> Option<KeyId> {
        self.keks().last().map(|k| k.key_id.clone())
    }

    fn master_key_version(&self) -> Option<u32> {
        u32::try_from(self.keks().len()).ok()
    }

    fn backend_name(&self) -> &'static str {
        "pkcs11"
    }

    fn is_production_grade(&self) -> bool {
        true
    }
}
