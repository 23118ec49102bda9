//! The hash chain: each event carries the hash of the one before it, so an
//! edited, deleted, inserted or reordered event breaks every hash after it.
//!
//! `hash(n) = SHA-256("tessera/audit/v1" ‖ seq ‖ prev ‖ encode(event))`, with
//! `prev` of the first event all zeros. The newest hash is signed
//! (`HMAC-SHA256(audit key, "tessera/audit/head/v1" ‖ seq ‖ hash)`) so the
//! chain cannot be recomputed or truncated by someone without the key.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::AuditEvent;
use crate::codec::{DecodeError, Reader, Writer};
use crate::secret::DataKey;

const HASH_DOMAIN: &[u8] = b"tessera/audit/v1";
const HEAD_DOMAIN: &[u8] = b"tessera/audit/head/v1";
const RECORD_V1: u8 = 1;

/// A SHA-256 chain hash.
pub type ChainHash = [u8; 32];

/// One event as stored: its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedEvent {
    /// Position, from 0.
    pub seq: u64,
    /// The event.
    pub event: AuditEvent,
    /// Hash of the previous event (zeros for the first).
    pub prev: ChainHash,
    /// This event's hash.
    pub hash: ChainHash,
}

fn encode_event(w: &mut Writer, e: &AuditEvent) {
    w.u64(e.time_ms)
        .str(&e.request_id)
        .str(&e.principal)
        .str(&e.tenant)
        .str(&e.action)
        .str(&e.resource)
        .str(&e.outcome)
        .str(&e.origin);
}

fn decode_event(r: &mut Reader<'_>) -> Result<AuditEvent, DecodeError> {
    Ok(AuditEvent {
        time_ms: r.u64()?,
        request_id: r.str()?.to_owned(),
        principal: r.str()?.to_owned(),
        tenant: r.str()?.to_owned(),
        action: r.str()?.to_owned(),
        resource: r.str()?.to_owned(),
        outcome: r.str()?.to_owned(),
        origin: r.str()?.to_owned(),
    })
}

/// The hash of `event` at `seq` after `prev`.
pub fn hash_event(seq: u64, prev: &ChainHash, event: &AuditEvent) -> ChainHash {
    let mut w = Writer::new();
    encode_event(&mut w, event);
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(w.finish());
    h.finalize().into()
}

impl ChainedEvent {
    /// Chains `event` after `prev` at `seq`.
    pub fn new(seq: u64, prev: ChainHash, event: AuditEvent) -> Self {
        let hash = hash_event(seq, &prev, &event);
        Self {
            seq,
            event,
            prev,
            hash,
        }
    }

    /// Encodes the stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(RECORD_V1)
            .u64(self.seq)
            .fixed(&self.prev)
            .fixed(&self.hash);
        encode_event(&mut w, &self.event);
        w.finish()
    }

    /// Decodes the stored form (hashes are not checked here; see `verify`).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8()? != RECORD_V1 {
            return Err(DecodeError { offset: 0 });
        }
        let seq = r.u64()?;
        let prev = r.array()?;
        let hash = r.array()?;
        let event = decode_event(&mut r)?;
        r.end()?;
        Ok(Self {
            seq,
            event,
            prev,
            hash,
        })
    }
}

/// The signed chain head: the newest event's position and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    /// Position of the newest signed event.
    pub seq: u64,
    /// Its hash.
    pub hash: ChainHash,
    /// HMAC-SHA256 over both with the audit key.
    pub mac: [u8; 32],
}

fn head_mac(key: &DataKey, seq: u64, hash: &ChainHash) -> [u8; 32] {
    key.hmac_sha256(&[HEAD_DOMAIN, &seq.to_be_bytes(), hash])
}

impl SignedHead {
    /// Signs the head at `seq` with `hash`.
    pub fn sign(key: &DataKey, seq: u64, hash: ChainHash) -> Self {
        Self {
            seq,
            hash,
            mac: head_mac(key, seq, &hash),
        }
    }

    /// Whether the signature is the audit key's.
    pub fn is_valid(&self, key: &DataKey) -> bool {
        head_mac(key, self.seq, &self.hash).ct_eq(&self.mac).into()
    }

    /// Encodes the stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(RECORD_V1)
            .u64(self.seq)
            .fixed(&self.hash)
            .fixed(&self.mac);
        w.finish()
    }

    /// Decodes the stored form.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8()? != RECORD_V1 {
            return Err(DecodeError { offset: 0 });
        }
        let seq = r.u64()?;
        let hash = r.array()?;
        let mac = r.array()?;
        r.end()?;
        Ok(Self { seq, hash, mac })
    }
}
