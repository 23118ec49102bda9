//! `[metrics]`: the Prometheus endpoint.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Profile;
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
    ///
    /// A client CA makes scraper certificates required: an optional
    /// certificate would authenticate no scraper (review finding), so
    /// `client_ca_file` without `require_client_cert = true` is refused.
    /// Under `--dev` the endpoint binds loopback, like every listener.
    pub fn check(
        &self,
        profile: Profile,
        problems: &mut Problems,
    ) -> Option<Option<MetricsEndpoint>> {
        let Some(listen) = &self.listen else {
            if self.tls.is_some() {
                problems.add("metrics.listen", "required with [metrics.tls]");
                return None;
            }
            return Some(None);
        };
        let tls = match &self.tls {
            Some(tls) => {
                if tls.client_ca_file.is_some() && !tls.require_client_cert {
                    problems.add(
                        "metrics.tls.require_client_cert",
                        "must be true with client_ca_file: an optional certificate keeps no scraper out",
                    );
                    return None;
                }
                Some(tls.check("metrics.tls", problems)?)
            }
            None => None,
        };
        let Ok(listen) = listen.parse::<SocketAddr>() else {
            problems.add("metrics.listen", "not a socket address (HOST:PORT)");
            return None;
        };
        if profile == Profile::Dev && !listen.ip().is_loopback() {
            problems.add("metrics.listen", "--dev binds loopback addresses only");
            return None;
        }
        if tls.is_none() && !listen.ip().is_loopback() {
            problems.add(
                "metrics.listen",
                "off loopback the endpoint needs [metrics.tls] (cert_file, key_file, and \
                 client_ca_file with require_client_cert = true to admit only scrapers \
                 holding a certificate)",
            );
            return None;
        }
        Some(Some(MetricsEndpoint { listen, tls }))
    }
}
