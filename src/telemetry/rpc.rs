//! The layer around every gRPC call: its request id, its span, and its
//! count and latency.
//!
//! - The request id is the caller's `x-request-id` when acceptable
//!   ([`super::request_id`]), else a generated one. It replaces the
//!   header the services read, so the audit events, the span and the
//!   response's `x-request-id` all carry the same id.
//! - One `rpc` span per call carries the service, method and request id:
//!   never a request body, so no PAN can reach a log line through it.
//! - A call counts when its status is known: from the response headers for
//!   an error answered at once, from the trailers after a streamed or
//!   unary body, or `CANCELLED` when the body is dropped before its end
//!   (the client went away). Its latency runs to that point.
//! - Labels are names from the compiled descriptor sets: a path no service
//!   serves counts as `unknown`, so a caller cannot mint label values.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::Code;
use tracing::Instrument;

use super::request_id;

/// Calls by `service`, `rpc` and `code` (counter).
pub const CALLS: &str = "tessera_grpc_calls_total";
/// Call latency by `service` and `rpc` (histogram, seconds).
pub const DURATION: &str = "tessera_grpc_call_duration_seconds";

/// A call's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RpcName {
    service: &'static str,
    method: &'static str,
}

const UNKNOWN: RpcName = RpcName {
    service: "unknown",
    method: "unknown",
};

/// Every served method's path (`/package.Service/Method`) with its labels.
fn served_methods() -> &'static HashMap<String, (String, String)> {
    static METHODS: OnceLock<HashMap<String, (String, String)>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut methods = HashMap::new();
        for encoded in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            // Compiled in: a set that does not decode labels its calls
            // `unknown`, which the tests would show.
            let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        methods.insert(
                            format!("/{full}/{}", method.name()),
                            (full.clone(), method.name().to_owned()),
                        );
                    }
                }
            }
        }
        methods
    })
}

fn name_of(path: &str) -> RpcName {
    served_methods()
        .get(path)
        .map_or(UNKNOWN, |(service, method)| RpcName { service, method })
}

/// The gRPC name of `code`, as Prometheus labels and logs show it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// One call in flight, counted once when its status is known.
#[derive(Debug)]
struct Call {
    name: RpcName,
    started: Instant,
    span: tracing::Span,
}

impl Call {
    fn finish(self, code: Code) {
        let elapsed = self.started.elapsed();
        let code = code_name(code);
        let RpcName { service, method } = self.name;
        metrics::counter!(CALLS, "service" => service, "rpc" => method, "code" => code)
            .increment(1);
        metrics::histogram!(DURATION, "service" => service, "rpc" => method)
            .record(elapsed.as_secs_f64());
        let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        tracing::debug!(parent: &self.span, code, elapsed_us, "rpc finished");
    }
}

/// Adds [`RpcService`] around the served routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for RpcService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body,
{
    type Response = Response<CallBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let name = name_of(request.uri().path());
        let id = request_id::choose(
            request
                .headers()
                .get(request_id::HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        // Acceptable and generated ids are ASCII alphanumerics and `-_.`.
        let id_header = HeaderValue::from_str(&id).ok();
        if let Some(value) = &id_header {
            request
                .headers_mut()
                .insert(request_id::HEADER, value.clone());
        }
        let span = tracing::info_span!(
            "rpc",
            service = name.service,
            method = name.method,
            request_id = %id,
        );
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let call_span = span.clone();
        Box::pin(
            async move {
                let call = Call {
                    name,
                    started,
                    span: call_span,
                };
                let mut response = match future.await {
                    Ok(response) => response,
                    Err(e) => {
                        call.finish(Code::Unknown);
                        return Err(e);
                    }
                };
                if let Some(value) = id_header {
                    response.headers_mut().insert(request_id::HEADER, value);
                }
                // An error answered at once carries its status in the
                // headers, and its body is empty.
                let call = match grpc_status(response.headers()) {
                    Some(code) => {
                        call.finish(code);
                        None
                    }
                    None => Some(call),
                };
                Ok(response.map(|inner| CallBody { inner, call }))
            }
            .instrument(span),
        )
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when the trailers pass (or
    /// as cancelled when it is dropped before them).
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for CallBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| grpc_status(trailers).unwrap_or(Code::Unknown)),
            Poll::Ready(Some(Err(_))) => Some(Code::Internal),
            // A gRPC body always ends with trailers.
            Poll::Ready(None) => Some(Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = ended
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_named_and_anything_else_is_unknown() {
        assert_eq!(
            name_of("/tessera.v1.Tokenizer/Tokenize"),
            RpcName {
                service: "tessera.v1.Tokenizer",
                method: "Tokenize"
            }
        );
        assert_eq!(name_of("/grpc.health.v1.Health/Check").method, "Check");
        assert_eq!(
            name_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").service,
            "grpc.reflection.v1alpha.ServerReflection"
        );
        assert_eq!(name_of("/tessera.v1.Tokenizer/4111111111111111"), UNKNOWN);
        assert_eq!(name_of("/"), UNKNOWN);
    }
}
