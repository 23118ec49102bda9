//! End to end over gRPC against the real `tessera` binary (`serve --dev`,
//! sled store, dev KMS) on 127.0.0.1:0. Every test ends by scanning the
//! server's log and data dir for the PANs it used.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{Server, assert_no_pan_leaked, client, dev_args};
use tessera::proto::v1;
use tonic::Code;
use tonic_types::StatusExt;

const VISA: &str = "4111111111111111";
const MASTERCARD: &str = "5555555555554444";
const AMEX: &str = "378282246310005";
const DISCOVER19: &str = "6011000990139424";
const LONG19: &str = "5555555555555555556";

fn tokenize_req(pan: &str) -> v1::TokenizeRequest {
    v1::TokenizeRequest {
        pan: pan.into(),
        ..Default::default()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("server.log")
    }
    fn start(&self) -> Server {
        Server::start(&self.data(), &self.log())
    }
}

#[tokio::test]
async fn round_trip_and_every_status_code() {
    let f = Fixture::new();
    let server = f.start();
    let mut pos = server.client("pos").await;
    let mut processor = server.client("processor").await;
    let mut other = server.client("other").await;
    let mut admin = server.client("admin").await;

    // Tokenize: format preserved, masked, brand, Luhn-invalid by default.
    let t = pos
        .tokenize(tokenize_req("4111 1111-1111 1111"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.token.len(), 16);
    assert!(t.token.starts_with("411111") && t.token.ends_with("1111"));
    assert_ne!(t.token, VISA);
    assert_eq!(t.masked_pan, "411111******1111");
    assert_eq!(t.brand, i32::from(v1::CardBrand::Visa));
    assert!(!t.reused);

    // OK: the processor redeems it.
    let pan = processor
        .detokenize(v1::DetokenizeRequest {
            token: t.token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .pan;
    assert_eq!(pan, VISA);

    // PERMISSION_DENIED: POS may not detokenize or delete; admin may not tokenize.
    let denied = pos
        .detokenize(v1::DetokenizeRequest {
            token: t.token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = pos
        .delete_token(v1::DeleteTokenRequest {
            token: t.token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = admin.tokenize(tokenize_req(VISA)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // UNAUTHENTICATED: no key, a wrong key, a malformed header.
    let mut anonymous = client(&server.addr, None).await;
    assert_eq!(
        anonymous
            .tokenize(tokenize_req(VISA))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut forged = client(
        &server.addr,
        Some(&format!("tsk_{}_{}", "0".repeat(16), "0".repeat(64))),
    )
    .await;
    assert_eq!(
        forged
            .tokenize(tokenize_req(VISA))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // INVALID_ARGUMENT with a field violation and no echo of the input.
    for (bad, field) in [
        (tokenize_req("4111111111111112"), "pan"),
        (tokenize_req("4111-x"), "pan"),
        (tokenize_req(""), "pan"),
        (
            v1::TokenizeRequest {
                format: Some(v1::TokenFormat {
                    keep_leading: Some(7),
                    ..Default::default()
                }),
                ..tokenize_req(VISA)
            },
            "format.keep_leading",
        ),
        (
            v1::TokenizeRequest {
                ttl: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..tokenize_req(VISA)
            },
            "ttl",
        ),
    ] {
        let status = pos.tokenize(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert_eq!(violations[0].field, field);
        assert!(
            !status.message().contains("411111111111111"),
            "{}",
            status.message()
        );
    }
    let bad_token = processor
        .detokenize(v1::DetokenizeRequest {
            token: "12ab".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert_eq!(
        bad_token
            .get_details_bad_request()
            .unwrap()
            .field_violations[0]
            .field,
        "token"
    );

    // NOT_FOUND: unknown token, another tenant's token, both alike.
    let mut unknown = t.token.clone().into_bytes();
    unknown[8] = if unknown[8] == b'0' { b'1' } else { b'0' };
    let unknown = String::from_utf8(unknown).unwrap();
    let a = processor
        .detokenize(v1::DetokenizeRequest { token: unknown })
        .await
        .unwrap_err();
    let b = other
        .detokenize(v1::DetokenizeRequest {
            token: t.token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(a.code(), Code::NotFound);
    assert_eq!(b.code(), Code::NotFound);
    assert_eq!(a.message(), b.message());
    let info_other = other
        .get_token_info(v1::GetTokenInfoRequest {
            token: t.token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(info_other.code(), Code::NotFound);

    // FAILED_PRECONDITION: FF1 on a 16-digit PAN keeping 6 + 4 with a Luhn
    // policy leaves 5 encrypted digits.
    let ff1 = v1::TokenizeRequest {
        format: Some(v1::TokenFormat {
            generator: v1::Generator::Ff1.into(),
            ..Default::default()
        }),
        ..tokenize_req(MASTERCARD)
    };
    let status = pos.tokenize(ff1).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(!status.message().contains("555555"));

    // FF1 that fits: 19 digits; deterministic by construction.
    let ff1 = || v1::TokenizeRequest {
        format: Some(v1::TokenFormat {
            generator: v1::Generator::Ff1.into(),
            ..Default::default()
        }),
        ..tokenize_req(LONG19)
    };
    let x = pos.tokenize(ff1()).await.unwrap().into_inner();
    let y = pos.tokenize(ff1()).await.unwrap().into_inner();
    assert_eq!(x.token, y.token);
    assert!(y.reused);

    // Info: public facts only.
    let info = pos
        .get_token_info(v1::GetTokenInfoRequest {
            token: t.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.masked_pan, "411111******1111");
    assert!(info.created_at.is_some() && info.expires_at.is_none());

    // Delete, then NOT_FOUND for every read.
    processor
        .delete_token(v1::DeleteTokenRequest {
            token: t.token.clone(),
        })
        .await
        .unwrap();
    for code in [
        processor
            .detokenize(v1::DetokenizeRequest {
                token: t.token.clone(),
            })
            .await
            .unwrap_err()
            .code(),
        processor
            .get_token_info(v1::GetTokenInfoRequest {
                token: t.token.clone(),
            })
            .await
            .unwrap_err()
            .code(),
        processor
            .delete_token(v1::DeleteTokenRequest {
                token: t.token.clone(),
            })
            .await
            .unwrap_err()
            .code(),
    ] {
        assert_eq!(code, Code::NotFound);
    }

    // Health is served.
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tessera.v1.Tokenizer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        i32::from(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );

    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    assert_no_pan_leaked(&f.log(), &f.data(), &[VISA, MASTERCARD, LONG19]);
}

#[tokio::test]
async fn batches_report_per_item_and_enforce_the_limit() {
    let f = Fixture::new();
    let server = f.start();
    let mut processor = server.client("processor").await;

    let items = vec![
        tokenize_req(VISA),
        tokenize_req("4111111111111112"),
        tokenize_req(AMEX),
        tokenize_req(DISCOVER19),
    ];
    let results = processor
        .tokenize_batch(v1::TokenizeBatchRequest { items })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 4);
    let token = |r: &v1::TokenizeResult| match &r.result {
        Some(v1::tokenize_result::Result::Token(t)) => t.token.clone(),
        other => panic!("expected a token, got {other:?}"),
    };
    let (t0, t2, t3) = (token(&results[0]), token(&results[2]), token(&results[3]));
    match &results[1].result {
        Some(v1::tokenize_result::Result::Error(s)) => {
            assert_eq!(s.code, i32::from(Code::InvalidArgument));
            assert_eq!(
                s.details.len(),
                1,
                "field violation carried in the item status"
            );
            assert!(!s.message.contains("4111"));
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(t2.len(), 15);

    let detok = processor
        .detokenize_batch(v1::DetokenizeBatchRequest {
            items: [t3.as_str(), "123", t0.as_str(), t2.as_str()]
                .into_iter()
                .map(|t| v1::DetokenizeRequest { token: t.into() })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let pans: Vec<Option<String>> = detok
        .iter()
        .map(|r| match &r.result {
            Some(v1::detokenize_result::Result::Pan(p)) => Some(p.pan.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        pans,
        vec![
            Some(DISCOVER19.into()),
            None,
            Some(VISA.into()),
            Some(AMEX.into())
        ]
    );

    let too_many = v1::TokenizeBatchRequest {
        items: vec![tokenize_req(VISA); 1001],
    };
    let status = processor.tokenize_batch(too_many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "items"
    );

    let mut pos = server.client("pos").await;
    let denied = pos
        .detokenize_batch(v1::DetokenizeBatchRequest {
            items: vec![v1::DetokenizeRequest { token: t0 }],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    drop(server);
    assert_no_pan_leaked(&f.log(), &f.data(), &[VISA, AMEX, DISCOVER19]);
}

#[tokio::test]
async fn single_use_token_yields_exactly_one_pan_under_a_race() {
    let f = Fixture::new();
    let server = f.start();
    let mut processor = server.client("processor").await;
    let req = v1::TokenizeRequest {
        single_use: true,
        ..tokenize_req(MASTERCARD)
    };
    let token = processor.tokenize(req).await.unwrap().into_inner().token;

    let mut tasks = Vec::new();
    for _ in 0..24 {
        let mut c = server.client("processor").await;
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            c.detokenize(v1::DetokenizeRequest { token }).await
        }));
    }
    let mut pans = Vec::new();
    let mut not_found = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(resp) => pans.push(resp.into_inner().pan),
            Err(s) if s.code() == Code::NotFound => not_found += 1,
            Err(s) => panic!("unexpected status {s:?}"),
        }
    }
    assert_eq!(pans, vec![MASTERCARD.to_owned()]);
    assert_eq!(not_found, 23);

    drop(server);
    assert_no_pan_leaked(&f.log(), &f.data(), &[MASTERCARD]);
}

#[tokio::test]
async fn ttl_expiry_answers_not_found() {
    let f = Fixture::new();
    let server = f.start();
    let mut processor = server.client("processor").await;
    let req = v1::TokenizeRequest {
        ttl: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..tokenize_req(VISA)
    };
    let token = processor.tokenize(req).await.unwrap().into_inner().token;
    let info = processor
        .get_token_info(v1::GetTokenInfoRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.expires_at.is_some());
    assert_eq!(
        processor
            .detokenize(v1::DetokenizeRequest {
                token: token.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .pan,
        VISA
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let status = processor
        .detokenize(v1::DetokenizeRequest { token })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    drop(server);
    assert_no_pan_leaked(&f.log(), &f.data(), &[VISA]);
}

/// Every acknowledged tokenize survives `kill -9` and detokenizes to the
/// same PAN after a restart on the same data dir; credentials are kept.
#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let f = Fixture::new();
    let server = f.start();
    let keys_before = server.api_key("processor");
    let mut processor = server.client("processor").await;

    let pans: Vec<String> = (0..150u64).map(|n| common::test_pan(4, n)).collect();
    let mut acknowledged = Vec::new();
    for pan in &pans {
        let t = processor
            .tokenize(tokenize_req(pan))
            .await
            .unwrap()
            .into_inner();
        acknowledged.push((t.token, pan.clone()));
    }
    let deterministic = v1::TokenizeRequest {
        deterministic: Some(true),
        ..tokenize_req(VISA)
    };
    let det = processor
        .tokenize(deterministic.clone())
        .await
        .unwrap()
        .into_inner()
        .token;
    server.kill9();

    let server = f.start();
    assert_eq!(
        server.api_key("processor"),
        keys_before,
        "dev credentials kept across restarts"
    );
    let mut processor = server.client("processor").await;
    for (token, pan) in &acknowledged {
        let got = processor
            .detokenize(v1::DetokenizeRequest {
                token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .pan;
        assert_eq!(&got, pan);
    }
    let again = processor
        .tokenize(deterministic)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.token, det);
    assert!(again.reused);

    drop(server);
    let mut all: Vec<&str> = pans.iter().map(String::as_str).collect();
    all.push(VISA);
    assert_no_pan_leaked(&f.log(), &f.data(), &all);
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .output()
            .unwrap()
    };
    let data = dir.path().to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "serve",
            "--dev",
            "--data-dir",
            data,
            "--listen",
            "0.0.0.0:0",
        ],
        vec!["serve", "--dev", "--data-dir", data, "--listen", "nonsense"],
        vec!["serve", "--data-dir", data, "--listen", "127.0.0.1:0"],
        vec!["serve", "--dev", "--config", "/nonexistent/tessera.toml"],
    ];
    for args in cases {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
}

/// A data directory holding one embedded backend's store is never served
/// empty by the other: a changed default or a typo in `[store] backend`
/// must not make every issued token "not found".
#[tokio::test]
async fn another_backends_store_is_refused_not_started_empty() {
    let f = Fixture::new();
    for (backend, other) in [("sled", "fjall"), ("fjall", "sled")] {
        let data = f.dir.path().join(backend);
        let with_backend = |name: &str| [("TESSERA__STORE__BACKEND", name.to_owned())];
        let server = Server::start_dev_with_env(&data, &with_backend(backend), &f.log());
        let token = server
            .client("processor")
            .await
            .tokenize(tokenize_req(VISA))
            .await
            .unwrap()
            .into_inner()
            .token;
        // kill -9 (an acknowledged write is durable): no drain to wait for.
        server.kill9();

        let mut refused = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(dev_args(&data))
            .env("TESSERA__STORE__BACKEND", other)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while refused.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                refused.kill().unwrap();
                panic!("{other} started on a {backend} data directory");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = refused.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{other} on {backend}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("holds a {backend} store")),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
        let other_dir = if other == "sled" { "store" } else { other };
        assert!(
            !data.join(other_dir).exists(),
            "an empty {other} store was made"
        );

        // The store's own backend again: the token is still there.
        let server = Server::start_dev_with_env(&data, &with_backend(backend), &f.log());
        let pan = server
            .client("processor")
            .await
            .detokenize(v1::DetokenizeRequest { token })
            .await
            .unwrap()
            .into_inner()
            .pan;
        assert_eq!(pan, VISA, "{backend}");
        server.kill9();
    }

    // Both stores in one data directory: which holds the vault is for an
    // operator to say, so neither starts.
    let data = f.dir.path().join("sled");
    std::fs::create_dir(data.join("fjall")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(dev_args(&data))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("holds both a sled store"), "{stderr}");
}

/// At the default log level a successful data-plane call writes no line
/// (its cost under load), and a failed one still names its RPC, principal
/// and tenant, though its span is off.
#[tokio::test]
async fn at_info_failures_are_attributed_and_successes_are_quiet() {
    let f = Fixture::new();
    let data = f.data();
    let server = Server::start_dev_with_env(&data, &[("RUST_LOG", "info".to_owned())], &f.log());
    let mut processor = server.client("processor").await;
    let token = processor
        .tokenize(tokenize_req(VISA))
        .await
        .unwrap()
        .into_inner()
        .token;
    processor
        .detokenize(v1::DetokenizeRequest { token })
        .await
        .unwrap();
    let missing = processor
        .detokenize(v1::DetokenizeRequest {
            token: "4111110000001111".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let mut pos = server.client("pos").await;
    let denied = pos
        .detokenize(v1::DetokenizeRequest {
            token: "4111110000001111".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    server.kill9();

    let log = std::fs::read_to_string(f.log()).unwrap();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("outcome=\"ok\""), 0, "{log}");
    assert!(
        log.lines().any(|l| l.contains("rpc=\"Detokenize\"")
            && l.contains("principal=processor")
            && l.contains("NotFound")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("rpc=\"Detokenize\"")
            && l.contains("principal=pos")
            && l.contains("permission_denied")),
        "{log}"
    );
}

/// The README's quick-start round trip, through the CLI binary itself.
#[tokio::test]
async fn cli_round_trip_human_and_json() {
    let f = Fixture::new();
    let server = f.start();
    let key = server.api_key("processor");
    let cli = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .args(["--addr", &server.addr])
            .env("TESSERA_API_KEY", &key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    };

    let out = cli(
        &["tokenize", "--json", "--meta", "order=42"],
        Some(&format!("{AMEX}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = json["token"].as_str().unwrap().to_owned();
    assert_eq!(json["brand"], "AMEX");
    assert_eq!(json["masked_pan"], "378282*****0005");

    let out = cli(&["detokenize", &token], None);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), AMEX);

    let out = cli(&["info", &token], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("378282*****0005") && text.contains("order=42") && !text.contains(AMEX),
        "{text}"
    );

    let out = cli(&["delete", &token], None);
    assert!(out.status.success());
    let out = cli(&["detokenize", &token], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));

    let out = cli(&["tokenize", "4111111111111112"], None);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("4111111111111112"));

    drop(server);
    assert_no_pan_leaked(&f.log(), &f.data(), &[AMEX]);
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let f = Fixture::new();
    let server = f.start();
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tessera.v1.Tokenizer".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn bench_loads_the_server_and_reports_latency() {
    let env = Fixture::new();
    // The load test's limits (a bulk reader otherwise trips the anomaly
    // rules by design).
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/bench.toml");
    let server =
        Server::start_dev_with_config(std::path::Path::new(config), &env.data(), &env.log());
    let key = server.api_key("processor");
    let plots = tempfile::tempdir().unwrap();
    for (n, args) in [
        vec!["--rpc", "tokenize", "--concurrency", "1,4", "--ceiling"],
        vec!["--rpc", "detokenize", "--batch", "10", "--tokens", "20"],
        vec!["--rpc", "mixed", "--read-percent", "80", "--tokens", "20"],
        vec!["--rpc", "health"],
    ]
    .into_iter()
    .enumerate()
    {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("bench")
            .args(&args)
            .args(["--duration", "1", "--warmup", "0", "--connections", "2"])
            .args(["--json", "--addr", &server.addr])
            .env("TESSERA_API_KEY", &key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let runs = report["runs"].as_array().unwrap();
        let levels: Vec<u64> = runs
            .iter()
            .map(|r| r["concurrency"].as_u64().unwrap())
            .collect();
        let wanted: Vec<u64> = if n == 0 { vec![1, 4] } else { vec![64] };
        assert_eq!(levels, wanted, "{report}");
        for run in runs {
            assert_eq!(run["errors"], 0, "{report}");
            assert!(run["calls_per_second"].as_f64().unwrap() > 0.0, "{report}");
            let at = |p: &str| run["latency_us"][p].as_u64().unwrap();
            assert!(at("p50") > 0, "{report}");
            assert!(
                at("p50") <= at("p99") && at("p99") <= at("p99_9"),
                "{report}"
            );
            assert!(at("p99_9") <= at("max"), "{report}");
            if n == 0 {
                let ratio = run["ratio_to_ceiling"].as_f64().unwrap();
                assert!(ratio > 0.0, "{report}");
                assert!(run["ceiling"]["calls_per_second"].as_f64().unwrap() > 0.0);
            }
        }
        // The plot script draws what the report says.
        let json = plots.path().join(format!("run{n}.json"));
        std::fs::write(&json, &out.stdout).unwrap();
        let svg = plots.path().join(format!("run{n}.svg"));
        let drawn = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/bench_plot.py"
            ))
            .arg(&svg)
            .arg(&json)
            .output()
            .unwrap();
        assert!(
            drawn.status.success(),
            "{}",
            String::from_utf8_lossy(&drawn.stderr)
        );
        let picture = std::fs::read_to_string(&svg).unwrap();
        assert!(
            picture.starts_with("<svg") && picture.contains("<circle"),
            "{picture}"
        );
        assert_eq!(
            picture.matches("<circle").count(),
            runs.len(),
            "one point per level"
        );
    }
    // Bad arguments are refused before any load.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", "--concurrency", "0", "--addr", &server.addr])
        .env("TESSERA_API_KEY", &key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = env.log();
    drop(server);
    assert_no_pan_leaked(&log, &env.data(), &[]);
}

/// 128 writes in flight over 4 connections for two seconds: every one is
/// acknowledged. sled's `flush_async` deadlocked here (its thread pool
/// queued behind a transaction's write lock); `tessera bench` found it.
#[test]
fn many_concurrent_writes_all_complete() {
    let f = Fixture::new();
    let server = f.start();
    let load =
        "bench --rpc tokenize --concurrency 128 --connections 4 --duration 3 --warmup 0 --json";
    let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(load.split(' '))
        .args(["--addr", &server.addr])
        .env("TESSERA_API_KEY", server.api_key("processor"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = bench.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = bench.kill();
            panic!("the server stopped answering under concurrent writes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut bench.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["runs"][0]["errors"], 0);
    assert!(report["runs"][0]["calls_per_second"].as_f64().unwrap() > 0.0);
}

/// The server opts out of transparent huge pages, which cost it 80–220 MiB
/// of resident memory under load (see `tessera::huge_pages`).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_server_runs_without_transparent_huge_pages() {
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    if !own.contains("THP_enabled:\t1") {
        // A kernel without huge pages, or a runner already opted out:
        // nothing to tell apart.
        eprintln!("skipped: this process runs without transparent huge pages");
        return;
    }
    let f = Fixture::new();
    let server = Server::start(&f.data(), &f.log());
    assert_eq!(server.proc_status("THP_enabled").as_deref(), Some("0"));
    server.kill9();
}
