//! Admin sessions: one TOTP code opens a short-lived session for a key
//! ceremony (status, rotate, re-encrypt, status) instead of one code, and
//! so up to a 30 s wait, per call (DESIGN.md §5).
//!
//! - A session is `tss_<id>_<secret>` (64 random bits of id, 256 of
//!   secret), shown once; the server keeps the secret's SHA-256 only and
//!   compares in constant time.
//! - It is bound to the principal that opened it: it stands in for the
//!   second factor only next to that principal's API key or certificate.
//! - It lasts `access.session_minutes` (default 15 minutes), can be deleted
//!   (logout) and dies with its principal's revocation. A session never
//!   opens another one, so its life is bounded by the code that opened it.
//! - Sessions live in the server's memory: a restart ends them all.
//!   At most [`MAX_PER_PRINCIPAL`] per principal (the oldest gives way)
//!   and [`MAX_SESSIONS`] in all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::csprng::{self, RngError};
use crate::secret::SecretString;

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

/// A session could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server holds [`MAX_SESSIONS`].
    #[error("too many open sessions; retry later")]
    TooMany,
    /// No randomness.
    #[error(transparent)]
    Rng(#[from] RngError),
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

#[derive(Debug)]
struct Session {
    secret_hash: [u8; 32],
    principal: String,
    opened: Instant,
    expires: Instant,
}

/// The open sessions of one server.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    open: Mutex<HashMap<String, Session>>,
}

/// The id and secret of a well-formed token.
fn split(token: &str) -> Option<(&str, &str)> {
    crate::access::api_key::split_credential(token, PREFIX, ID_BYTES, SECRET_BYTES)
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Sessions {
    /// Sessions lasting `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            open: Mutex::default(),
        }
    }

    fn open_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `principal`.
    pub fn open(&self, principal: &str) -> Result<OpenedSession, SessionError> {
        let mut id = [0u8; ID_BYTES];
        let mut secret = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
        csprng::fill(&mut id)?;
        csprng::fill(secret.as_mut())?;
        let (id, secret) = (
            hex::encode(id),
            zeroize::Zeroizing::new(hex::encode(*secret)),
        );
        let now = Instant::now();
        let mut open = self.open_sessions();
        open.retain(|_, s| s.expires > now);
        let mine: Vec<(String, Instant)> = open
            .iter()
            .filter(|(_, s)| s.principal == principal)
            .map(|(id, s)| (id.clone(), s.opened))
            .collect();
        if mine.len() >= MAX_PER_PRINCIPAL
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, opened)| *opened)
        {
            open.remove(oldest);
        }
        if open.len() >= MAX_SESSIONS {
            return Err(SessionError::TooMany);
        }
        open.insert(
            id.clone(),
            Session {
                secret_hash: hash(&secret),
                principal: principal.to_owned(),
                opened: now,
                expires: now + self.ttl,
            },
        );
        Ok(OpenedSession {
            token: SecretString::new(format!("{PREFIX}{id}_{}", secret.as_str())),
            id,
            ttl: self.ttl,
        })
    }

    /// Whether `token` is a live session of `principal`.
    pub fn verify(&self, token: &str, principal: &str) -> bool {
        let Some((id, secret)) = split(token) else {
            return false;
        };
        let presented = hash(secret);
        let open = self.open_sessions();
        let Some(session) = open.get(id) else {
            // Same work as a hit, so an unknown id is not faster.
            let _ = presented.ct_eq(&[0u8; 32]);
            return false;
        };
        let secret_ok: bool = presented.ct_eq(&session.secret_hash).into();
        secret_ok && session.principal == principal && Instant::now() < session.expires
    }

    /// Ends `token` if it is a session of `principal`; whether it was open.
    pub fn close(&self, token: &str, principal: &str) -> bool {
        if !self.verify(token, principal) {
            return false;
        }
        split(token).is_some_and(|(id, _)| self.open_sessions().remove(id).is_some())
    }

    /// Ends every session of `principal` (its revocation); how many.
    pub fn close_all(&self, principal: &str) -> usize {
        let mut open = self.open_sessions();
        let before = open.len();
        open.retain(|_, s| s.principal != principal);
        before - open.len()
    }

    /// The public id of a well-formed token (for the audit log).
    pub fn id_of(token: &str) -> Option<&str> {
        split(token).map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_works_for_its_principal_until_closed() {
        let s = Sessions::new(DEFAULT_SESSION_TTL);
        let opened = s.open("alice").unwrap();
        let token = opened.token.expose_secret();
        assert!(s.verify(token, "alice"));
        assert!(!s.verify(token, "bob"), "bound to the principal");
        let mut forged = token.to_owned();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(!s.verify(&forged, "alice"), "a wrong secret");
        assert!(!s.verify("tss_garbage", "alice"));
        assert!(s.close(token, "alice"));
        assert!(!s.verify(token, "alice"));
        assert!(!s.close(token, "alice"));
    }

    #[test]
    fn sessions_expire_and_die_with_their_principal() {
        let s = Sessions::new(Duration::from_millis(20));
        let token = s.open("alice").unwrap().token;
        std::thread::sleep(Duration::from_millis(40));
        assert!(!s.verify(token.expose_secret(), "alice"));
        let s = Sessions::new(DEFAULT_SESSION_TTL);
        let token = s.open("alice").unwrap().token;
        assert_eq!(s.close_all("alice"), 1);
        assert!(!s.verify(token.expose_secret(), "alice"));
    }

    #[test]
    fn a_principal_holds_a_bounded_number_of_sessions() {
        let s = Sessions::new(DEFAULT_SESSION_TTL);
        let first = s.open("alice").unwrap().token;
        for _ in 0..MAX_PER_PRINCIPAL {
            s.open("alice").unwrap();
        }
        assert!(
            !s.verify(first.expose_secret(), "alice"),
            "the oldest gave way"
        );
        assert_eq!(s.open_sessions().len(), MAX_PER_PRINCIPAL);
    }
}
