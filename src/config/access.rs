//! `[access]`: rate limits, lockout, anomaly rules, dual control, sessions
//! and the state key; and `[audit]`, the audit log's policy and sinks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::Problems;
use crate::access::anomaly::VolumeRule;
use crate::access::limits::LimitsConfig;
use crate::audit::sink::SinkTarget;

/// `[access]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAccess {
    /// Sustained calls per second per principal and RPC.
    pub rate_per_second: u32,
    /// Burst (default: twice the rate).
    pub burst: Option<u32>,
    /// Failed authentications before a key id locks: 1 to 10 (PCI DSS 8.3.4).
    pub max_failed_auth: u32,
    /// Lock duration in minutes: at least 30 (PCI DSS 8.3.4).
    pub lockout_minutes: u64,
    /// NOT_FOUND answers per principal per minute before an enumeration
    /// alert.
    pub not_found_per_minute: u32,
    /// Lock a principal on an enumeration alert.
    pub lock_on_anomaly: bool,
    /// Minutes an anomaly lock lasts; 0: until an admin unlocks.
    pub anomaly_lock_minutes: u64,
    /// Minutes a dual-control request waits for its second admin.
    pub approval_window_minutes: u64,
    /// TOTP time step in seconds (30, as authenticator apps use).
    pub totp_step_seconds: u64,
    /// Detokenize-volume rule: alert when a window holds more than this
    /// many times the principal's baseline …
    pub detokenize_spike_factor: f64,
    /// … and more than this many detokenizes.
    pub detokenize_spike_floor: u64,
    /// Length of a volume window in seconds.
    pub volume_window_seconds: u64,
    /// Detokenizes in a principal's first window (while its baseline is
    /// learned) above which it alerts anyway.
    pub detokenize_learning_limit: u64,
    /// Failed authentications from one network (IPv4 /24, IPv6 /64) per
    /// window before its calls are refused unauthenticated.
    pub max_failed_auth_per_network: u32,
    /// Length of that window, and of the window refused calls are counted
    /// in for one aggregated audit event, in seconds.
    pub refusal_window_seconds: u64,
    /// Lifetime of an admin session in minutes: 1 to 60.
    pub session_minutes: u64,
    /// Alert on a call from a network new to the principal.
    pub alert_on_new_network: bool,
    /// Also lock the principal then.
    pub lock_on_new_network: bool,
    /// The 32-byte key that seals shared state (principals, approvals,
    /// sessions, locks) in the store. Every replica of one vault needs the
    /// same file. Default: `DATA_DIR/state.key`, created when missing,
    /// which suits one node; required in production with PostgreSQL.
    pub state_key_file: Option<PathBuf>,
    /// How often a replica polls the store for changes made by the others
    /// (PostgreSQL), in milliseconds: 100 to 60000.
    pub shared_poll_ms: u64,
    /// Minutes an approved export serves its operator: 1 to 1440.
    pub export_minutes: u64,
}

impl Default for RawAccess {
    fn default() -> Self {
        let volume = VolumeRule::default();
        Self {
            rate_per_second: 10_000,
            burst: None,
            max_failed_auth: 10,
            lockout_minutes: 30,
            not_found_per_minute: 100,
            lock_on_anomaly: true,
            anomaly_lock_minutes: 0,
            approval_window_minutes: 15,
            totp_step_seconds: 30,
            detokenize_spike_factor: volume.factor,
            detokenize_spike_floor: volume.floor,
            volume_window_seconds: volume.window.as_secs(),
            detokenize_learning_limit: volume.learning_limit,
            max_failed_auth_per_network: 100,
            refusal_window_seconds: 60,
            session_minutes: crate::access::sessions::DEFAULT_SESSION_TTL.as_secs() / 60,
            alert_on_new_network: true,
            lock_on_new_network: false,
            state_key_file: None,
            shared_poll_ms: 1_000,
            export_minutes: crate::access::exports::DEFAULT_EXPORT_LIFETIME.as_secs() / 60,
        }
    }
}

/// The checked `[access]`, but for the state key, which depends on the
/// store and the data directory.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessSettings {
    /// Rate limits, lockout, anomaly detection.
    pub limits: LimitsConfig,
    /// How long a dual-control request waits for its second admin.
    pub approval_window: Duration,
    /// TOTP time step.
    pub otp_step: Duration,
    /// How often replicas poll for each other's changes.
    pub shared_poll: Duration,
    /// How long an approved export serves.
    pub export_lifetime: Duration,
}

impl RawAccess {
    /// Checks every key.
    pub fn check(&self, problems: &mut Problems) -> Option<AccessSettings> {
        let rate = problems.in_range(
            "access.rate_per_second",
            self.rate_per_second,
            1..=u32::MAX,
            "must be positive",
        );
        let max_failed_auth = problems.in_range(
            "access.max_failed_auth",
            self.max_failed_auth,
            1..=10,
            "must be 1 to 10 (PCI DSS 8.3.4)",
        );
        let lockout_minutes = problems.in_range(
            "access.lockout_minutes",
            self.lockout_minutes,
            30..=u64::MAX / 60,
            "must be at least 30 (PCI DSS 8.3.4)",
        );
        let factor = if self.detokenize_spike_factor.is_finite() {
            problems.in_range(
                "access.detokenize_spike_factor",
                self.detokenize_spike_factor,
                1.0..=f64::MAX,
                "must be at least 1",
            )
        } else {
            problems.add("access.detokenize_spike_factor", "must be at least 1");
            None
        };
        let window = problems.in_range(
            "access.volume_window_seconds",
            self.volume_window_seconds,
            1..=3600,
            "must be 1 to 3600",
        );
        let refusal_window = problems.in_range(
            "access.refusal_window_seconds",
            self.refusal_window_seconds,
            1..=3600,
            "must be 1 to 3600",
        );
        let session_minutes = problems.in_range(
            "access.session_minutes",
            self.session_minutes,
            1..=60,
            "must be 1 to 60",
        );
        let approval_minutes = problems.in_range(
            "access.approval_window_minutes",
            self.approval_window_minutes,
            1..=24 * 60,
            "must be 1 to 1440",
        );
        let otp_step = problems.in_range(
            "access.totp_step_seconds",
            self.totp_step_seconds,
            1..=300,
            "must be 1 to 300",
        );
        let shared_poll = problems.in_range(
            "access.shared_poll_ms",
            self.shared_poll_ms,
            100..=60_000,
            "must be 100 to 60000",
        );
        let export_minutes = problems.in_range(
            "access.export_minutes",
            self.export_minutes,
            1..=24 * 60,
            "must be 1 to 1440",
        );
        let rate = f64::from(rate?);
        Some(AccessSettings {
            limits: LimitsConfig {
                rate_per_second: rate,
                burst: self.burst.map_or(rate * 2.0, f64::from).max(1.0),
                max_failed_auth: max_failed_auth?,
                lockout: Duration::from_secs(lockout_minutes? * 60),
                not_found_per_minute: self.not_found_per_minute.max(1),
                lock_on_anomaly: self.lock_on_anomaly,
                anomaly_lock: Some(self.anomaly_lock_minutes)
                    .filter(|m| *m > 0)
                    .map(|m| Duration::from_secs(m.saturating_mul(60))),
                volume: VolumeRule {
                    window: Duration::from_secs(window?),
                    factor: factor?,
                    floor: self.detokenize_spike_floor,
                    learning_limit: self.detokenize_learning_limit,
                },
                alert_on_new_network: self.alert_on_new_network,
                lock_on_new_network: self.lock_on_new_network,
                max_failed_auth_per_network: self.max_failed_auth_per_network.max(1),
                refusal_window: Duration::from_secs(refusal_window?),
                session_ttl: Duration::from_secs(session_minutes? * 60),
            },
            approval_window: Duration::from_secs(approval_minutes? * 60),
            otp_step: Duration::from_secs(otp_step?),
            shared_poll: Duration::from_millis(shared_poll?),
            export_lifetime: Duration::from_secs(export_minutes? * 60),
        })
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAudit {
    /// Let tokenize succeed when its audit event cannot be written (false:
    /// fail closed, like detokenize and admin calls).
    pub tokenize_fail_open: bool,
    /// Second sink: append every event as a JSON line to this file.
    pub jsonl_file: Option<PathBuf>,
    /// Second sink: send every event to this syslog socket (e.g. /dev/log).
    pub syslog_socket: Option<PathBuf>,
}

impl RawAudit {
    /// The second sinks.
    pub fn sinks(&self) -> Vec<SinkTarget> {
        self.jsonl_file
            .clone()
            .map(SinkTarget::JsonLines)
            .into_iter()
            .chain(self.syslog_socket.clone().map(SinkTarget::Syslog))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults of `[access]` are the limits every embedder gets.
    #[test]
    fn the_default_section_checks_to_the_default_limits() {
        let checked = RawAccess::default()
            .check(&mut Problems::default())
            .unwrap();
        assert_eq!(checked.limits, LimitsConfig::default());
    }
}
