//! A batch's audit events, chained by the store under its commit lock.
//!
//! The committer hands the store a [`BatchChain`] with the batch; the store
//! reads its last event under the commit lock and calls
//! [`ChainStep::after`], which chains the events after it and signs the
//! new head. Replicas on one database therefore never race for a position:
//! whichever commit takes the lock first, the other chains after it.
//!
//! The committer remembers the end it last saw (its own last commit, or a
//! read checked against the signed head). The store hands the step every
//! event from that end on and the signed head; the step checks that they
//! continue the known end (the event there unchanged, each later one
//! linked and hashing right, the head naming an event it signed) before
//! it signs a new head over them. A tail that does not, was truncated or
//! rewritten since; the step refuses it ([`CommitError::AuditRewound`])
//! rather than sign over the damage, and the committer checks the log
//! again.

use std::sync::{Arc, Mutex};

use crate::audit::AuditEvent;
use crate::audit::chain::{ChainHash, ChainedEvent, SignedHead, hash_event};
use crate::secret::DataKey;
use crate::store::{AuditAppend, ChainStep, CommitError, MAX_TAIL_EVENTS, StoreError};

/// Where the chain ends: the next position and the hash it links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tip {
    pub(super) next_seq: u64,
    pub(super) hash: ChainHash,
}

/// One submission's events and the key that signs the head after them.
#[derive(Clone)]
pub(super) struct Part {
    pub(super) events: Vec<AuditEvent>,
    pub(super) signer: Option<Arc<DataKey>>,
    /// The signer is stored by this part's own unit: not the key of any
    /// head already in the log.
    pub(super) new_signer: bool,
}

/// Where a batch's events were chained: the first position and the new end.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placed {
    pub(super) from: u64,
    pub(super) end: Tip,
}

/// The events of one batch, in queue order, and where they were chained.
pub(super) struct BatchChain {
    parts: Vec<Part>,
    /// The end the committer last saw; the log must not end before it.
    known: Tip,
    /// Set by the store's call of [`ChainStep::after`]; read once the
    /// commit returned.
    placed: Mutex<Option<Placed>>,
}

impl BatchChain {
    pub(super) fn new(parts: Vec<Part>, known: Tip) -> Self {
        Self {
            parts,
            known,
            placed: Mutex::new(None),
        }
    }

    /// The parts, for a batch committed again without a refused one.
    pub(super) fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Where the last call of `after` chained the events; after a commit
    /// that returned `Ok`, where they are stored.
    pub(super) fn placed(&self) -> Option<Placed> {
        *self
            .placed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Each part's positions when the events start at `from`.
    pub(super) fn positions(&self, from: u64) -> Vec<Vec<u64>> {
        let mut next = from;
        self.parts
            .iter()
            .map(|part| {
                let start = next;
                next = next.saturating_add(u64::try_from(part.events.len()).unwrap_or(u64::MAX));
                (start..next).collect()
            })
            .collect()
    }
}

/// What a page of the log's tail is checked against besides the known end.
#[derive(Clone, Copy)]
pub(super) struct TailCheck<'a> {
    /// The stored signed head (read before the page).
    pub(super) head: Option<&'a [u8]>,
    /// The audit key, when at hand: a head it did not sign is forged.
    pub(super) key: Option<&'a DataKey>,
    /// Whether the page reaches the log's end, so the head must fall in
    /// it or before it.
    pub(super) last_page: bool,
}

/// Checks that `tail` continues `known`: its first event is the known last
/// one (unless `known` is the empty log), and every later event links to
/// the one before and hashes to what it claims; and that the signed head,
/// when it names an event of the page, names it with its hash. Returns the
/// page's end.
pub(super) fn check_tail(
    known: Tip,
    tail: &[(u64, Vec<u8>)],
    check: TailCheck<'_>,
) -> Result<Tip, CommitError> {
    let mut events = tail.iter();
    let mut hashes = Vec::with_capacity(tail.len());
    let mut tip = if known.next_seq == 0 {
        Tip {
            next_seq: 0,
            hash: [0; 32],
        }
    } else {
        match events.next() {
            Some((seq, bytes))
                if seq.saturating_add(1) == known.next_seq
                    && ChainedEvent::decode(bytes).is_ok_and(|e| e.hash == known.hash) =>
            {
                hashes.push((*seq, known.hash));
                known
            }
            _ => return Err(CommitError::AuditRewound),
        }
    };
    for (seq, bytes) in events {
        let event = ChainedEvent::decode(bytes).map_err(|_| CommitError::AuditRewound)?;
        let links = *seq == tip.next_seq
            && event.seq == *seq
            && event.prev == tip.hash
            && hash_event(event.seq, &event.prev, &event.event) == event.hash;
        if !links {
            return Err(CommitError::AuditRewound);
        }
        hashes.push((*seq, event.hash));
        tip = Tip {
            next_seq: seq.saturating_add(1),
            hash: event.hash,
        };
    }
    // A head another replica signed must name an event with its hash: a
    // log rewritten after it no longer does, and one cut below it ends
    // before it.
    if let Some(bytes) = check.head {
        let head = SignedHead::decode(bytes).map_err(|_| CommitError::AuditRewound)?;
        if check.last_page && head.seq >= tip.next_seq {
            return Err(CommitError::AuditRewound);
        }
        if let Some(key) = check.key
            && !head.is_valid(key)
        {
            return Err(CommitError::AuditRewound);
        }
        if let Some((_, hash)) = hashes.iter().find(|(seq, _)| *seq == head.seq)
            && *hash != head.hash
        {
            return Err(CommitError::AuditRewound);
        }
    }
    Ok(tip)
}

impl ChainStep for BatchChain {
    fn tail_from(&self) -> u64 {
        self.known.next_seq.saturating_sub(1)
    }

    fn after(
        &self,
        tail: &[(u64, Vec<u8>)],
        head: Option<&[u8]>,
    ) -> Result<AuditAppend, CommitError> {
        if tail.len() >= MAX_TAIL_EVENTS {
            return Err(CommitError::TailTooLong);
        }
        let check = TailCheck {
            head,
            key: self
                .parts
                .iter()
                .filter(|p| !p.new_signer)
                .find_map(|p| p.signer.as_deref()),
            last_page: true,
        };
        let mut tip = check_tail(self.known, tail, check)?;
        // A key made for this batch signs only a log that never had a
        // head. A head already there was signed by another key: another
        // replica's, stored first (this unit's key write would be refused
        // too), or one deleted under its head to have a new key sign over
        // whatever the log now holds. Either way the part is refused.
        if head.is_some()
            && let Some(unit) = self.parts.iter().position(|p| p.new_signer)
        {
            return Err(CommitError::Refused {
                unit,
                error: StoreError::AlreadyExists,
            });
        }
        let from = tip.next_seq;
        let mut append = AuditAppend {
            from,
            events: Vec::with_capacity(self.parts.iter().map(|p| p.events.len()).sum()),
            head: None,
        };
        for part in &self.parts {
            for event in &part.events {
                let chained = ChainedEvent::new(tip.next_seq, tip.hash, event.clone());
                append.events.push(chained.encode());
                tip = Tip {
                    next_seq: chained.seq.saturating_add(1),
                    hash: chained.hash,
                };
            }
            if let Some(key) = &part.signer
                && !part.events.is_empty()
            {
                let last = tip.next_seq.saturating_sub(1);
                append.head = Some(SignedHead::sign(key, last, tip.hash).encode());
            }
        }
        *self
            .placed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Placed { from, end: tip });
        Ok(append)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: u64) -> (Vec<(u64, Vec<u8>)>, Vec<ChainHash>) {
        let mut prev = [0; 32];
        let (mut events, mut hashes) = (Vec::new(), Vec::new());
        for seq in 0..n {
            let event = AuditEvent {
                time_ms: seq,
                ..AuditEvent::default()
            };
            let chained = ChainedEvent::new(seq, prev, event);
            prev = chained.hash;
            hashes.push(chained.hash);
            events.push((seq, chained.encode()));
        }
        (events, hashes)
    }

    fn head(key: &DataKey, seq: u64, hash: ChainHash) -> Vec<u8> {
        SignedHead::sign(key, seq, hash).encode()
    }

    /// A page is checked against the known end, its links, and the head:
    /// a head beyond a page that does not reach the log's end is left for
    /// the next page; beyond the last page it is a cut; one naming an
    /// event of the page (the known one included) must carry its hash and,
    /// with the key at hand, its signature.
    #[test]
    fn a_page_of_the_tail_is_checked_against_the_known_end_and_the_head() {
        let key = DataKey::from_bytes([1; 32]);
        let (events, hashes) = chain_of(10);
        let known = Tip {
            next_seq: 4,
            hash: hashes[3],
        };
        let page = &events[3..7];
        let check = |head: Option<&[u8]>, key: Option<&DataKey>, last_page: bool| {
            check_tail(
                known,
                page,
                TailCheck {
                    head,
                    key,
                    last_page,
                },
            )
        };
        assert_eq!(check(None, None, true).unwrap().next_seq, 7);
        let later = head(&key, 8, hashes[8]);
        assert!(check(Some(&later), Some(&key), false).is_ok());
        assert!(matches!(
            check(Some(&later), Some(&key), true),
            Err(CommitError::AuditRewound)
        ));
        let within = head(&key, 5, hashes[5]);
        assert!(check(Some(&within), Some(&key), true).is_ok());
        let wrong_hash = head(&key, 5, hashes[4]);
        assert!(check(Some(&wrong_hash), None, true).is_err());
        let at_known = head(&key, 3, hashes[2]);
        assert!(check(Some(&at_known), None, true).is_err());
        let forged = head(&DataKey::from_bytes([2; 32]), 5, hashes[5]);
        assert!(check(Some(&forged), None, true).is_ok(), "no key at hand");
        assert!(check(Some(&forged), Some(&key), true).is_err());
        // A page that does not start at the known event, or does not link.
        assert!(
            check_tail(
                known,
                &events[4..7],
                TailCheck {
                    head: None,
                    key: None,
                    last_page: true
                }
            )
            .is_err()
        );
        let mut broken = page.to_vec();
        broken.swap(1, 2);
        assert!(
            check_tail(
                known,
                &broken,
                TailCheck {
                    head: None,
                    key: None,
                    last_page: true
                }
            )
            .is_err()
        );
    }
}
