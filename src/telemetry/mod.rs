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
//!
//! Labels carry RPC and service names from the compiled descriptors, gRPC
//! code names, KMS operation names, tenant ids and key versions only: never
//! a token, a PAN, a principal's name or key, or a key id.

pub mod exporter;
pub mod logging;
pub mod names;
pub mod request_id;
pub mod rpc;

/// `n` as a metric value (counts beyond 2^32 saturate; none get there).
pub fn count(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}
