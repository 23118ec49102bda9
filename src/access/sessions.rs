//! Admin sessions: one TOTP code opens a short-lived session for a key
//! ceremony (status, rotate, re-encrypt, status) instead of one code, and
//! so up to a 30 s wait, per call (DESIGN.md §5).
//!
//! - A session is `tss_<id>_<secret>` (64 random bits of id, 256 of
//!   secret), shown once; the vault keeps the secret's SHA-256 only and
//!   compares in constant time.
//! - It is bound to the principal that opened it: it stands in for the
//!   second factor only next to that principal's API key or certificate.
//! - It lasts `access.session_minutes` (default 15 minutes), can be deleted
//!   (logout) and dies with its principal's revocation. A session never
//!   opens another one, so its life is bounded by the code that opened it.
//! - Sessions live in the store's shared state (sealed), so a session
//!   opened on one replica works on the others and survives a restart.
//!   Each call carrying a session reads that session from the store first
//!   ([`Sessions::load`]), so a logout or a revocation on one replica
//!   holds on every other at once. At most [`MAX_PER_PRINCIPAL`] per
//!   principal (the oldest gives way) and [`MAX_SESSIONS`] in all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::csprng::{self, RngError};
use crate::secret::SecretString;
use crate::shared::{Shared, SharedError};
use crate::store::{Expect, StateKind, StoreError};

/// Header carrying a session.
pub const SESSION_HEADER: &str = "x-tessera-session";
/// Default session lifetime.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(15 * 60);
/// Most sessions of one principal.
pub const MAX_PER_PRINCIPAL: usize = 8;
/// Most sessions in all.
pub const MAX_SESSIONS: usize = 10_000;

const PREFIX: &str = "tss_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A session could not be opened or closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The vault holds [`MAX_SESSIONS`].
    #[error("too many open sessions; retry later")]
    TooMany,
    /// No randomness.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// The shared store failed.
    #[error("sessions are unavailable: {0}")]
    Store(String),
}

impl From<SharedError> for SessionError {
    fn from(e: SharedError) -> Self {
        Self::Store(e.to_string())
    }
}

/// A newly opened session.
pub struct OpenedSession {
    /// The token, to hand to the caller once.
    pub token: SecretString,
    /// Its public id, for the audit log.
    pub id: String,
    /// How long it lasts.
    pub ttl: Duration,
}

/// A session as kept: in memory and, sealed, in shared state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Session {
    /// SHA-256 of the secret, hex.
    secret_hash: String,
    principal: String,
    /// When it was opened, in nanoseconds, unique in this process: the
    /// oldest gives way first, and two opened in one millisecond are still
    /// in order.
    opened_ns: u64,
    expires_ms: u64,
}

/// The open sessions: this replica's view, and the shared store.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    open: Mutex<HashMap<String, Session>>,
    shared: Option<Shared>,
}

/// The id and secret of a well-formed token.
fn split(token: &str) -> Option<(&str, &str)> {
    crate::access::api_key::split_credential(token, PREFIX, ID_BYTES, SECRET_BYTES)
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Wall-clock nanoseconds, strictly increasing in this process.
fn opened_stamp() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |last| Some(now.max(last.saturating_add(1))),
        )
        .unwrap_or(now);
    now.max(previous.saturating_add(1))
}

/// Wall-clock milliseconds: compared across processes.
fn now_ms() -> u64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}

impl Sessions {
    /// Sessions lasting `ttl`, kept in this process only (tests, embedders).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            open: Mutex::default(),
            shared: None,
        }
    }

    /// Sessions lasting `ttl`, kept in `shared` for every replica.
    pub fn shared(ttl: Duration, shared: Shared) -> Self {
        Self {
            shared: Some(shared),
            ..Self::new(ttl)
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn open_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every live session, from the store when shared; expired ones found
    /// there are deleted on the way (whichever replica sees them first).
    async fn all(&self, now: u64) -> Result<Vec<(String, Session)>, SessionError> {
        let all = match &self.shared {
            Some(shared) => shared
                .list::<Session>(StateKind::Session)
                .await?
                .into_iter()
                .map(|(id, _, s)| (id, s))
                .collect(),
            None => self
                .open_sessions()
                .iter()
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect::<Vec<_>>(),
        };
        let (live, expired): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|(_, s)| s.expires_ms > now);
        for (id, _) in expired {
            self.remove(&id).await?;
        }
        Ok(live)
    }

    /// Ends session `id` here and in the store.
    async fn remove(&self, id: &str) -> Result<(), SessionError> {
        self.open_sessions().remove(id);
        if let Some(shared) = &self.shared {
            match shared
                .put::<Session>(StateKind::Session, id, None, Expect::Any)
                .await
            {
                Ok(_) | Err(SharedError::Store(StoreError::Conflict)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Opens a session for `principal`.
    pub async fn open(&self, principal: &str) -> Result<OpenedSession, SessionError> {
        let mut id = [0u8; ID_BYTES];
        let mut secret = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
        csprng::fill(&mut id)?;
        csprng::fill(secret.as_mut())?;
        let (id, secret) = (
            hex::encode(id),
            zeroize::Zeroizing::new(hex::encode(*secret)),
        );
        let now = now_ms();
        let live = self.all(now).await?;
        let mut mine: Vec<&(String, Session)> = live
            .iter()
            .filter(|(_, s)| s.principal == principal)
            .collect();
        mine.sort_by_key(|(_, s)| s.opened_ns);
        let excess = (mine.len() + 1).saturating_sub(MAX_PER_PRINCIPAL);
        for (oldest, _) in mine.iter().take(excess) {
            self.remove(oldest).await?;
        }
        if live.len().saturating_sub(excess) >= MAX_SESSIONS {
            return Err(SessionError::TooMany);
        }
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let session = Session {
            secret_hash: hex::encode(hash(&secret)),
            principal: principal.to_owned(),
            opened_ns: opened_stamp(),
            expires_ms: now.saturating_add(ttl_ms),
        };
        if let Some(shared) = &self.shared {
            shared
                .put(StateKind::Session, &id, Some(&session), Expect::Absent)
                .await?;
        }
        let mut open = self.open_sessions();
        open.retain(|_, s| s.expires_ms > now);
        open.insert(id.clone(), session);
        Ok(OpenedSession {
            token: SecretString::new(format!("{PREFIX}{id}_{}", secret.as_str())),
            id,
            ttl: self.ttl,
        })
    }

    /// Brings this replica's view of `token`'s session up to date from the
    /// store (opened, closed or revoked on another replica). Called before
    /// [`Self::verify`] on every call that carries a session; when the store
    /// does not answer the session is dropped from the view (fail closed).
    pub async fn load(&self, token: &str) {
        let (Some(shared), Some((id, _))) = (&self.shared, split(token)) else {
            return;
        };
        match shared.get::<Session>(StateKind::Session, id).await {
            Ok(Some((_, session))) => {
                self.open_sessions().insert(id.to_owned(), session);
            }
            Ok(None) => {
                self.open_sessions().remove(id);
            }
            // Fail closed: a session closed elsewhere must not live on
            // here because the store did not answer.
            Err(e) => {
                tracing::warn!(error = %e, "admin session could not be read from the store");
                self.open_sessions().remove(id);
            }
        }
    }

    /// Whether `token` is a live session of `principal`.
    pub fn verify(&self, token: &str, principal: &str) -> bool {
        let Some((id, secret)) = split(token) else {
            return false;
        };
        let presented = hash(secret);
        let open = self.open_sessions();
        let stored = open
            .get(id)
            .and_then(|s| <[u8; 32]>::try_from(hex::decode(&s.secret_hash).ok()?).ok());
        let Some((session, stored)) = open.get(id).zip(stored) else {
            // Same work as a hit, so an unknown id is not faster.
            let _ = presented.ct_eq(&[0u8; 32]);
            return false;
        };
        let secret_ok: bool = presented.ct_eq(&stored).into();
        secret_ok && session.principal == principal && now_ms() < session.expires_ms
    }

    /// Ends `token` if it is a session of `principal`; whether it was open.
    pub async fn close(&self, token: &str, principal: &str) -> Result<bool, SessionError> {
        self.load(token).await;
        if !self.verify(token, principal) {
            return Ok(false);
        }
        let Some((id, _)) = split(token) else {
            return Ok(false);
        };
        self.remove(id).await?;
        Ok(true)
    }

    /// Ends every session of `principal` (its revocation); how many.
    pub async fn close_all(&self, principal: &str) -> Result<usize, SessionError> {
        let mut closed = 0;
        for (id, session) in self.all(now_ms()).await? {
            if session.principal == principal {
                self.remove(&id).await?;
                closed += 1;
            }
        }
        self.open_sessions().retain(|_, s| s.principal != principal);
        Ok(closed)
    }

    /// The public id of a well-formed token (for the audit log).
    pub fn id_of(token: &str) -> Option<&str> {
        split(token).map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::secret::DataKey;
    use crate::shared::seal::StateSeal;
    use crate::store::memory::MemoryStore;

    fn shared(store: &Arc<MemoryStore>) -> Shared {
        let store: Arc<dyn crate::store::Store> = store.clone();
        Shared::new(
            store,
            Arc::new(StateSeal::new(DataKey::from_bytes([6; 32]))),
        )
    }

    #[tokio::test]
    async fn a_session_works_for_its_principal_until_closed() {
        let s = Sessions::new(DEFAULT_SESSION_TTL);
        let opened = s.open("alice").await.unwrap();
        let token = opened.token.expose_secret();
        assert!(s.verify(token, "alice"));
        assert!(!s.verify(token, "bob"), "bound to the principal");
        let mut forged = token.to_owned();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(!s.verify(&forged, "alice"), "a wrong secret");
        assert!(!s.verify("tss_garbage", "alice"));
        assert!(s.close(token, "alice").await.unwrap());
        assert!(!s.verify(token, "alice"));
        assert!(!s.close(token, "alice").await.unwrap());
    }

    #[tokio::test]
    async fn sessions_expire_and_die_with_their_principal() {
        let s = Sessions::new(Duration::from_millis(20));
        let token = s.open("alice").await.unwrap().token;
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!s.verify(token.expose_secret(), "alice"));
        let s = Sessions::new(DEFAULT_SESSION_TTL);
        let token = s.open("alice").await.unwrap().token;
        assert_eq!(s.close_all("alice").await.unwrap(), 1);
        assert!(!s.verify(token.expose_secret(), "alice"));
    }

    #[tokio::test]
    async fn a_principal_holds_a_bounded_number_of_sessions() {
        let s = Sessions::new(DEFAULT_SESSION_TTL);
        let first = s.open("alice").await.unwrap().token;
        for _ in 0..MAX_PER_PRINCIPAL {
            s.open("alice").await.unwrap();
        }
        assert!(
            !s.verify(first.expose_secret(), "alice"),
            "the oldest gave way"
        );
        assert_eq!(s.open_sessions().len(), MAX_PER_PRINCIPAL);
    }

    /// Two replicas over one store: a session opened on one works on the
    /// other once loaded (every call carrying it loads it), and a logout or
    /// a revocation on one ends it on the other at the next call. The
    /// store holds only the sealed hash, never the token.
    #[tokio::test]
    async fn replicas_share_sessions_and_their_end() {
        let store = Arc::new(MemoryStore::new());
        let a = Sessions::shared(DEFAULT_SESSION_TTL, shared(&store));
        let b = Sessions::shared(DEFAULT_SESSION_TTL, shared(&store));
        let token = a.open("alice").await.unwrap().token;
        let token = token.expose_secret();
        assert!(!b.verify(token, "alice"), "not loaded yet");
        b.load(token).await;
        assert!(b.verify(token, "alice"));
        let stored = crate::store::StateStore::states(store.as_ref(), StateKind::Session)
            .await
            .unwrap();
        let secret = token.rsplit('_').next().unwrap();
        assert!(
            !stored[0]
                .1
                .value
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())
        );
        assert!(a.close(token, "alice").await.unwrap());
        b.load(token).await;
        assert!(!b.verify(token, "alice"), "logged out on a");
        let again = a.open("alice").await.unwrap().token;
        b.load(again.expose_secret()).await;
        assert_eq!(b.close_all("alice").await.unwrap(), 1);
        a.load(again.expose_secret()).await;
        assert!(!a.verify(again.expose_secret(), "alice"), "revoked on b");
    }
}
