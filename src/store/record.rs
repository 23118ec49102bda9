//! Persisted record types and their byte encodings (format version 1).
//!
//! These are all the store ever holds: sealed PAN bytes, keyed-hash ids and
//! fingerprints, public facts, and wrapped keys. Never a PAN, a token, or an
//! unwrapped key.

use std::collections::BTreeMap;

use crate::codec::{DecodeError, Reader, Writer};
use crate::domain::key::{KeyContext, KeyId, KeyPurpose, WrappedKey};
use crate::domain::token::{FINGERPRINT_LEN, TOKEN_ID_LEN};
use crate::domain::{CardBrand, Fingerprint, MaskedPan, TenantId, TokenId};

const RECORD_V1: u8 = 1;
const TOMBSTONE_V1: u8 = 1;
const KEY_V1: u8 = 1;

/// Facts about a token that any role with `read_info` may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicFacts {
    /// At most first six and last four digits.
    pub masked_pan: MaskedPan,
    /// Brand of the PAN.
    pub brand: CardBrand,
    /// Issue time, milliseconds since the Unix epoch (UTC).
    pub created_at_ms: u64,
    /// Expiry, milliseconds since the Unix epoch; `None` = never.
    pub expires_at_ms: Option<u64>,
    /// The first detokenize consumes the token.
    pub single_use: bool,
    /// Caller-supplied, non-sensitive metadata.
    pub metadata: BTreeMap<String, String>,
}

/// One token's record as appended: written once, never changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    /// Keyed hash of the token.
    pub token_id: TokenId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// Set for deterministic tokens only: the live-token index key.
    pub fingerprint: Option<Fingerprint>,
    /// Public facts.
    pub facts: PublicFacts,
    /// The PAN, sealed by `envelope::seal`.
    pub sealed_pan: Vec<u8>,
}

/// Why a record stopped being live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TombstoneReason {
    /// DeleteToken.
    Deleted,
    /// A single-use token was redeemed.
    Consumed,
    /// The TTL passed (written lazily when noticed).
    Expired,
}

/// Marks a record dead. At most one per record, never removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// Why.
    pub reason: TombstoneReason,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A record with its tombstone, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record.
    pub record: SealedRecord,
    /// Present once the record is dead.
    pub tombstone: Option<Tombstone>,
    /// How many times the PAN was re-sealed (0 = as appended); the record's
    /// `sealed_pan` is the newest version.
    pub seal_version: u32,
}

/// A data key, wrapped, as kept in the store's key table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKeyRecord {
    /// Tenant, purpose, version.
    pub context: KeyContext,
    /// Which master key wrapped it.
    pub master_key_id: KeyId,
    /// The wrapped bytes.
    pub wrapped: WrappedKey,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl SealedRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(RECORD_V1)
            .str(self.tenant.as_str())
            .fixed(self.token_id.as_bytes());
        match &self.fingerprint {
            Some(fp) => w.u8(1).fixed(fp.as_bytes()),
            None => w.u8(0),
        };
        let f = &self.facts;
        w.u8(f.brand.code())
            .str(f.masked_pan.as_str())
            .u64(f.created_at_ms);
        match f.expires_at_ms {
            Some(at) => w.u8(1).u64(at),
            None => w.u8(0),
        };
        w.u8(u8::from(f.single_use));
        w.u32(u32::try_from(f.metadata.len()).unwrap_or(0));
        for (k, v) in &f.metadata {
            w.str(k).str(v);
        }
        w.bytes(&self.sealed_pan);
        w.finish()
    }

    /// Decodes a record; any malformation is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let bad = |offset| DecodeError { offset };
        if r.u8()? != RECORD_V1 {
            return Err(bad(0));
        }
        let tenant = TenantId::from_stored(r.str()?).map_err(|_| bad(1))?;
        let token_id = TokenId::from_slice(r.fixed(TOKEN_ID_LEN)?).ok_or(bad(1))?;
        let fingerprint = if r.bool()? {
            Some(Fingerprint::from_slice(r.fixed(FINGERPRINT_LEN)?).ok_or(bad(1))?)
        } else {
            None
        };
        let brand = CardBrand::from_code(r.u8()?);
        let masked_pan = MaskedPan::from_stored(r.str()?.to_owned()).ok_or(bad(1))?;
        let created_at_ms = r.u64()?;
        let expires_at_ms = if r.bool()? { Some(r.u64()?) } else { None };
        let single_use = r.bool()?;
        let count = r.u32()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..count {
            let k = r.str()?.to_owned();
            let v = r.str()?.to_owned();
            metadata.insert(k, v);
        }
        let sealed_pan = r.bytes()?.to_vec();
        r.end()?;
        Ok(Self {
            token_id,
            tenant,
            fingerprint,
            facts: PublicFacts {
                masked_pan,
                brand,
                created_at_ms,
                expires_at_ms,
                single_use,
                metadata,
            },
            sealed_pan,
        })
    }
}

impl Tombstone {
    /// Encodes the tombstone.
    pub fn encode(&self) -> Vec<u8> {
        let reason = match self.reason {
            TombstoneReason::Deleted => 1,
            TombstoneReason::Consumed => 2,
            TombstoneReason::Expired => 3,
        };
        let mut w = Writer::new();
        w.u8(TOMBSTONE_V1).u8(reason).u64(self.at_ms);
        w.finish()
    }

    /// Decodes a tombstone.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8()? != TOMBSTONE_V1 {
            return Err(DecodeError { offset: 0 });
        }
        let reason = match r.u8()? {
            1 => TombstoneReason::Deleted,
            2 => TombstoneReason::Consumed,
            3 => TombstoneReason::Expired,
            _ => return Err(DecodeError { offset: 1 }),
        };
        let at_ms = r.u64()?;
        r.end()?;
        Ok(Self { reason, at_ms })
    }
}

impl WrappedKeyRecord {
    /// The store key: `tenant ‖ 0x00 ‖ purpose ‖ version`, so one tenant's
    /// keys sort together and in version order.
    pub fn store_key(ctx: &KeyContext) -> Vec<u8> {
        let mut k = tenant_prefix(&ctx.tenant);
        k.push(ctx.purpose.code());
        k.extend_from_slice(&ctx.version.to_be_bytes());
        k
    }

    /// Encodes the key record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(KEY_V1)
            .str(self.context.tenant.as_str())
            .u8(self.context.purpose.code())
            .u32(self.context.version)
            .str(self.master_key_id.as_str())
            .bytes(self.wrapped.as_bytes())
            .u64(self.created_at_ms);
        w.finish()
    }

    /// Decodes a key record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let bad = |offset| DecodeError { offset };
        if r.u8()? != KEY_V1 {
            return Err(bad(0));
        }
        let tenant = TenantId::from_stored(r.str()?).map_err(|_| bad(1))?;
        let purpose = KeyPurpose::from_code(r.u8()?).ok_or(bad(1))?;
        let version = r.u32()?;
        let master_key_id = KeyId::new(r.str()?).ok_or(bad(1))?;
        let wrapped = WrappedKey::new(r.bytes()?.to_vec()).ok_or(bad(1))?;
        let created_at_ms = r.u64()?;
        r.end()?;
        Ok(Self {
            context: KeyContext {
                tenant,
                purpose,
                version,
            },
            master_key_id,
            wrapped,
            created_at_ms,
        })
    }
}

/// `tenant ‖ 0x00`: a prefix no other tenant's keys share (tenant ids never
/// contain 0x00).
pub fn tenant_prefix(tenant: &TenantId) -> Vec<u8> {
    let mut k = tenant.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// The key of a record's seal version: `token id ‖ version (BE)`.
pub(crate) fn version_key(id: &TokenId, version: u32) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// A stored seal version number.
pub(crate) fn decode_u32(bytes: &[u8]) -> Result<u32, crate::store::StoreError> {
    let array: [u8; 4] = bytes
        .try_into()
        .map_err(|_| crate::store::StoreError::Damaged("corrupt seal version"))?;
    Ok(u32::from_be_bytes(array))
}

/// The fingerprint index key: `tenant ‖ 0x00 ‖ fingerprint`.
pub fn fingerprint_key(tenant: &TenantId, fp: &Fingerprint) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.extend_from_slice(fp.as_bytes());
    k
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record for tests of other modules.
    pub(crate) fn sample() -> SealedRecord {
        SealedRecord {
            token_id: TokenId::from_bytes([1; 32]),
            tenant: TenantId::new("default").unwrap(),
            fingerprint: Some(Fingerprint::from_bytes([2; 32])),
            facts: PublicFacts {
                masked_pan: MaskedPan::from_stored("411111******1111".into()).unwrap(),
                brand: CardBrand::Visa,
                created_at_ms: 1_700_000_000_000,
                expires_at_ms: Some(1_700_000_060_000),
                single_use: true,
                metadata: [("order".to_owned(), "42".to_owned())].into(),
            },
            sealed_pan: vec![9; 48],
        }
    }

    #[test]
    fn record_round_trip_and_truncation() {
        let rec = sample();
        let bytes = rec.encode();
        assert_eq!(SealedRecord::decode(&bytes).unwrap(), rec);
        for cut in 0..bytes.len() {
            assert!(SealedRecord::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = bytes;
        longer.push(0);
        assert!(SealedRecord::decode(&longer).is_err());
    }

    #[test]
    fn tombstone_and_key_round_trip() {
        let t = Tombstone {
            reason: TombstoneReason::Consumed,
            at_ms: 5,
        };
        assert_eq!(Tombstone::decode(&t.encode()).unwrap(), t);
        let k = WrappedKeyRecord {
            context: KeyContext {
                tenant: TenantId::new("a").unwrap(),
                purpose: KeyPurpose::Data,
                version: 3,
            },
            master_key_id: KeyId::new("dev:1").unwrap(),
            wrapped: WrappedKey::new(vec![1, 2, 3]).unwrap(),
            created_at_ms: 9,
        };
        assert_eq!(WrappedKeyRecord::decode(&k.encode()).unwrap(), k);
    }
}
