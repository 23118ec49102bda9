//! The process's logger: human lines or JSON objects on stderr, filtered by
//! `[log] level` (or `RUST_LOG`), and with the `otlp` cargo feature, spans
//! exported to an OpenTelemetry collector.
//!
//! What reaches a log is the same in every format: events and the fields
//! of their spans (the `rpc` span names service, method and request id),
//! never a request body. JSON lines carry every enclosing span's fields
//! (`spans`), so a log shipper can group a call's lines by `request_id`.

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Where spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC endpoint (`http://collector:4317`).
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// The checked `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
    /// The filter unless `RUST_LOG` is set.
    pub level: String,
    /// Span export, if any.
    pub otlp: Option<OtlpSettings>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
            otlp: None,
        }
    }
}

/// The logger did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The span exporter did not build.
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    /// A global logger is already installed.
    #[error("a logger is already installed")]
    AlreadySet,
}

/// Keeps span export running; flushes what is queued when dropped.
#[derive(Debug, Default)]
pub struct LogGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global logger as `settings` say.
pub fn init(settings: &LogSettings) -> Result<LogGuard, LogError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.level));
    let lines = match settings.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            // Every span of the line, outermost first: a service's own span
            // sits inside the `rpc` span, and only the list carries the
            // request id on its lines (review finding).
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(lines);
    #[cfg(feature = "otlp")]
    {
        let (spans, provider) = match &settings.otlp {
            Some(otlp) => {
                let (layer, provider) = otlp_layer(otlp)?;
                (Some(layer), Some(provider))
            }
            None => (None, None),
        };
        registry
            .with(spans)
            .try_init()
            .map_err(|_| LogError::AlreadySet)?;
        Ok(LogGuard { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        // The configuration check refuses an endpoint in this build.
        let _ = &settings.otlp;
        registry.try_init().map_err(|_| LogError::AlreadySet)?;
        Ok(LogGuard::default())
    }
}

/// A layer exporting spans in batches over OTLP/gRPC, and its provider.
#[cfg(feature = "otlp")]
fn otlp_layer<S>(
    settings: &OtlpSettings,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        opentelemetry_sdk::trace::SdkTracerProvider,
    ),
    LogError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .build()
        .map_err(|e| LogError::Otlp(e.to_string()))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("tessera");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}
