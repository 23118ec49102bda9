//! Every metric's name, in one place: the code records through these, and
//! the tests hold `deploy/`'s alert rules and dashboard to them.

/// Gauge 1 labelled with `version`.
pub const BUILD_INFO: &str = "tessera_build_info";
/// Counter of calls by `service`, `rpc`, `code`.
pub const GRPC_CALLS: &str = super::rpc::CALLS;
/// Histogram of call latency by `service`, `rpc` (seconds).
pub const GRPC_DURATION: &str = super::rpc::DURATION;
/// Histogram of items per batch call by `rpc`.
pub const BATCH_ITEMS: &str = "tessera_grpc_batch_items";
/// Histogram of writes per group commit.
pub const COMMIT_ITEMS: &str = "tessera_commit_batch_items";
/// Histogram of one group commit's store write and flush (seconds).
pub const COMMIT_SECONDS: &str = "tessera_commit_flush_seconds";
/// Counter of group commits the store failed.
pub const COMMIT_FAILURES: &str = "tessera_commit_failures_total";
/// Gauge 1 while the last store ping answered.
pub const STORE_UP: &str = "tessera_store_up";
/// Histogram of store pings (seconds).
pub const STORE_PING_SECONDS: &str = "tessera_store_ping_seconds";
/// Histogram of KMS calls by `op` (seconds).
pub const KMS_SECONDS: &str = "tessera_kms_call_duration_seconds";
/// Counter of failed KMS calls by `op` and `kind`.
pub const KMS_ERRORS: &str = "tessera_kms_errors_total";
/// Gauge 0 after a KMS call found the backend unreachable, 1 after one
/// that reached it.
pub const KMS_UP: &str = "tessera_kms_up";
/// Histogram of an audited write's wait until durable (seconds).
pub const AUDIT_APPEND_SECONDS: &str = "tessera_audit_append_seconds";
/// Counter of audit events that could not be written.
pub const AUDIT_FAILURES: &str = "tessera_audit_failures_total";
/// Counter of events a second audit sink did not take.
pub const AUDIT_SINK_FAILURES: &str = "tessera_audit_sink_failures_total";
/// Counter of audit log recoveries.
pub const AUDIT_RECOVERIES: &str = "tessera_audit_recoveries_total";
/// Gauge 1 while the vault is sealed.
pub const SEALED: &str = "tessera_sealed";
/// Gauge: the master key version, where the backend numbers them.
pub const MASTER_KEY_VERSION: &str = "tessera_master_key_version";
/// Gauge: each tenant's active data key version, by `tenant`.
pub const DATA_KEY_ACTIVE_VERSION: &str = "tessera_data_key_active_version";
/// Gauge: age of each data key version by `tenant`, `version` (seconds).
pub const DATA_KEY_AGE: &str = "tessera_data_key_age_seconds";
/// Gauge 1 when an active data key is past its cryptoperiod.
pub const DATA_KEY_OVERDUE: &str = "tessera_data_key_overdue";
/// Counter of calls refused by a rate limit, by `rpc`.
pub const RATE_LIMITED: &str = "tessera_rate_limited_total";
/// Counter of principals locked out after failed authentications.
pub const LOCKOUTS: &str = "tessera_lockouts_total";
/// Counter of anomalies by `kind`.
pub const ANOMALIES: &str = "tessera_anomalies_total";
/// Counter of PANs an approved export handed out, by `tenant`.
pub const EXPORTED: &str = "tessera_exported_pans_total";
/// Counter of configuration reloads (SIGHUP) by `outcome` (`applied`,
/// `refused`).
pub const CONFIG_RELOADS: &str = "tessera_config_reloads_total";

/// Every name above, for the checks of `deploy/`.
pub const ALL: &[&str] = &[
    BUILD_INFO,
    GRPC_CALLS,
    GRPC_DURATION,
    BATCH_ITEMS,
    COMMIT_ITEMS,
    COMMIT_SECONDS,
    COMMIT_FAILURES,
    STORE_UP,
    STORE_PING_SECONDS,
    KMS_SECONDS,
    KMS_ERRORS,
    KMS_UP,
    AUDIT_APPEND_SECONDS,
    AUDIT_FAILURES,
    AUDIT_SINK_FAILURES,
    AUDIT_RECOVERIES,
    SEALED,
    MASTER_KEY_VERSION,
    DATA_KEY_ACTIVE_VERSION,
    DATA_KEY_AGE,
    DATA_KEY_OVERDUE,
    RATE_LIMITED,
    LOCKOUTS,
    ANOMALIES,
    CONFIG_RELOADS,
    EXPORTED,
];
