//! Logs, request ids and metrics.
//!
//! Logs go to stderr through `tracing`, never with a request body; every
//! gRPC call runs in one `rpc` span naming its service, method and request
//! id ([`rpc`]). Metrics are served in the Prometheus text format when
//! `[metrics] listen` is set ([`exporter`]); their names are in [`names`]:
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `tessera_build_info` | version | 1 |
//! | `tessera_grpc_calls_total` | service, rpc, code | calls by outcome |
//! | `tessera_grpc_call_duration_seconds` | service, rpc | latency histogram, to the call's last byte |
//! | `tessera_grpc_batch_items` | rpc | items per batch call |
//! | `tessera_commit_batch_items` | | writes per group commit |
//! | `tessera_commit_flush_seconds` | | one group commit's write and flush |
//! | `tessera_commit_failures_total` | | group commits the store failed |
//! | `tessera_store_up`, `tessera_store_ping_seconds` | | the store answers, and how fast (every 5 s) |
//! | `tessera_kms_call_duration_seconds` | op | KMS latency |
//! | `tessera_kms_errors_total` | op, kind | failed KMS calls (`kind`: unavailable, sealed, refused, unwrap, other) |
//! | `tessera_kms_up` | | 0 after a call found the KMS unreachable |
//! | `tessera_audit_append_seconds` | | an audited write's wait until durable |
//! | `tessera_audit_failures_total` | | audit events not written |
//! | `tessera_audit_sink_failures_total` | | events a second sink did not take |
//! | `tessera_audit_recoveries_total` | | audit log recoveries |
//! | `tessera_sealed` | | 1 while the vault is sealed |
//! | `tessera_master_key_version` | | current master key version (backends that number them) |
//! | `tessera_data_key_active_version` | tenant | the version new tokens use |
//! | `tessera_data_key_age_seconds` | tenant, version | age of each data key version (cryptoperiods, PCI DSS 3.7.4) |
//! | `tessera_data_key_overdue` | tenant, version | 1 when an active data key is older than `keys.data_key_max_age_days` |
//! | `tessera_rate_limited_total` | rpc | calls refused by a rate limit |
//! | `tessera_lockouts_total` | | principals locked out |
//! | `tessera_anomalies_total` | kind | detokenize volume, not-found bursts, … |
//! | `tessera_config_reloads_total` | outcome | SIGHUP reloads, `applied` or `refused` |
//! | `tessera_exported_pans_total` | tenant | PANs handed out by approved exports |
//!
//! Labels carry RPC and service names from the compiled descriptors, gRPC
//! code names, KMS operation names, tenant ids and key versions only: never
//! a token, a PAN, a principal's name or key, or a key id.

pub mod exporter;
pub mod logging;
pub mod names;
pub mod request_id;
pub mod rpc;

pub use crate::leak::card_shaped;

/// `id` as a log field: itself, or when [`card_shaped`], a fingerprint of
/// it (the first 8 bytes of its SHA-256, in hex with a `_` between bytes,
/// so that no run of its digits can read as a card number either), so
/// that a caller cannot write a card number into the log through an
/// identifier of its choosing.
pub fn log_safe(id: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if card_shaped(id) {
        let digest = sha2::Sha256::digest(id.as_bytes());
        let bytes: Vec<String> = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        std::borrow::Cow::Owned(format!("sha256:{}", bytes.join("_")))
    } else {
        std::borrow::Cow::Borrowed(id)
    }
}

/// `n` as a metric value (counts beyond 2^32 saturate; none get there).
pub fn count(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: ten failed logins with the key
    /// `tsk_5555555555554444_…` wrote the card number into the lockout
    /// log line as its lock id.
    #[test]
    fn card_shaped_ids_are_logged_as_fingerprints() {
        assert!(log_safe("5555555555554444").starts_with("sha256:"));
        assert!(!log_safe("5555555555554444").contains("5555"));
        assert_eq!(log_safe("0a1b2c3d4e5f6a7b"), "0a1b2c3d4e5f6a7b");
        assert_eq!(log_safe("otp:admin"), "otp:admin");
    }
}
