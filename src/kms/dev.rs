//! The development KMS: a master key in a local file.
//!
//! Convenient and insecure by design: whoever reads the file reads every
//! PAN. It is auto-created under the data dir and refuses to open outside the
//! dev profile (`tessera serve --dev`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::config::Profile;
use crate::kms::soft::{SoftwareKek, SoftwareKeyring};
use crate::kms::{KeyContext, KeyId, Kms, KmsError, WrappedKey};
use crate::secret::DataKey;

/// Domain separation for dev-KMS wraps.
const WRAP_DOMAIN: &[u8] = b"tessera/kms/dev/v1";

/// A file-backed master key for development: one hex key per line, one
/// line per master key version, the last one current.
pub struct DevKms {
    keyring: Mutex<SoftwareKeyring>,
    path: PathBuf,
}

impl std::fmt::Debug for DevKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKms")
            .field("key_id", &self.master_key_id())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DevKms {
    /// Opens the key file at `path`, creating it (mode 0600) when missing.
    /// Refused unless `profile` is [`Profile::Dev`].
    pub fn open_or_create(path: &Path, profile: Profile) -> Result<Self, KmsError> {
        if profile != Profile::Dev {
            return Err(KmsError::Refused(
                "the dev KMS keeps its master key in a plain file; it runs only with --dev".into(),
            ));
        }
        let keys = match fs::read(path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                let mut keys = Vec::new();
                for line in text
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.trim_ascii().is_empty())
                {
                    let bytes =
                        Zeroizing::new(hex::decode(line.trim_ascii()).map_err(|_| {
                            KmsError::Refused("dev master key file is not hex".into())
                        })?);
                    keys.push(DataKey::from_slice(&bytes).ok_or_else(|| {
                        KmsError::Refused("dev master key file must hold 32-byte keys".into())
                    })?);
                }
                keys
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = DataKey::generate()?;
                crate::private_file::replace(path, hex::encode(key.expose_secret()).as_bytes())?;
                vec![key]
            }
            Err(e) => return Err(KmsError::Io(e)),
        };
        let versions = keys
            .into_iter()
            .map(|k| SoftwareKek::new(k, "dev", WRAP_DOMAIN))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keyring: Mutex::new(SoftwareKeyring::new(versions)?),
            path: path.to_owned(),
        })
    }

    fn keyring(&self) -> std::sync::MutexGuard<'_, SoftwareKeyring> {
        self.keyring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Kms for DevKms {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<(DataKey, WrappedKey), KmsError> {
        self.keyring().generate(ctx)
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedKey,
        ctx: &KeyContext,
    ) -> Result<DataKey, KmsError> {
        self.keyring().unwrap(wrapped, ctx)
    }

    async fn wrap_data_key(&self, key: &DataKey, ctx: &KeyContext) -> Result<WrappedKey, KmsError> {
        self.keyring().wrap(key, ctx)
    }

    async fn rotate_master_key(&self) -> Result<KeyId, KmsError> {
        let mut keyring = self.keyring();
        let existing = Zeroizing::new(fs::read(&self.path)?);
        let key = DataKey::generate()?;
        let mut contents = Zeroizing::new(existing.trim_ascii_end().to_vec());
        contents.push(b'\n');
        contents.extend_from_slice(hex::encode(key.expose_secret()).as_bytes());
        contents.push(b'\n');
        crate::private_file::replace(&self.path, &contents)?;
        keyring.push(SoftwareKek::new(key, "dev", WRAP_DOMAIN)?);
        keyring.key_id().cloned().ok_or(KmsError::Unwrap)
    }

    fn master_key_id(&self) -> Option<KeyId> {
        self.keyring().key_id().cloned()
    }

    fn master_key_version(&self) -> Option<u32> {
        Some(self.keyring().current_version())
    }

    fn backend_name(&self) -> &'static str {
        "dev"
    }

    fn is_production_grade(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;
    use crate::kms::KeyPurpose;

    fn ctx(tenant: &str, purpose: KeyPurpose, version: u32) -> KeyContext {
        KeyContext {
            tenant: TenantId::new(tenant).unwrap(),
            purpose,
            version,
        }
    }

    #[test]
    fn refused_outside_dev() {
        let dir = tempfile::tempdir().unwrap();
        let err = DevKms::open_or_create(&dir.path().join("k"), Profile::Production).unwrap_err();
        assert!(matches!(err, KmsError::Refused(_)));
        assert!(!dir.path().join("k").exists());
    }

    #[tokio::test]
    async fn wrap_round_trip_survives_reopen_and_binds_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev-master.key");
        let kms = DevKms::open_or_create(&path, Profile::Dev).unwrap();
        assert!(!kms.is_production_grade());
        let c = ctx("default", KeyPurpose::Data, 1);
        let (key, wrapped) = kms.generate_data_key(&c).await.unwrap();

        let reopened = DevKms::open_or_create(&path, Profile::Dev).unwrap();
        assert_eq!(reopened.master_key_id(), kms.master_key_id());
        assert!(kms.master_key_id().unwrap().as_str().starts_with("dev:"));
        let unwrapped = reopened.unwrap_data_key(&wrapped, &c).await.unwrap();
        assert_eq!(unwrapped.expose_secret(), key.expose_secret());

        for wrong in [
            ctx("other", KeyPurpose::Data, 1),
            ctx("default", KeyPurpose::Index, 1),
            ctx("default", KeyPurpose::Data, 2),
        ] {
            assert!(matches!(
                kms.unwrap_data_key(&wrapped, &wrong).await,
                Err(KmsError::Unwrap)
            ));
        }
        let mut tampered = wrapped.as_bytes().to_vec();
        tampered[20] ^= 1;
        let tampered = WrappedKey::new(tampered).unwrap();
        assert!(matches!(
            kms.unwrap_data_key(&tampered, &c).await,
            Err(KmsError::Unwrap)
        ));

        let other_dir = tempfile::tempdir().unwrap();
        let other = DevKms::open_or_create(&other_dir.path().join("k"), Profile::Dev).unwrap();
        assert!(matches!(
            other.unwrap_data_key(&wrapped, &c).await,
            Err(KmsError::Unwrap)
        ));
    }

    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        DevKms::open_or_create(&path, Profile::Dev).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
