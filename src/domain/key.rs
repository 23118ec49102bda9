//! The names of keys, shared by the KMS (which wraps and unwraps them) and
//! the store (which keeps them wrapped): a key's address (tenant, purpose,
//! version), a master key's id and a wrapped key's opaque bytes. They live
//! here, not in `kms`, so the store depends on no KMS type.

use std::fmt;

use crate::domain::TenantId;

/// What a data key is for. Part of the wrap context, so a wrapped key of one
/// purpose cannot be substituted for another (PCI DSS 3.7.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPurpose {
    /// Seals records. Versioned; rotates.
    Data,
    /// The tenant's index key: HKDF-derives the fingerprint, token-id and FF1
    /// keys. One per tenant, never rotated by a DEK rotation, because tokens
    /// and fingerprints must keep resolving.
    Index,
}

impl KeyPurpose {
    /// Stable one-byte code for storage and wrap contexts.
    pub fn code(self) -> u8 {
        match self {
            Self::Data => 1,
            Self::Index => 2,
        }
    }

    /// Inverse of [`KeyPurpose::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Data),
            2 => Some(Self::Index),
            _ => None,
        }
    }
}

/// Names one data key: tenant, purpose and version. Bound into every wrap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyContext {
    /// Owning tenant.
    pub tenant: TenantId,
    /// What the key is for.
    pub purpose: KeyPurpose,
    /// Version within (tenant, purpose), from 1.
    pub version: u32,
}

impl KeyContext {
    /// Canonical bytes: `purpose ‖ version (BE) ‖ tenant`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.tenant.as_str().len());
        out.push(self.purpose.code());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(self.tenant.as_str().as_bytes());
        out
    }
}

/// Identifies a master key (and its version) inside a KMS. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Wraps a non-empty id.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        (!id.is_empty()).then_some(Self(id))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A data key encrypted under a master key. Opaque outside its KMS; never
/// empty. Safe to store: it reveals nothing without the KMS.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// Wraps non-empty bytes.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (!bytes.is_empty()).then_some(Self(bytes))
    }

    /// The wrapped bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey(<{} bytes>)", self.0.len())
    }
}
