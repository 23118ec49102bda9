//! The Prometheus endpoint: `GET /metrics` over HTTP/1.1, plaintext on
//! loopback (the default) or TLS with optional client certificates on any
//! address, configured as `[metrics]` and `[metrics.tls]`.
//!
//! The endpoint is ours rather than the exporter crate's listener, whose
//! HTTP has no TLS: a Prometheus on another host must reach it over the
//! network, and nothing Tessera serves off loopback is plaintext.
//! Connections are bounded in number, per peer address and in all, and in
//! how long their handshakes, headers and lives may take: a connection
//! past a bound is closed at once rather than queued, so a client holding
//! idle sockets cannot starve the scraper (review finding: sixteen idle
//! connections blocked every scrape, mutual TLS or not).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::names;
use crate::tls::{TlsError, TlsSettings};

/// Where the endpoint listens, and its TLS when not plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsEndpoint {
    /// The listen address.
    pub listen: SocketAddr,
    /// `None`: plaintext, loopback only.
    pub tls: Option<TlsSettings>,
}

/// Metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The recorder did not install (one per process).
    #[error("metrics recorder: {0}")]
    Install(String),
    /// The listener did not bind.
    #[error("metrics endpoint {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS material is unusable.
    #[error("metrics endpoint: {0}")]
    Tls(#[from] TlsError),
}

/// Latency buckets (seconds): from a cached detokenize to a stuck KMS.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Size buckets (items): a single call to the largest batch.
const ITEMS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
];

/// Most connections served at once; more are closed on arrival.
const MAX_CONNECTIONS: usize = 64;

/// Most connections from one peer address; more are closed on arrival.
/// A scraper needs one.
const MAX_PER_PEER: usize = 4;

/// How long a TLS handshake or a request's headers may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may live: a scrape takes milliseconds, and a
/// scraper reconnects for the next.
const MAX_LIFETIME: Duration = Duration::from_secs(60);

/// How often histograms are drained when no one scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process's Prometheus recorder: histograms of `*_seconds`
/// and `*_items` get fixed buckets (so `histogram_quantile` works across
/// replicas), and `tessera_build_info` names this build.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_items".into()), ITEMS_BUCKETS))
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Failure counters exist from the start at zero: Prometheus's
    // `increase` cannot see the first event of a series that appears with
    // it, and an alert on that first audit failure would never fire.
    for counter in [
        names::AUDIT_FAILURES,
        names::AUDIT_SINK_FAILURES,
        names::AUDIT_RECOVERIES,
        names::COMMIT_FAILURES,
        names::LOCKOUTS,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for kind in crate::access::anomaly::Anomaly::KINDS {
        metrics::counter!(names::ANOMALIES, "kind" => kind).absolute(0);
    }
    Ok(handle)
}

/// Binds `endpoint` and serves `handle`'s metrics on it until the process
/// ends. Returns the bound address (port 0 picks one).
pub async fn serve(
    endpoint: &MetricsEndpoint,
    handle: PrometheusHandle,
) -> Result<SocketAddr, MetricsError> {
    let tls = endpoint
        .tls
        .as_ref()
        .map(|t| crate::tls::rustls_server_config(t, &[b"http/1.1"]))
        .transpose()?
        .map(|config| TlsAcceptor::from(Arc::new(config)));
    let bind_error = |source| MetricsError::Bind {
        addr: endpoint.listen,
        source,
    };
    let listener = TcpListener::bind(endpoint.listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(accept(listener, tls, handle));
    Ok(addr)
}

/// Live connections, in all and by peer address.
#[derive(Debug, Default)]
struct Occupancy {
    total: usize,
    by_peer: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// A connection's place in [`Occupancy`], given back when it ends.
struct Seat {
    peer: std::net::IpAddr,
    occupancy: Arc<std::sync::Mutex<Occupancy>>,
}

impl Seat {
    /// A seat for `peer`, unless the endpoint or the peer is full.
    fn take(occupancy: &Arc<std::sync::Mutex<Occupancy>>, peer: std::net::IpAddr) -> Option<Self> {
        let mut held = occupancy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let of_peer = held.by_peer.get(&peer).copied().unwrap_or(0);
        if held.total >= MAX_CONNECTIONS || of_peer >= MAX_PER_PEER {
            return None;
        }
        held.total += 1;
        held.by_peer.insert(peer, of_peer + 1);
        Some(Self {
            peer,
            occupancy: Arc::clone(occupancy),
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut held = self
            .occupancy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.by_peer.remove(&self.peer);
            }
        }
    }
}

async fn accept(listener: TcpListener, tls: Option<TlsAcceptor>, handle: PrometheusHandle) {
    let occupancy = Arc::new(std::sync::Mutex::new(Occupancy::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, typically: wait rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(seat) = Seat::take(&occupancy, peer.ip()) else {
            tracing::debug!(%peer, "metrics endpoint: connection limit reached; closed");
            continue;
        };
        let (tls, handle) = (tls.clone(), handle.clone());
        tokio::spawn(async move {
            let _seat = seat;
            let served = async {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => serve_connection(stream, handle).await,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "metrics endpoint: TLS handshake failed");
                            }
                            Err(_) => tracing::debug!("metrics endpoint: TLS handshake timed out"),
                        }
                    }
                    None => serve_connection(stream, handle).await,
                }
            };
            if tokio::time::timeout(MAX_LIFETIME, served).await.is_err() {
                tracing::debug!("metrics endpoint: connection closed at its lifetime");
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, handle: PrometheusHandle)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = respond(&request, &handle);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
    }
}

fn respond<B>(request: &Request<B>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(handle.render()),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"GET only\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"metrics are at /metrics\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_are_bounded_per_peer_and_in_all_and_given_back() {
        let occupancy = Arc::new(std::sync::Mutex::new(Occupancy::default()));
        let one: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<Seat> = (0..MAX_PER_PEER)
            .map(|_| Seat::take(&occupancy, one).unwrap())
            .collect();
        assert!(
            Seat::take(&occupancy, one).is_none(),
            "a fifth from one peer"
        );
        let other: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        assert!(
            Seat::take(&occupancy, other).is_some(),
            "another peer still gets in"
        );
        drop(held);
        assert!(Seat::take(&occupancy, one).is_some());
        let mut all = Vec::new();
        for i in 0..=255u8 {
            let peer = std::net::IpAddr::from([10, 1, 0, i]);
            if let Some(seat) = Seat::take(&occupancy, peer) {
                all.push(seat);
            }
        }
        assert_eq!(all.len(), MAX_CONNECTIONS);
    }
}
