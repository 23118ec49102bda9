//! Logs and metrics.
//!
//! Logs go to stderr through `tracing`, never with a request body. Metrics
//! are served in the Prometheus text format when `[metrics] listen` is set:
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `tessera_sealed` | | 1 while the vault is sealed |
//! | `tessera_data_key_age_seconds` | tenant, version | age of each data key version (cryptoperiods, PCI DSS 3.7.4) |
//! | `tessera_data_key_overdue` | tenant, version | 1 when an active data key is older than `keys.data_key_max_age_days` |
//!
//! Labels carry tenant ids and key versions only: never a token, a PAN or a
//! key.

use std::net::SocketAddr;

/// Metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint: {0}")]
pub struct MetricsError(String);

/// Installs the global logger (stderr, `RUST_LOG`, default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Installs the Prometheus recorder and serves `/metrics` on `addr`. Must run
/// inside the Tokio runtime.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), MetricsError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| MetricsError(e.to_string()))
}
