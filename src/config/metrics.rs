//! `[metrics]`: the Prometheus endpoint.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::problems::Problems;
use super::tls::RawTls;
use crate::telemetry::exporter::MetricsEndpoint;

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMetrics {
    /// Address for the Prometheus endpoint; unset = no endpoint.
    pub listen: Option<String>,
    /// TLS for the endpoint (`[metrics.tls]`, the keys of `[tls]`):
    /// required off loopback.
    pub tls: Option<RawTls>,
}

impl RawMetrics {
    /// Plaintext only on loopback, where a local agent scrapes it; any
    /// other address needs `[metrics.tls]`, in every profile.
    /// `Some(None)`: no endpoint.
    pub fn check(&self, problems: &mut Problems) -> Option<Option<MetricsEndpoint>> {
        let Some(listen) = &self.listen else {
            if self.tls.is_some() {
                problems.add("metrics.listen", "required with [metrics.tls]");
                return None;
            }
            return Some(None);
        };
        let tls = match &self.tls {
            Some(tls) => Some(tls.check("metrics.tls", problems)?),
            None => None,
        };
        let Ok(listen) = listen.parse::<SocketAddr>() else {
            problems.add("metrics.listen", "not a socket address (HOST:PORT)");
            return None;
        };
        if tls.is_none() && !listen.ip().is_loopback() {
            problems.add(
                "metrics.listen",
                "off loopback the endpoint needs [metrics.tls] (cert_file, key_file, and \
                 client_ca_file to require scraper certificates)",
            );
            return None;
        }
        Some(Some(MetricsEndpoint { listen, tls }))
    }
}
