//! Shared state: the small, changing facts that replicas of one vault must
//! agree on (principals added at run time, pending approvals, admin
//! sessions, lockouts and anomaly locks, and signals such as "keys
//! rotated").
//!
//! Each entry is a `(kind, key)` with opaque bytes, written only by a
//! conditional put ([`Expect`]), so two replicas never both win one
//! transition (one approval executes once; one lock is taken once). Every
//! put, deletes included, takes the next number of one store-wide change
//! sequence; a replica keeps caches of what it reads and polls
//! [`StateStore::state_changes`] to refresh them, which bounds how long a
//! change on one replica stays unseen on another. Changes are numbered in
//! commit order: a poller that has seen change `n` has seen every change
//! before it.
//!
//! Unlike records and audit events, entries are overwritten and deleted:
//! they hold no card data and no keys (sessions and credentials are stored
//! as hashes), and their history is in the audit log.

use async_trait::async_trait;

use crate::store::{Engine, StoreError};

/// What a shared entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum StateKind {
    /// A principal added or revoked at run time, by name.
    Principal,
    /// A pending dual-control request, by id.
    Approval,
    /// An open admin session, by id.
    Session,
    /// A failed-authentication count or lockout, or an anomaly lock.
    Lock,
    /// A fact other replicas must act on (for example: keys rotated, drop
    /// the cached current versions).
    Signal,
    /// An approved export's grant, by approval id.
    Export,
}

impl StateKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [
        Self::Principal,
        Self::Approval,
        Self::Session,
        Self::Lock,
        Self::Signal,
        Self::Export,
    ];

    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Principal => "principal",
            Self::Approval => "approval",
            Self::Session => "session",
            Self::Lock => "lock",
            Self::Signal => "signal",
            Self::Export => "export",
        }
    }

    /// The kind of a stored name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A live entry: its bytes and the change that wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The number of the change that wrote it.
    pub version: u64,
    /// What it holds.
    pub value: Vec<u8>,
}

/// One change, as pollers see it: the newest change of each entry only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// Its number.
    pub version: u64,
    /// Which entry.
    pub kind: StateKind,
    /// Which entry.
    pub key: String,
    /// Whether it deleted the entry.
    pub deleted: bool,
}

/// What a conditional put expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No live entry (never written, or deleted).
    Absent,
    /// The live entry written by this change.
    Version(u64),
    /// Whatever is there.
    Any,
}

impl Expect {
    /// Whether an entry at `found` (its version when live) is as expected.
    pub fn holds(self, found: Option<u64>) -> bool {
        match self {
            Self::Absent => found.is_none(),
            Self::Version(v) => found == Some(v),
            Self::Any => true,
        }
    }
}

/// Most bytes one key may have: keys are ids and names, never documents.
pub const MAX_KEY_LEN: usize = 256;

/// Shared entries. Contract checked by `tests/store_conformance/state.rs`;
/// every put is durable on return.
#[async_trait]
pub trait StateStore: Engine {
    /// The live entry `(kind, key)`, if any.
    async fn state(&self, kind: StateKind, key: &str) -> Result<Option<StateEntry>, StoreError>;

    /// Every live entry of `kind`, by key.
    async fn states(&self, kind: StateKind) -> Result<Vec<(String, StateEntry)>, StoreError>;

    /// Writes `value` to `(kind, key)`, or deletes it when `None`, if the
    /// entry is as `expect`s; otherwise nothing is written and the error is
    /// [`StoreError::Conflict`]. Returns the change's number, greater than
    /// every change before it.
    async fn put_state(
        &self,
        kind: StateKind,
        key: &str,
        value: Option<Vec<u8>>,
        expect: Expect,
    ) -> Result<u64, StoreError>;

    /// Changes numbered after `since`, oldest first, at most `limit`.
    async fn state_changes(&self, since: u64, limit: usize)
    -> Result<Vec<StateChange>, StoreError>;
}

/// Refuses a key longer than [`MAX_KEY_LEN`] or holding a NUL (the
/// embedded stores separate kind and key with one).
pub fn check_key(key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_LEN || key.contains('\0') {
        return Err(StoreError::Damaged("state key too long or not text"));
    }
    Ok(())
}

/// How the embedded stores (sled, fjall) lay shared entries out in two
/// ordered maps: `state` (entry key → newest change) and `state_log`
/// (change number → entry key, the newest change of each entry only).
pub(crate) mod layout {
    use super::StateKind;
    use crate::store::StoreError;

    /// The key of the change counter in `state` (no kind name starts with
    /// 0xff).
    pub(crate) const COUNTER: &[u8] = b"\xffversion";

    /// `kind ‖ 0 ‖ key`.
    pub(crate) fn entry_key(kind: StateKind, key: &str) -> Vec<u8> {
        let mut out = kind_prefix(kind);
        out.extend_from_slice(key.as_bytes());
        out
    }

    /// `kind ‖ 0`: every entry of a kind.
    pub(crate) fn kind_prefix(kind: StateKind) -> Vec<u8> {
        let mut out = kind.name().as_bytes().to_vec();
        out.push(0);
        out
    }

    /// The kind and key of an entry key.
    pub(crate) fn parse_entry_key(bytes: &[u8]) -> Result<(StateKind, String), StoreError> {
        let damaged = || StoreError::Damaged("corrupt state key");
        let split = bytes.iter().position(|b| *b == 0).ok_or_else(damaged)?;
        let kind = std::str::from_utf8(&bytes[..split])
            .ok()
            .and_then(StateKind::from_name)
            .ok_or_else(damaged)?;
        let key = std::str::from_utf8(&bytes[split + 1..]).map_err(|_| damaged())?;
        Ok((kind, key.to_owned()))
    }

    /// `version ‖ 1 ‖ value`, or `version ‖ 0` for a deletion.
    pub(crate) fn encode_value(version: u64, value: Option<&[u8]>) -> Vec<u8> {
        let mut out = version.to_be_bytes().to_vec();
        match value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
        out
    }

    /// The version and (when live) the value of a stored entry.
    pub(crate) fn decode_value(bytes: &[u8]) -> Result<(u64, Option<&[u8]>), StoreError> {
        let damaged = || StoreError::Damaged("corrupt state entry");
        let version = decode_version(bytes.get(..8).ok_or_else(damaged)?)?;
        match bytes.get(8) {
            Some(1) => Ok((version, Some(&bytes[9..]))),
            Some(0) if bytes.len() == 9 => Ok((version, None)),
            _ => Err(damaged()),
        }
    }

    /// The live entry a stored `(key, bytes)` pair holds, if live.
    pub(crate) fn live(
        key: &[u8],
        bytes: &[u8],
    ) -> Result<Option<(String, super::StateEntry)>, StoreError> {
        let (_, name) = parse_entry_key(key)?;
        Ok(match decode_value(bytes)? {
            (version, Some(value)) => Some((
                name,
                super::StateEntry {
                    version,
                    value: value.to_vec(),
                },
            )),
            (_, None) => None,
        })
    }

    /// The change a `state_log` pair names, given the entry's current bytes.
    pub(crate) fn change(
        number: &[u8],
        entry: &[u8],
        current: Option<&[u8]>,
    ) -> Result<super::StateChange, StoreError> {
        let (kind, key) = parse_entry_key(entry)?;
        let deleted = match current {
            Some(bytes) => decode_value(bytes)?.1.is_none(),
            None => true,
        };
        Ok(super::StateChange {
            version: decode_version(number)?,
            kind,
            key,
            deleted,
        })
    }

    /// What a conditional put writes, decided from the entry's and the
    /// counter's stored bytes: the new change number, and the entry's
    /// previous number to drop from `state_log`.
    pub(crate) struct Put {
        pub(crate) version: u64,
        pub(crate) replaced: Option<u64>,
    }

    /// Checks `expect` against the entry's stored bytes (`old`) and takes
    /// the next number from the counter's (`counter`); `Conflict` when the
    /// entry is not as expected.
    pub(crate) fn plan_put(
        old: Option<&[u8]>,
        counter: Option<&[u8]>,
        expect: super::Expect,
    ) -> Result<Put, StoreError> {
        let old = old.map(decode_value).transpose()?;
        if !expect.holds(old.and_then(|(version, live)| live.map(|_| version))) {
            return Err(StoreError::Conflict);
        }
        let counter = counter.map(decode_version).transpose()?.unwrap_or(0);
        Ok(Put {
            version: counter.saturating_add(1),
            replaced: old.map(|(version, _)| version),
        })
    }

    /// A big-endian change number.
    pub(crate) fn decode_version(bytes: &[u8]) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| {
            StoreError::Damaged("corrupt state version")
        })?))
    }
}
