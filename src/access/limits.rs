//! Suspicious-activity controls (PCI DSS 8.3.4; PCI tokenization guidance on
//! monitoring):
//!
//! - **Rate limits**: a token bucket per principal and RPC; an empty bucket
//!   answers RESOURCE_EXHAUSTED with the time to wait.
//! - **Lockout**: after `max_failed_auth` failed authentications with one
//!   API key id (the public part of a key), that id is locked for
//!   `lockout`, even for the right secret.
//! - **Token enumeration**: more than `not_found_per_minute` NOT_FOUND
//!   answers to one principal in a minute is an anomaly: an alert event, a
//!   metric and, with `lock_on_anomaly`, the principal is locked.
//!
//! State lives in memory, per server; a restart forgets it (documented).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::access::anomaly::Anomaly;
use crate::access::anomaly::{KnownNetworks, VolumeBaseline, VolumeRule, network_of};

/// Lock ids of second factors are this prefix and the principal's name
/// (API key ids are hex, so the two never collide).
pub const OTP_LOCK_PREFIX: &str = "otp:";

/// Limits and thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Sustained calls per second per principal and RPC.
    pub rate_per_second: f64,
    /// Burst above the sustained rate.
    pub burst: f64,
    /// Failed authentications before a key id is locked (PCI DSS: at most 10).
    pub max_failed_auth: u32,
    /// How long a lock lasts (PCI DSS: at least 30 minutes).
    pub lockout: Duration,
    /// NOT_FOUND answers per principal per minute before it is an anomaly.
    pub not_found_per_minute: u32,
    /// Lock a principal whose traffic looks like token enumeration or a
    /// detokenize volume spike.
    pub lock_on_anomaly: bool,
    /// How long an anomaly lock lasts; `None`: until an admin unlocks.
    pub anomaly_lock: Option<Duration>,
    /// The detokenize-volume rule.
    pub volume: VolumeRule,
    /// Alert on calls from a network new to the principal.
    pub alert_on_new_network: bool,
    /// Also lock the principal then (off by default: people move).
    pub lock_on_new_network: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            rate_per_second: 10_000.0,
            burst: 20_000.0,
            max_failed_auth: 10,
            lockout: Duration::from_secs(30 * 60),
            not_found_per_minute: 100,
            lock_on_anomaly: true,
            anomaly_lock: None,
            volume: VolumeRule::default(),
            alert_on_new_network: true,
            lock_on_new_network: false,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    count: u32,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<(String, String), Bucket>,
    failures: HashMap<String, Failures>,
    /// Anomaly locks: until when, or `None` until an admin unlocks.
    locked_principals: HashMap<String, Option<Instant>>,
    not_found: HashMap<String, Window>,
    volumes: HashMap<String, VolumeBaseline>,
    networks: KnownNetworks,
}

/// The per-server guard.
#[derive(Debug, Default)]
pub struct Guard {
    config: LimitsConfig,
    state: Mutex<State>,
}

impl Guard {
    /// A guard with `config`.
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key_id` is locked after failed authentications.
    pub fn key_locked(&self, key_id: &str) -> bool {
        let now = Instant::now();
        self.state()
            .failures
            .get(key_id)
            .and_then(|f| f.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Counts a failed authentication; returns true when it locks the id.
    pub fn auth_failed(&self, key_id: &str) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        let entry = state.failures.entry(key_id.to_owned()).or_default();
        if entry.locked_until.is_some_and(|until| now >= until) {
            *entry = Failures::default();
        }
        entry.count += 1;
        if entry.count >= self.config.max_failed_auth && entry.locked_until.is_none() {
            entry.locked_until = Some(now + self.config.lockout);
            return true;
        }
        false
    }

    /// A successful authentication clears the failure count.
    pub fn auth_succeeded(&self, key_id: &str) {
        let mut state = self.state();
        if state
            .failures
            .get(key_id)
            .is_some_and(|f| f.locked_until.is_none())
        {
            state.failures.remove(key_id);
        }
    }

    /// Whether a principal is locked for an anomaly.
    pub fn principal_locked(&self, name: &str) -> bool {
        let now = Instant::now();
        self.state()
            .locked_principals
            .get(name)
            .is_some_and(|until| until.is_none_or(|t| now < t))
    }

    /// Lifts an anomaly lock on `name` and a lock of its second factor;
    /// whether one was in force.
    pub fn unlock_principal(&self, name: &str) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        let anomaly = state
            .locked_principals
            .remove(name)
            .is_some_and(|until| until.is_none_or(|t| now < t));
        let second_factor = state
            .failures
            .remove(&format!("{OTP_LOCK_PREFIX}{name}"))
            .and_then(|f| f.locked_until)
            .is_some_and(|t| now < t);
        anomaly || second_factor
    }

    /// Takes one call from the principal's bucket for `rpc`; when empty,
    /// the time until the next call is allowed.
    pub fn take(&self, principal: &str, rpc: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let (rate, burst) = (self.config.rate_per_second, self.config.burst.max(1.0));
        let mut state = self.state();
        let bucket = state
            .buckets
            .entry((principal.to_owned(), rpc.to_owned()))
            .or_insert(Bucket {
                tokens: burst,
                at: now,
            });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = if rate > 0.0 {
                (1.0 - bucket.tokens) / rate
            } else {
                60.0
            };
            Err(Duration::from_secs_f64(wait))
        }
    }

    /// Locks `principal` for the lockout period.
    fn lock(&self, state: &mut State, principal: &str) {
        let until = self.config.anomaly_lock.map(|d| Instant::now() + d);
        state.locked_principals.insert(principal.to_owned(), until);
    }

    /// Counts `n` successful detokenizes by `principal`; the anomaly when
    /// its volume crosses the rule.
    pub fn detokenized(&self, principal: &str, n: u64) -> Option<Anomaly> {
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        let mut state = self.state();
        let spike = state
            .volumes
            .entry(principal.to_owned())
            .or_insert_with(|| VolumeBaseline::new(now))
            .record(n, now, &self.config.volume);
        if !spike {
            return None;
        }
        let locked = self.config.lock_on_anomaly;
        if locked {
            self.lock(&mut state, principal);
        }
        Some(Anomaly::DetokenizeVolume { locked })
    }

    /// Records that `principal` called from `peer`; the anomaly when the
    /// network is new to it.
    pub fn called_from(&self, principal: &str, peer: IpAddr) -> Option<Anomaly> {
        if !self.config.alert_on_new_network {
            return None;
        }
        let mut state = self.state();
        if !state.networks.record(principal, &network_of(peer)) {
            return None;
        }
        let locked = self.config.lock_on_new_network;
        if locked {
            self.lock(&mut state, principal);
        }
        Some(Anomaly::NewNetwork { locked })
    }

    /// Counts a NOT_FOUND answer to `principal`; returns the anomaly when
    /// this one crosses the threshold.
    pub fn not_found(&self, principal: &str) -> Option<Anomaly> {
        let now = Instant::now();
        let mut state = self.state();
        let window = state
            .not_found
            .entry(principal.to_owned())
            .or_insert(Window {
                start: now,
                count: 0,
            });
        if now.duration_since(window.start) >= Duration::from_secs(60) {
            *window = Window {
                start: now,
                count: 0,
            };
        }
        window.count += 1;
        if window.count != self.config.not_found_per_minute + 1 {
            return None;
        }
        let locked = self.config.lock_on_anomaly;
        if locked {
            self.lock(&mut state, principal);
        }
        Some(Anomaly::TokenEnumeration { locked })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(config: LimitsConfig) -> Guard {
        Guard::new(config)
    }

    #[test]
    fn bucket_allows_burst_then_refuses_with_a_wait() {
        let g = guard(LimitsConfig {
            rate_per_second: 1.0,
            burst: 3.0,
            ..LimitsConfig::default()
        });
        for _ in 0..3 {
            assert!(g.take("p", "Detokenize").is_ok());
        }
        let wait = g.take("p", "Detokenize").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // Buckets are per principal and per RPC.
        assert!(g.take("q", "Detokenize").is_ok());
        assert!(g.take("p", "Tokenize").is_ok());
    }

    #[test]
    fn ten_failures_lock_the_key_id() {
        let g = guard(LimitsConfig::default());
        for n in 1..10 {
            assert!(!g.auth_failed("abc"), "failure {n}");
            assert!(!g.key_locked("abc"));
        }
        assert!(g.auth_failed("abc"));
        assert!(g.key_locked("abc"));
        g.auth_succeeded("abc");
        assert!(g.key_locked("abc"), "a later success does not lift a lock");
        assert!(!g.key_locked("other"));
    }

    #[test]
    fn success_resets_the_count() {
        let g = guard(LimitsConfig::default());
        for _ in 0..9 {
            g.auth_failed("abc");
        }
        g.auth_succeeded("abc");
        for _ in 0..9 {
            assert!(!g.auth_failed("abc"));
        }
    }

    #[test]
    fn enumeration_is_an_anomaly_once_and_locks() {
        let g = guard(LimitsConfig {
            not_found_per_minute: 5,
            ..LimitsConfig::default()
        });
        for _ in 0..5 {
            assert_eq!(g.not_found("p"), None);
        }
        assert_eq!(
            g.not_found("p"),
            Some(Anomaly::TokenEnumeration { locked: true })
        );
        assert_eq!(g.not_found("p"), None, "one alert per window");
        assert!(g.principal_locked("p"));
        assert!(!g.principal_locked("q"));
    }

    #[test]
    fn admin_unlock_lifts_anomaly_and_second_factor_locks() {
        let g = guard(LimitsConfig {
            not_found_per_minute: 1,
            ..LimitsConfig::default()
        });
        g.not_found("p");
        assert!(g.not_found("p").is_some());
        assert!(g.principal_locked("p"), "locked with no end until unlocked");
        assert!(g.unlock_principal("p"));
        assert!(!g.principal_locked("p"));
        assert!(!g.unlock_principal("p"), "nothing left to lift");
        let otp = format!("{OTP_LOCK_PREFIX}p");
        for _ in 0..10 {
            g.auth_failed(&otp);
        }
        assert!(g.key_locked(&otp));
        assert!(g.unlock_principal("p"));
        assert!(!g.key_locked(&otp));
    }
}
