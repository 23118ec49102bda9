//! Aggregating refused calls for the audit log (SECURITY.md §5.6).
//!
//! Every refused call is an invalid access attempt PCI DSS 10.2.1.4 wants
//! recorded, but one durable audit event per refusal lets anyone with a
//! network path make the vault fsync at will (300 made-up keys, 300 events).
//! So refusals are counted per *tally*: the peer network, the principal the
//! credentials named (if any), the RPC and the status code. The first
//! refusal of a tally in a window is recorded at once, as before; the rest
//! of that window are counted, and the count is recorded as one
//! `RefusedCalls` event when the window closes ([`Refusals::due`], polled by
//! the server) or when the tally's next window opens.
//!
//! The map is keyed by caller input, so it holds at most [`MAX_TALLIES`];
//! beyond that, refusals fall into one overflow tally per RPC and code.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most tallies held at once.
pub const MAX_TALLIES: usize = 10_000;

/// Network name of the overflow tally.
pub const OVERFLOW: &str = "*";

/// What refusals are counted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tally {
    /// The peer network (IPv4 /24, IPv6 /64), or [`OVERFLOW`].
    pub network: String,
    /// The principal the credentials named; empty when none.
    pub principal: String,
    /// Its tenant (which tenant's auditors see the summary); empty when none.
    pub tenant: String,
    /// The RPC.
    pub rpc: &'static str,
    /// The status code's name.
    pub code: String,
}

/// A closed window's refusals that were counted, not recorded one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Whose.
    pub tally: Tally,
    /// How many refusals beyond the first one recorded.
    pub counted: u64,
    /// The window's length.
    pub window: Duration,
}

/// Whether to record a refusal now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The first of its window: record it (and `closed`, the previous
    /// window's count, if any).
    Record {
        /// The previous window of the same tally, when it counted refusals.
        closed: Option<Summary>,
    },
    /// Counted; recorded later in a summary.
    Counted,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    counted: u64,
}

/// Per-server refusal tallies.
#[derive(Debug)]
pub struct Refusals {
    window: Duration,
    tallies: Mutex<HashMap<Tally, Window>>,
}

impl Refusals {
    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Tallies over windows of `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.max(Duration::from_millis(1)),
            tallies: Mutex::default(),
        }
    }

    fn tallies(&self) -> std::sync::MutexGuard<'_, HashMap<Tally, Window>> {
        self.tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a refusal at `now`.
    pub fn refused(&self, mut tally: Tally, now: Instant) -> Verdict {
        let mut tallies = self.tallies();
        if !tallies.contains_key(&tally) && tallies.len() >= MAX_TALLIES {
            tally.network = OVERFLOW.to_owned();
            tally.principal.clear();
            tally.tenant.clear();
        }
        match tallies.get_mut(&tally) {
            Some(w) if now.duration_since(w.start) < self.window => {
                w.counted += 1;
                Verdict::Counted
            }
            Some(w) => {
                let closed = (w.counted > 0).then(|| Summary {
                    tally: tally.clone(),
                    counted: w.counted,
                    window: self.window,
                });
                *w = Window {
                    start: now,
                    counted: 0,
                };
                Verdict::Record { closed }
            }
            None => {
                tallies.insert(
                    tally,
                    Window {
                        start: now,
                        counted: 0,
                    },
                );
                Verdict::Record { closed: None }
            }
        }
    }

    /// Removes the tallies whose window closed by `now`, returning those
    /// that counted refusals.
    pub fn due(&self, now: Instant) -> Vec<Summary> {
        let mut due = Vec::new();
        self.tallies().retain(|tally, w| {
            if now.duration_since(w.start) < self.window {
                return true;
            }
            if w.counted > 0 {
                due.push(Summary {
                    tally: tally.clone(),
                    counted: w.counted,
                    window: self.window,
                });
            }
            false
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(network: &str) -> Tally {
        Tally {
            network: network.into(),
            principal: String::new(),
            tenant: String::new(),
            rpc: "Tokenize",
            code: "Unauthenticated".into(),
        }
    }

    /// Finding 7: 300 calls with made-up keys wrote 300 fsynced events.
    #[test]
    fn a_flood_is_one_record_and_one_count_per_window() {
        let r = Refusals::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut records = 0;
        for _ in 0..300 {
            if let Verdict::Record { .. } = r.refused(tally("203.0.113.0/24"), t0) {
                records += 1;
            }
        }
        assert_eq!(records, 1);
        assert!(r.due(t0 + Duration::from_secs(30)).is_empty());
        let due = r.due(t0 + Duration::from_secs(61));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].counted, 299);
        assert!(
            r.due(t0 + Duration::from_secs(200)).is_empty(),
            "reported once"
        );
    }

    #[test]
    fn the_next_window_reports_the_last_one() {
        let r = Refusals::new(Duration::from_secs(60));
        let t0 = Instant::now();
        r.refused(tally("n"), t0);
        r.refused(tally("n"), t0);
        let later = r.refused(tally("n"), t0 + Duration::from_secs(61));
        assert!(matches!(
            later,
            Verdict::Record {
                closed: Some(Summary { counted: 1, .. })
            }
        ));
    }

    #[test]
    fn tallies_are_bounded() {
        let r = Refusals::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for n in 0..(MAX_TALLIES * 2) {
            r.refused(tally(&format!("net-{n}")), t0);
        }
        assert!(r.tallies().len() <= MAX_TALLIES + 1);
    }
}
