//! The Prometheus endpoint: `GET /metrics` over HTTP/1.1, plaintext on
//! loopback (the default) or TLS with optional client certificates on any
//! address, configured as `[metrics]` and `[metrics.tls]`.
//!
//! The endpoint is ours rather than the exporter crate's listener, whose
//! HTTP has no TLS: a Prometheus on another host must reach it over the
//! network, and nothing Tessera serves off loopback is plaintext.
//! Connections are bounded in number and in how long their headers and
//! handshakes may take, so a scraper that stalls cannot pile them up.

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
use tokio::sync::Semaphore;
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

/// Most connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;

/// How long a TLS handshake or a request's headers may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

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

async fn accept(listener: TcpListener, tls: Option<TlsAcceptor>, handle: PrometheusHandle) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: wait rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, handle) = (tls.clone(), handle.clone());
        tokio::spawn(async move {
            let _slot = slot;
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
