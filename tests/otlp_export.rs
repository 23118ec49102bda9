//! With the `otlp` cargo feature, `[log] otlp_endpoint` exports every
//! call's `rpc` span to an OpenTelemetry collector over OTLP/gRPC. The
//! collector here is a real OTLP TraceService (the protocol's own
//! generated server) that keeps what it receives; the spans must name the
//! service, method and request id, and no attribute may carry a PAN.

#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tessera::proto::v1;

const VISA: &str = "4111111111111111";

#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// String attributes as (key, value).
type Attributes = Vec<(String, String)>;

/// Every exported span as (name, string attributes, its resource's string
/// attributes).
fn spans(collector: &Collector) -> Vec<(String, Attributes, Attributes)> {
    let strings = |attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        attributes
            .iter()
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for request in collector.0.lock().unwrap().iter() {
        for resource in &request.resource_spans {
            let resource_attributes = resource
                .resource
                .as_ref()
                .map(|r| strings(&r.attributes))
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    out.push((
                        span.name.clone(),
                        strings(&span.attributes),
                        resource_attributes.clone(),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_spans_reach_an_otlp_collector_without_card_data() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nservice_name = \"tessera-test\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_dev_with_config(&config, &dir.path().join("data"), &log);
    let mut pos = server.client("pos").await;
    let mut request = tonic::Request::new(v1::TokenizeRequest {
        pan: VISA.into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "otlp-check-1".parse().unwrap());
    pos.tokenize(request).await.unwrap();

    // The batch exporter sends every few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let call = loop {
        let found = spans(&collector).into_iter().find(|(name, attributes, _)| {
            name == "rpc"
                && attributes
                    .iter()
                    .any(|(k, v)| k == "request_id" && v == "otlp-check-1")
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no rpc span exported");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (_, attributes, resource) = call;
    assert!(
        attributes.contains(&("method".into(), "Tokenize".into())),
        "{attributes:?}"
    );
    assert!(
        attributes.contains(&("service".into(), "tessera.v1.Tokenizer".into())),
        "{attributes:?}"
    );
    assert!(
        resource.contains(&("service.name".into(), "tessera-test".into())),
        "{resource:?}"
    );
    for (name, attributes, _) in spans(&collector) {
        assert!(!tessera::leak::contains_card_number(&name));
        for (key, value) in attributes {
            assert!(
                !tessera::leak::contains_card_number(&value) && !value.contains(VISA),
                "{key} = {value}"
            );
        }
    }
    drop(server);
    common::assert_no_pan_leaked(&log, &dir.path().join("data"), &[VISA]);
}
