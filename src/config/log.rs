//! `[log]` and `[health]`: what operators watch besides metrics.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Profile;
use super::problems::Problems;
use crate::telemetry::logging::{LogFormat, LogSettings, OtlpSettings};

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// `human` (one line per event) or `json` (one object per line, for a
    /// log shipper).
    pub format: String,
    /// A `tracing` filter (`info`, `warn,tessera=debug`); `RUST_LOG`
    /// overrides it.
    pub level: String,
    /// Export spans to this OpenTelemetry collector over OTLP/gRPC
    /// (`http://collector:4317`); needs the `otlp` cargo feature.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` spans carry.
    pub service_name: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "human".to_owned(),
            level: "info".to_owned(),
            otlp_endpoint: None,
            service_name: "tessera".to_owned(),
        }
    }
}

impl RawLog {
    /// Checks every key.
    pub fn check(&self, profile: Profile, problems: &mut Problems) -> Option<LogSettings> {
        let before = problems.count();
        let format = match self.format.as_str() {
            "human" => Some(LogFormat::Human),
            "json" => Some(LogFormat::Json),
            _ => {
                problems.add("log.format", "expected human or json");
                None
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            problems.add(
                "log.level",
                "not a tracing filter (such as info, or warn,tessera=debug)",
            );
        }
        let otlp = self.otlp_endpoint.as_ref().map(|endpoint| {
            if !cfg!(feature = "otlp") {
                problems.add(
                    "log.otlp_endpoint",
                    "this build lacks the otlp cargo feature (cargo build --features otlp)",
                );
            }
            let uri = endpoint
                .parse::<http::Uri>()
                .ok()
                .filter(|_| endpoint.starts_with("http://") || endpoint.starts_with("https://"));
            let on_this_host = uri.as_ref().and_then(http::Uri::host).is_some_and(|h| {
                h == "localhost"
                    || h.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if uri.is_none() {
                problems.add("log.otlp_endpoint", "expected http://HOST:PORT or https://…");
            } else if super::has_credentials(endpoint) {
                problems.add("log.otlp_endpoint", "holds credentials; none belong in a URL");
            } else if profile == Profile::Production
                && endpoint.starts_with("http://")
                && !on_this_host
            {
                // Spans name principals, tenants and request ids.
                problems.add(
                    "log.otlp_endpoint",
                    "plaintext http:// only to a collector on this host; use https:// across a network",
                );
            }
            OtlpSettings {
                endpoint: endpoint.clone(),
                service_name: self.service_name.clone(),
            }
        });
        (problems.count() == before).then(|| LogSettings {
            format: format.unwrap_or(LogFormat::Human),
            level: self.level.clone(),
            otlp,
        })
    }
}

/// `[health]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHealth {
    /// A second, plaintext listener serving only `grpc.health.v1`, for
    /// probes that cannot speak TLS (kubelet's gRPC probes). It answers
    /// SERVING or NOT_SERVING and nothing else.
    pub listen: Option<String>,
}

impl RawHealth {
    /// `Some(None)`: no health listener.
    pub fn check(&self, profile: Profile, problems: &mut Problems) -> Option<Option<SocketAddr>> {
        let Some(listen) = &self.listen else {
            return Some(None);
        };
        let Ok(addr) = listen.parse::<SocketAddr>() else {
            problems.add("health.listen", "not a socket address (HOST:PORT)");
            return None;
        };
        if profile == Profile::Dev && !addr.ip().is_loopback() {
            problems.add("health.listen", "--dev binds loopback addresses only");
            return None;
        }
        Some(Some(addr))
    }
}
