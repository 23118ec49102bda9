//! Anomaly rules beyond rate limits: the shapes of traffic a stolen key
//! produces.
//!
//! - **Token enumeration**: many NOT_FOUND answers (counted in `limits`).
//! - **Detokenize volume**: a principal's detokenizes in the current window
//!   far above its own baseline (an exponentially weighted mean of earlier
//!   windows) and above an absolute floor, so quiet principals do not
//!   alert on their first busy minute.
//! - **New peer network**: a principal calling from a network (IPv4 /24,
//!   IPv6 /64) it has not used before; the first network is learned.
//!
//! Pure state machines with the clock passed in, so the rules are tested
//! without waiting.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// An anomaly worth an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// Many NOT_FOUND answers: someone is guessing tokens.
    TokenEnumeration {
        /// Whether the principal was locked for it.
        locked: bool,
    },
    /// Detokenize volume far above the principal's baseline.
    DetokenizeVolume {
        /// Whether the principal was locked for it.
        locked: bool,
    },
    /// A call from a network the principal has not used before.
    NewNetwork {
        /// Whether the principal was locked for it.
        locked: bool,
    },
}

impl Anomaly {
    /// Every [`Anomaly::kind`].
    pub const KINDS: [&'static str; 3] = ["token_enumeration", "detokenize_volume", "new_network"];

    /// The alert's name in logs, metrics and audit events.
    pub fn kind(self) -> &'static str {
        match self {
            Self::TokenEnumeration { .. } => "token_enumeration",
            Self::DetokenizeVolume { .. } => "detokenize_volume",
            Self::NewNetwork { .. } => "new_network",
        }
    }

    /// Whether the principal was locked.
    pub fn locked(self) -> bool {
        match self {
            Self::TokenEnumeration { locked }
            | Self::DetokenizeVolume { locked }
            | Self::NewNetwork { locked } => locked,
        }
    }
}

/// Thresholds of the volume rule.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRule {
    /// Length of one counting window.
    pub window: Duration,
    /// Alert when a window exceeds `factor` × the baseline …
    pub factor: f64,
    /// … and this many detokenizes.
    pub floor: u64,
    /// While a principal's first window is still teaching the baseline,
    /// more than this many detokenizes in it is an alert on its own: a new
    /// key must not learn a bulk read as normal. The learned baseline is
    /// capped here too.
    pub learning_limit: u64,
}

impl Default for VolumeRule {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            factor: 10.0,
            floor: 1000,
            learning_limit: 1000,
        }
    }
}

/// Weight of the newest window in the baseline.
const BASELINE_WEIGHT: f64 = 0.3;

/// One principal's detokenize volume.
#[derive(Debug)]
pub struct VolumeBaseline {
    start: Instant,
    count: u64,
    baseline: Option<f64>,
    alerted: bool,
}

impl VolumeBaseline {
    /// A principal first seen at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            start: now,
            count: 0,
            baseline: None,
            alerted: false,
        }
    }

    /// Counts `n` detokenizes at `now`; true when this crosses the rule
    /// (once per window).
    pub fn record(&mut self, n: u64, now: Instant, rule: &VolumeRule) -> bool {
        let window = rule.window.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= window {
            let windows = elapsed.as_nanos() / window.as_nanos();
            // Close the window, then decay over the idle ones after it.
            let closed = u32::try_from(self.count).map_or(f64::MAX, f64::from);
            let mut baseline = match self.baseline {
                // A first window is learned at most up to the limit.
                None => closed.min(u32::try_from(rule.learning_limit).map_or(f64::MAX, f64::from)),
                Some(b) => b + BASELINE_WEIGHT * (closed - b),
            };
            let idle = i32::try_from(windows.saturating_sub(1)).unwrap_or(i32::MAX);
            baseline *= (1.0 - BASELINE_WEIGHT).powi(idle);
            self.baseline = Some(baseline);
            self.start += window * u32::try_from(windows).unwrap_or(u32::MAX);
            self.count = 0;
            self.alerted = false;
        }
        self.count = self.count.saturating_add(n);
        let Some(baseline) = self.baseline else {
            // Still learning: the first window sets the baseline, and a hard
            // limit applies meanwhile (finding 6: 8 batches of 1,000 PANs in
            // a new key's first minute raised nothing).
            if self.count > rule.learning_limit && !self.alerted {
                self.alerted = true;
                return true;
            }
            return false;
        };
        let current = u32::try_from(self.count).map_or(f64::MAX, f64::from);
        let over = self.count > rule.floor && current > rule.factor * baseline.max(1.0);
        if over && !self.alerted {
            self.alerted = true;
            return true;
        }
        false
    }
}

/// The network an address belongs to for the new-network rule.
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The networks each principal has called from.
#[derive(Debug, Default)]
pub struct KnownNetworks {
    seen: HashMap<String, HashSet<String>>,
}

impl KnownNetworks {
    /// Records a call by `principal` from `network`; true when the network
    /// is new for a principal that already had one.
    /// Each principal remembers at most [`MAX_NETWORKS_PER_PRINCIPAL`]
    /// networks (peers choose them); past that, calls from unremembered
    /// networks keep alerting.
    pub fn record(&mut self, principal: &str, network: &str) -> bool {
        let networks = self.seen.entry(principal.to_owned()).or_default();
        if networks.contains(network) {
            return false;
        }
        let first = networks.is_empty();
        if networks.len() < MAX_NETWORKS_PER_PRINCIPAL {
            networks.insert(network.to_owned());
        }
        !first
    }
}

/// Networks remembered per principal by the new-network rule.
pub const MAX_NETWORKS_PER_PRINCIPAL: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_lists_every_kind() {
        let kinds = [
            Anomaly::TokenEnumeration { locked: false },
            Anomaly::DetokenizeVolume { locked: false },
            Anomaly::NewNetwork { locked: false },
        ]
        .map(Anomaly::kind);
        assert_eq!(kinds, Anomaly::KINDS);
    }

    fn rule() -> VolumeRule {
        VolumeRule {
            window: Duration::from_secs(60),
            factor: 10.0,
            floor: 100,
            learning_limit: 10_000,
        }
    }

    /// Finding 6: the rule was blind during a principal's first window
    /// (8 batches of 1,000 PANs raised nothing and became the baseline).
    #[test]
    fn a_hard_limit_applies_while_learning_and_caps_the_baseline() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let learning = VolumeRule {
            learning_limit: 2000,
            ..rule()
        };
        let mut v = VolumeBaseline::new(t0);
        assert!(!v.record(1000, t0, &learning));
        assert!(!v.record(1000, t0, &learning));
        assert!(
            v.record(1000, t0, &learning),
            "3,000 > 2,000 while learning"
        );
        for _ in 0..5 {
            assert!(!v.record(1000, t0, &learning), "once per window");
        }
        // The baseline learned 2,000, not 8,000: 25,000 next minute alerts.
        assert!(v.record(25_000, t0 + minute, &learning));
    }

    #[test]
    fn volume_far_above_baseline_alerts_once_per_window() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut v = VolumeBaseline::new(t0);
        // Learning window: even a burst does not alert.
        assert!(!v.record(500, t0, &rule()));
        // Baseline 500; 4000 is below 10×.
        assert!(!v.record(4000, t0 + minute, &rule()));
        // Baseline now 500 + 0.3 × 3500 = 1550; 20000 crosses 15500.
        let t2 = t0 + 2 * minute;
        assert!(!v.record(15_000, t2, &rule()));
        assert!(v.record(1000, t2, &rule()));
        assert!(!v.record(1000, t2, &rule()), "once per window");
    }

    #[test]
    fn quiet_principals_need_the_floor() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut v = VolumeBaseline::new(t0);
        v.record(1, t0, &rule());
        // 50 is 50× the baseline but below the floor of 100.
        assert!(!v.record(50, t0 + minute, &rule()));
        assert!(v.record(60, t0 + minute, &rule()));
    }

    #[test]
    fn idle_windows_decay_the_baseline() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut v = VolumeBaseline::new(t0);
        v.record(1000, t0, &rule());
        // Ten idle minutes: 1000 × 0.7^9 ≈ 40, so 1000 is now a spike.
        assert!(v.record(1000, t0 + 10 * minute, &rule()));
    }

    #[test]
    fn first_network_is_learned_then_new_ones_alert() {
        let mut known = KnownNetworks::default();
        assert!(!known.record("p", "10.0.0.0/24"));
        assert!(!known.record("p", "10.0.0.0/24"));
        assert!(known.record("p", "192.168.1.0/24"));
        assert!(!known.record("p", "192.168.1.0/24"), "alerted once");
        assert!(!known.record("q", "192.168.1.0/24"), "per principal");
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(network_of("10.1.2.3".parse().unwrap()), "10.1.2.0/24");
        assert_eq!(
            network_of("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.0/24"
        );
        assert_eq!(
            network_of("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }
}
