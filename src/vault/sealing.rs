//! Sealing and opening a replica, ordered by the store's change numbers.
//!
//! A seal is the emergency brake: one operator stops every replica, and it
//! takes two (or the custodians' shares) to open one again. Each seal
//! writes the `seal` signal, and its change number (one counter every
//! replica shares, in commit order) orders it against everything else:
//!
//! - a replica's opening supersedes only the seals it was checked against,
//!   so an unseal racing a second seal leaves the vault sealed;
//! - pending unseal and export requests, and export grants, filed before
//!   the newest seal never act ([`Vault::last_seal`]);
//! - a process that starts while the newest seal has not been superseded
//!   by any opening starts sealed: a restart does not undo a seal.
//!
//! Clocks decide nothing here, so neither skew between replicas nor two
//! calls in the same millisecond can seal or open one.

use std::sync::atomic::Ordering;

use crate::kms::UnsealProgress;
use crate::store::{Expect, StateKind, StoreError};
use crate::vault::{Vault, VaultError};

/// The signal of a seal. Its change number is what counts; its value, when
/// it was sealed (vault clock, ms, big-endian), is for people reading the
/// store.
pub(super) const SEAL_SIGNAL: &str = "seal";

/// The signal of the newest opening: the change number of the seal it
/// superseded (big-endian), read by processes as they start.
const OPENED_SIGNAL: &str = "opened";

impl Vault {
    /// Seals this replica: every cached key is dropped and the KMS forgets
    /// its master key (where it holds one in memory) and any shares
    /// collected so far.
    pub fn seal(&self) {
        self.sealed.store(true, Ordering::SeqCst);
        self.keys.clear();
        self.kms.seal();
        tracing::warn!(event = "sealed", "vault sealed; keys dropped from memory");
    }

    /// Seals this replica and tells the others to seal too (the emergency
    /// brake stops the whole vault, not just the replica a balancer picked).
    /// Each replica then needs its own unseal. This replica is sealed at
    /// once, and still when the others cannot be told; the error says they
    /// were not.
    pub async fn seal_everywhere(&self) -> Result<(), VaultError> {
        self.seal();
        let change = self
            .store
            .put_state(
                StateKind::Signal,
                SEAL_SIGNAL,
                Some(self.clock.now_ms().to_be_bytes().to_vec()),
                Expect::Any,
            )
            .await?;
        self.seals_followed.fetch_max(change, Ordering::SeqCst);
        // An opening that ran between the seal above and its signal was
        // checked against the seals before this one: it does not stand.
        if !self.is_sealed() {
            self.seal();
        }
        Ok(())
    }

    /// Whether unsealing collects shares (Shamir); other backends reopen on
    /// a second operator's approval instead.
    pub fn unsealed_by_shares(&self) -> bool {
        self.kms.unseal_progress().is_some()
    }

    /// Offers an unseal share (Shamir) or, for backends not sealed by
    /// shares, reports the state.
    ///
    /// Only shares ever unseal here. On a backend without shares this
    /// changes nothing: reopening such a vault is [`Self::reopen`], which
    /// only an approved dual-control request calls (a call in flight must
    /// never undo a seal that landed after its check).
    pub async fn unseal(&self, holder: &str, share: &[u8]) -> Result<UnsealProgress, VaultError> {
        let Some(_) = self.kms.unseal_progress() else {
            return Ok(UnsealProgress {
                sealed: self.is_sealed(),
                received: 0,
                threshold: 0,
            });
        };
        // The seals this share was offered against (followed first: a
        // seal made elsewhere wipes the shares collected before it); one
        // made while the share is on its way still holds.
        let superseded = self.last_seal().await?;
        let progress = self.kms.submit_share(holder, share).await?;
        if !progress.sealed {
            self.opened(superseded, "vault unsealed").await;
        }
        Ok(progress)
    }

    /// Reopens a vault sealed on a backend without shares, after a second
    /// operator approved (the caller's job) a request filed after the seal
    /// of change `superseded` (what [`Self::last_seal`] said when the
    /// approval was checked): a seal made since still holds.
    pub async fn reopen(&self, superseded: u64) -> Result<(), VaultError> {
        if self.unsealed_by_shares() {
            return Err(VaultError::Precondition(
                "this vault unseals with its custodians' shares".into(),
            ));
        }
        self.opened(superseded, "vault reopened by two operators")
            .await;
        Ok(())
    }

    /// Opens this replica over the seals up to change `superseded` and
    /// records the opening for processes yet to start, then follows any
    /// seal made since: the change feed may have brought one while the
    /// replica was still sealed, when following it changed nothing. The
    /// replica is open when this returns unless such a seal holds; a store
    /// that cannot be read now leaves that to the feed and the next call
    /// that looks.
    async fn opened(&self, superseded: u64, event: &'static str) {
        self.opened_after_seal
            .fetch_max(superseded, Ordering::SeqCst);
        if self.sealed.swap(false, Ordering::SeqCst) {
            tracing::warn!(event = "unsealed", "{event}");
        }
        if let Err(e) = self
            .store
            .put_state(
                StateKind::Signal,
                OPENED_SIGNAL,
                Some(superseded.to_be_bytes().to_vec()),
                Expect::Any,
            )
            .await
        {
            tracing::warn!(error = %e, "the opening could not be recorded: a process started now starts sealed");
        }
        if let Err(e) = self.last_seal().await {
            tracing::warn!(error = %e, "seals made since the opening's check could not be read");
        }
    }

    /// Starts this process in the vault's seal state: sealed when the
    /// newest seal has not been superseded by an opening since (a restart,
    /// a rescheduled pod, must not undo a seal), open over it otherwise.
    /// Called once, before serving.
    pub async fn adopt_seal_state(&self) -> Result<(), StoreError> {
        let newest = self.seal_signal().await?;
        let opened_over = self
            .store
            .state(StateKind::Signal, OPENED_SIGNAL)
            .await?
            // Unreadable: no opening is known, so a seal holds.
            .and_then(|entry| <[u8; 8]>::try_from(entry.value.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        self.seals_followed.fetch_max(newest, Ordering::SeqCst);
        if newest > opened_over {
            tracing::warn!(
                event = "sealed_at_start",
                "the vault was sealed and not reopened since: this process starts sealed"
            );
            self.seal();
        } else {
            self.opened_after_seal.fetch_max(newest, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The number of the store change that last sealed the vault (0 when
    /// none did), once this replica has followed it: one that has not yet
    /// heard of a seal made elsewhere seals now, not at its next poll.
    /// What a seal revokes (pending unseal and export requests, export
    /// grants) is judged against this change, so nothing filed before a
    /// seal acts after it, whichever replica it reaches and however the
    /// two race.
    pub async fn last_seal(&self) -> Result<u64, VaultError> {
        let version = self.seal_signal().await?;
        self.follow_seal(version);
        Ok(version)
    }

    /// [`Self::last_seal`], refused with [`VaultError::Sealed`] when this
    /// replica is sealed, or is once it has followed that seal: the first
    /// check of a call that files for PANs or hands them out.
    pub async fn last_seal_while_open(&self) -> Result<u64, VaultError> {
        let version = self.last_seal().await?;
        self.ensure_unsealed()?;
        Ok(version)
    }

    /// The change of the newest seal signal, 0 when there is none.
    async fn seal_signal(&self) -> Result<u64, StoreError> {
        Ok(self
            .store
            .state(StateKind::Signal, SEAL_SIGNAL)
            .await?
            .map_or(0, |entry| entry.version))
    }

    /// Follows the seal of change `version`: an open replica whose opening
    /// came before it seals, and a sealed one seals again the first time
    /// it meets it, so shares collected before a seal made elsewhere are
    /// wiped as a seal made here would wipe them.
    pub(super) fn follow_seal(&self, version: u64) {
        if version <= self.opened_after_seal.load(Ordering::SeqCst) {
            return;
        }
        let first_met = self.seals_followed.fetch_max(version, Ordering::SeqCst) < version;
        if !self.is_sealed() {
            tracing::warn!(
                event = "sealed_by_replica",
                "another replica sealed the vault"
            );
            self.seal();
        } else if first_met {
            self.seal();
        }
    }
}
