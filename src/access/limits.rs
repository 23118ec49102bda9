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
//! - **Failed authentications per network**: more than
//!   `max_failed_auth_per_network` from one peer network (IPv4 /24, IPv6
//!   /64) in a window and that network's calls are refused *before*
//!   authentication, so guessing keys costs the vault nothing.
//!
//! Every map here keyed by what a caller chooses (key ids, networks) holds
//! at most [`MAX_TRACKED`] entries (SECURITY.md §5.6): a full map first
//! forgets what no longer matters (expired windows, unlocked counts), and
//! beyond that tracks nothing new (the per-network limit still applies).
//!
//! State lives in memory, per server; a restart forgets it (documented).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::access::anomaly::Anomaly;
pub use crate::access::anomaly::network_of;
use crate::access::anomaly::{KnownNetworks, VolumeBaseline, VolumeRule};
use crate::access::shared_locks::{LockTaker, LockTarget, Outbox, SharedLock, instant_of};

/// Lock ids of second factors are this prefix and the principal's name
/// (API key ids are hex, so the two never collide).
pub const OTP_LOCK_PREFIX: &str = "otp:";

/// Most entries in any map keyed by caller input.
pub const MAX_TRACKED: usize = 10_000;

/// How often a full map is swept for entries that no longer matter: a
/// sweep is O(entries) under the guard's lock, so a flood of new keys must
/// not buy one per call.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Inserts `key` into a bounded map: when full, first drops what
/// `forgettable` says no longer matters (at most once per [`SWEEP_EVERY`],
/// tracked by `next_sweep`); when still full, `None` (the caller does
/// without tracking).
fn bounded_entry<'m, K, V>(
    map: &'m mut HashMap<K, V>,
    next_sweep: &mut Option<Instant>,
    key: K,
    make: impl FnOnce() -> V,
    forgettable: impl Fn(&V) -> bool,
) -> Option<&'m mut V>
where
    K: std::hash::Hash + Eq,
{
    if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
        let now = Instant::now();
        if next_sweep.is_some_and(|at| now < at) {
            return None;
        }
        *next_sweep = Some(now + SWEEP_EVERY);
        map.retain(|_, v| !forgettable(v));
        if map.len() >= MAX_TRACKED {
            return None;
        }
    }
    Some(map.entry(key).or_insert_with(make))
}

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
    /// Failed authentications from one network per `refusal_window`
    /// before its calls are refused before authentication.
    pub max_failed_auth_per_network: u32,
    /// Window of the per-network limit and of refusal aggregation.
    pub refusal_window: Duration,
    /// Lifetime of an admin session.
    pub session_ttl: Duration,
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
            max_failed_auth_per_network: 100,
            refusal_window: Duration::from_secs(60),
            session_ttl: crate::access::sessions::DEFAULT_SESSION_TTL,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
    /// The latest failure: an unlocked count older than the lockout period
    /// is the first thing a full map forgets.
    last: Instant,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Self {
            count: 0,
            locked_until: None,
            last: now,
        }
    }
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
    /// Failed authentications per peer network in the current window.
    network_failures: HashMap<String, Window>,
    /// When the full `failures` and `network_failures` maps may next be
    /// swept.
    failures_sweep: Option<Instant>,
    network_sweep: Option<Instant>,
    /// Wrong TOTP codes per principal. Apart from `failures`, whose keys
    /// callers choose: a flood of made-up key ids must never evict (and so
    /// reset) a principal's second-factor count. Only authenticated
    /// principals reach it, so it is bounded by the principals.
    otp_failures: HashMap<String, Failures>,
}

/// The network a peer's failed authentications are counted under: IPv4
/// /24, IPv6 /48 (one site's allocation, so one attacker is one bucket).
fn failure_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
        other => network_of(other),
    }
}

/// The per-server guard.
#[derive(Debug, Default)]
pub struct Guard {
    /// Replaced as a whole on a configuration reload.
    config: std::sync::RwLock<Arc<LimitsConfig>>,
    state: Mutex<State>,
    /// Locks taken and lifted here, for the other replicas
    /// ([`crate::access::shared_locks`]).
    outbox: Arc<Outbox>,
}

impl Guard {
    /// A guard with `config`.
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            config: std::sync::RwLock::new(Arc::new(config)),
            state: Mutex::default(),
            outbox: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> Arc<LimitsConfig> {
        Arc::clone(
            &self
                .config
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts `config` in force (a configuration reload). Counts, locks and
    /// buckets stay; the new rates and thresholds apply from the next call.
    pub fn set_config(&self, config: LimitsConfig) {
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
    }

    /// The locks this guard took or lifted, waiting to be shared.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// How long a credential lock lasts.
    pub fn lockout(&self) -> Duration {
        self.config().lockout
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key_id` (or an `otp:` lock id) is locked after failures.
    pub fn key_locked(&self, key_id: &str) -> bool {
        let now = Instant::now();
        let state = self.state();
        let map = if key_id.starts_with(OTP_LOCK_PREFIX) {
            &state.otp_failures
        } else {
            &state.failures
        };
        map.get(key_id)
            .and_then(|f| f.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Counts a failed authentication; returns true when it locks the id.
    /// Key ids are the caller's choice: past [`MAX_TRACKED`] ids, unlocked
    /// counts are forgotten first and then new ids go uncounted (their
    /// network's limit still applies).
    pub fn auth_failed(&self, key_id: &str) -> bool {
        let now = Instant::now();
        let lockout = self.config().lockout;
        let mut state = self.state();
        let entry = if key_id.starts_with(OTP_LOCK_PREFIX) {
            state
                .otp_failures
                .entry(key_id.to_owned())
                .or_insert_with(|| Failures::new(now))
        } else {
            // Only unlocked counts untouched for a lockout period give way.
            let State {
                failures,
                failures_sweep,
                ..
            } = &mut *state;
            let Some(entry) = bounded_entry(
                failures,
                failures_sweep,
                key_id.to_owned(),
                || Failures::new(now),
                |f| {
                    f.locked_until.is_none_or(|until| now >= until)
                        && now.duration_since(f.last) >= lockout
                },
            ) else {
                return false;
            };
            entry
        };
        if entry.locked_until.is_some_and(|until| now >= until) {
            *entry = Failures::new(now);
        }
        entry.last = now;
        entry.count += 1;
        if entry.count >= self.config().max_failed_auth && entry.locked_until.is_none() {
            entry.locked_until = Some(now + self.config().lockout);
            return true;
        }
        false
    }

    /// A successful authentication clears the failure count.
    pub fn auth_succeeded(&self, key_id: &str) {
        let mut state = self.state();
        let map = if key_id.starts_with(OTP_LOCK_PREFIX) {
            &mut state.otp_failures
        } else {
            &mut state.failures
        };
        if map.get(key_id).is_some_and(|f| f.locked_until.is_none()) {
            map.remove(key_id);
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
        let otp_lock = format!("{OTP_LOCK_PREFIX}{name}");
        let second_factor = state
            .otp_failures
            .remove(&otp_lock)
            .and_then(|f| f.locked_until)
            .is_some_and(|t| now < t);
        self.outbox.unlocked(LockTarget::Principal(name.to_owned()));
        self.outbox.unlocked(LockTarget::Credential(otp_lock));
        anomaly || second_factor
    }

    /// Whether `peer`'s network has failed authentication too often in the
    /// current window: its calls are then refused before authentication.
    pub fn network_refused(&self, peer: IpAddr) -> bool {
        let now = Instant::now();
        let window = self.config().refusal_window;
        let state = self.state();
        // Every call asks: skip naming the network while nothing failed.
        if state.network_failures.is_empty() {
            return false;
        }
        state
            .network_failures
            .get(&failure_network(peer))
            .is_some_and(|w| {
                now.duration_since(w.start) < window
                    && w.count >= self.config().max_failed_auth_per_network
            })
    }

    /// Counts a failed authentication from `peer`'s network.
    pub fn network_failed(&self, peer: IpAddr) {
        let now = Instant::now();
        let window = self.config().refusal_window;
        let mut state = self.state();
        let State {
            network_failures,
            network_sweep,
            ..
        } = &mut *state;
        // A full map of live windows tracks no newcomer: it never refuses
        // a network it does not count (a flood of networks must not lock
        // every new client out), and API keys cannot be guessed anyway;
        // the limit is about cost, which refusal aggregation also bounds.
        let Some(w) = bounded_entry(
            network_failures,
            network_sweep,
            failure_network(peer),
            || Window {
                start: now,
                count: 0,
            },
            |w| now.duration_since(w.start) >= window,
        ) else {
            return;
        };
        if now.duration_since(w.start) >= window {
            *w = Window {
                start: now,
                count: 0,
            };
        }
        w.count = w.count.saturating_add(1);
    }

    /// Takes one call from the principal's bucket for `rpc`; when empty,
    /// the time until the next call is allowed.
    pub fn take(&self, principal: &str, rpc: &str) -> Result<(), Duration> {
        self.take_n(principal, rpc, 1)
    }

    /// Takes `n` calls at once (a batch costs one per item, SECURITY.md
    /// §5.6); nothing is taken when the bucket holds fewer.
    pub fn take_n(&self, principal: &str, rpc: &str, n: usize) -> Result<(), Duration> {
        let n = f64::from(u32::try_from(n).unwrap_or(u32::MAX));
        let now = Instant::now();
        let (rate, burst) = (self.config().rate_per_second, self.config().burst.max(1.0));
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
        if bucket.tokens >= n {
            bucket.tokens -= n;
            Ok(())
        } else {
            let wait = if rate > 0.0 {
                (n.min(burst) - bucket.tokens) / rate
            } else {
                60.0
            };
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }

    /// Locks `principal` for the lockout period.
    fn lock(&self, state: &mut State, principal: &str) {
        let until = self.config().anomaly_lock.map(|d| Instant::now() + d);
        state.locked_principals.insert(principal.to_owned(), until);
        self.outbox
            .locked(LockTarget::Principal(principal.to_owned()), until);
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
            .record(n, now, &self.config().volume);
        if !spike {
            return None;
        }
        let locked = self.config().lock_on_anomaly;
        if locked {
            self.lock(&mut state, principal);
        }
        Some(Anomaly::DetokenizeVolume { locked })
    }

    /// Records that `principal` called from `peer`; the anomaly when the
    /// network is new to it.
    pub fn called_from(&self, principal: &str, peer: IpAddr) -> Option<Anomaly> {
        if !self.config().alert_on_new_network {
            return None;
        }
        let mut state = self.state();
        if !state.networks.record(principal, &network_of(peer)) {
            return None;
        }
        let locked = self.config().lock_on_new_network;
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
        if window.count != self.config().not_found_per_minute + 1 {
            return None;
        }
        let locked = self.config().lock_on_anomaly;
        if locked {
            self.lock(&mut state, principal);
        }
        Some(Anomaly::TokenEnumeration { locked })
    }
}

/// Locks other replicas took or lifted apply here too; they are not noted
/// for sharing again.
impl LockTaker for Guard {
    fn take_lock(&self, target: &LockTarget, lock: SharedLock) {
        let until = match lock.until_ms {
            Some(ms) => match instant_of(ms) {
                Some(t) => Some(t),
                // Already over.
                None => return,
            },
            None => None,
        };
        let now = Instant::now();
        let mut state = self.state();
        match target {
            LockTarget::Principal(name) => {
                state.locked_principals.insert(name.clone(), until);
            }
            LockTarget::Credential(id) => {
                // A credential lock always ends; one without an end is
                // taken for the configured period.
                let until = until.unwrap_or(now + self.config().lockout);
                let map = if id.starts_with(OTP_LOCK_PREFIX) {
                    &mut state.otp_failures
                } else {
                    &mut state.failures
                };
                let entry = map.entry(id.clone()).or_insert_with(|| Failures::new(now));
                entry.count = entry.count.max(self.config().max_failed_auth);
                entry.locked_until = Some(until);
                entry.last = now;
            }
        }
    }

    fn lift_lock(&self, target: &LockTarget) {
        let mut state = self.state();
        match target {
            LockTarget::Principal(name) => {
                state.locked_principals.remove(name);
            }
            LockTarget::Credential(id) => {
                state.otp_failures.remove(id);
                state.failures.remove(id);
            }
        }
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

    /// Finding 6: a batch cost one rate-limit token however many items it
    /// carried.
    #[test]
    fn a_batch_costs_one_token_per_item() {
        let g = guard(LimitsConfig {
            rate_per_second: 1.0,
            burst: 1000.0,
            ..LimitsConfig::default()
        });
        assert!(g.take_n("p", "DetokenizeBatch", 600).is_ok());
        assert!(g.take_n("p", "DetokenizeBatch", 600).is_err());
        assert!(g.take_n("p", "DetokenizeBatch", 400).is_ok());
    }

    /// Finding 7: the failure map grew without bound with attacker-chosen
    /// key ids, and made-up keys were limited by nothing before
    /// authentication.
    #[test]
    fn failures_are_bounded_and_limited_per_network() {
        let g = guard(LimitsConfig {
            max_failed_auth_per_network: 5,
            ..LimitsConfig::default()
        });
        for n in 0..(MAX_TRACKED * 3) {
            g.auth_failed(&format!("{n:016x}"));
        }
        assert!(g.state().failures.len() <= MAX_TRACKED);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let neighbour: IpAddr = "203.0.113.77".parse().unwrap();
        for _ in 0..5 {
            assert!(!g.network_refused(peer));
            g.network_failed(peer);
        }
        assert!(g.network_refused(peer));
        assert!(g.network_refused(neighbour), "the same /24");
        assert!(!g.network_refused("198.51.100.1".parse().unwrap()));
        for n in 0..(MAX_TRACKED * 2) {
            let ip = std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                u16::try_from(n % 65_536).unwrap(),
                u16::try_from(n / 65_536).unwrap(),
                0,
                0,
                0,
                1,
            );
            g.network_failed(IpAddr::V6(ip));
        }
        assert!(g.state().network_failures.len() <= MAX_TRACKED);
    }

    /// Review finding: a flood of made-up key ids evicted (and so reset) a
    /// principal's count of wrong TOTP codes.
    #[test]
    fn a_key_id_flood_never_resets_a_second_factor_count() {
        let g = guard(LimitsConfig::default());
        let otp = format!("{OTP_LOCK_PREFIX}alice");
        for _ in 0..9 {
            assert!(!g.auth_failed(&otp));
        }
        for n in 0..(MAX_TRACKED * 2) {
            g.auth_failed(&format!("{n:016x}"));
        }
        assert!(g.auth_failed(&otp), "the tenth wrong code still locks");
        assert!(g.key_locked(&otp));
    }

    /// Review findings: one attacker's IPv6 /48 filled the network map
    /// with /64s; and a full map must not lock every new client out.
    #[test]
    fn networks_are_sites_and_a_full_map_refuses_no_newcomer() {
        let g = guard(LimitsConfig {
            max_failed_auth_per_network: 3,
            ..LimitsConfig::default()
        });
        for n in 0..(MAX_TRACKED * 2) {
            let v4 = std::net::Ipv4Addr::from(u32::try_from(n).unwrap() << 8);
            g.network_failed(IpAddr::V4(v4));
        }
        assert!(g.state().network_failures.len() <= MAX_TRACKED);
        let newcomer: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(!g.network_refused(newcomer));
        let same_site: IpAddr = "2001:db8:1:ffff::1".parse().unwrap();
        let g = guard(LimitsConfig {
            max_failed_auth_per_network: 3,
            ..LimitsConfig::default()
        });
        for n in 0..3u16 {
            g.network_failed(IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 1, n, 0, 0, 0, 1,
            )));
        }
        assert!(g.network_refused(same_site), "one /48 is one bucket");
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
