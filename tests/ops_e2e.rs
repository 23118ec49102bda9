//! The operations kit against the real binary: request ids returned and
//! never card-shaped, JSON logs whose every call line carries its request
//! id and no PAN, the plaintext health listener for probes (health and
//! nothing else), `tessera config check` / `config print`, and the SIGHUP
//! reload of principals and limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
#[path = "common/tools.rs"]
mod tools;

use std::process::Command;

use common::Server;
use tessera::proto::v1;
use tools::free_port;

const VISA: &str = "4111111111111111";

fn tessera(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("TESSERA_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_carry_request_ids_into_json_logs_and_health_has_its_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let health_port = free_port();
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!("[log]\nformat = \"json\"\n[health]\nlisten = \"127.0.0.1:{health_port}\"\n"),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_dev_with_config(&config, &dir.path().join("data"), &log);
    let mut pos = server.client("pos").await;

    // The caller's id comes back, and is the one the call is logged under.
    let mut request = tonic::Request::new(v1::TokenizeRequest {
        pan: VISA.into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "pos-7-checkout".parse().unwrap());
    let response = pos.tokenize(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "pos-7-checkout"
    );
    // An error answered at once carries it too.
    let mut bad = tonic::Request::new(v1::TokenizeRequest {
        pan: "123".into(),
        ..Default::default()
    });
    bad.metadata_mut()
        .insert("x-request-id", "pos-8-bad".parse().unwrap());
    let status = pos.tokenize(bad).await.unwrap_err();
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "pos-8-bad");
    // A card number as request id is replaced, never echoed or logged.
    let mut pan_as_id = tonic::Request::new(v1::TokenizeRequest {
        pan: VISA.into(),
        ..Default::default()
    });
    pan_as_id
        .metadata_mut()
        .insert("x-request-id", "4111-1111-1111-1111".parse().unwrap());
    let response = pos.tokenize(pan_as_id).await.unwrap();
    let made = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(made.len(), 16, "{made}");
    assert!(!tessera::leak::contains_card_number(&made));
    // Without one, one is made.
    let response = pos
        .tokenize(v1::TokenizeRequest {
            pan: VISA.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(response.metadata().get("x-request-id").is_some());

    // The health listener: plaintext, health only.
    let probe_addr = format!("http://127.0.0.1:{health_port}");
    let channel = tonic::transport::Endpoint::from_shared(probe_addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "tessera.v1.Tokenizer"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status,
            i32::from(tonic_health::pb::health_check_response::ServingStatus::Serving),
            "{service:?}"
        );
    }
    let refused = common::client(&probe_addr, Some(&server.api_key("pos")))
        .await
        .tokenize(v1::TokenizeRequest {
            pan: VISA.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);

    drop(server);
    // Every line is a JSON object; the call's lines carry its request id
    // from the rpc span, service spans' lines included (review finding:
    // only the current span was written, so a service's own lines lost
    // it), and no line carries the PAN.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines_of_call = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            json["level"].is_string() && json["fields"].is_object(),
            "{line}"
        );
        let spans = json["spans"].as_array().cloned().unwrap_or_default();
        if let Some(rpc) = spans.iter().find(|s| s["request_id"] == "pos-7-checkout") {
            assert_eq!(rpc["name"], "rpc", "{line}");
            assert_eq!(rpc["method"], "Tokenize", "{line}");
            assert_eq!(rpc["service"], "tessera.v1.Tokenizer", "{line}");
            lines_of_call.push(json["span"]["name"].as_str().unwrap_or("").to_owned());
        }
        assert!(!line.contains("4111-1111-1111-1111"), "{line}");
    }
    assert!(
        lines_of_call.iter().any(|span| span == "Tokenize"),
        "no line of the Tokenize service span carries the request id: {lines_of_call:?}\n{text}"
    );
    common::assert_no_pan_leaked(&log, &dir.path().join("data"), &[VISA]);
}

#[test]
fn config_check_lists_every_problem_and_print_redacts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"0.0.0.0:50051\"\n[tokens]\nluhn = \"maybe\"\n[access]\nlockout_minutes = 5\n[metrics]\nlisten = \"0.0.0.0:9464\"\n",
    )
    .unwrap();
    let out = tessera(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "data_dir",
        "kms.backend",
        "tokens.luhn",
        "access.lockout_minutes",
        "tls.cert_file",
        "metrics.listen",
    ] {
        assert!(stderr.contains(&format!("key {key}:")), "{key}:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 6, "{stderr}");

    // serve refuses the same file with the same exit code, before binding.
    let serve = tessera(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(serve.status.code(), Some(64));

    let hash = format!("sha256:{}", "cd".repeat(32));
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "data_dir = \"{}\"\n[store]\nbackend = \"fjall\"\n[[principals]]\nname = \"pos\"\ntenant = \"default\"\nroles = [\"tokenize\"]\napi_key_hash = \"{hash}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = tessera(&[
        "config",
        "check",
        "--dev",
        "--config",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", tools::output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (dev profile, fjall store"));
    let printed = tessera(&[
        "config",
        "print",
        "--dev",
        "--config",
        good.to_str().unwrap(),
    ]);
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).unwrap();
    assert!(!text.contains(&"cd".repeat(32)), "{text}");
    assert!(text.contains("api_key_hash = \"<redacted>\""), "{text}");
    assert!(
        text.contains("[access]\n") && text.contains("max_failed_auth = 10"),
        "{text}"
    );
}

fn principal_toml(name: &str, hash: &str) -> String {
    format!(
        "[[principals]]\nname = \"{name}\"\ntenant = \"default\"\nroles = [\"tokenize\"]\napi_key_hash = \"{hash}\"\n"
    )
}

async fn tokenize_with(server: &Server, key: &str) -> Result<String, tonic::Code> {
    common::client(&server.addr, Some(key))
        .await
        .tokenize(v1::TokenizeRequest {
            pan: VISA.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().token)
        .map_err(|s| s.code())
}

/// SIGHUP puts the file's principals and limits in force; a file that fails
/// its check changes nothing; both are audited.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_principals_and_limits_and_refuses_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let old = tessera::access::api_key::generate().unwrap();
    let new = tessera::access::api_key::generate().unwrap();
    let (old_key, new_key) = (old.key.expose_secret(), new.key.expose_secret());
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        principal_toml("kiosk", &old.hash.to_config_string()),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_dev_with_config(&config, &dir.path().join("data"), &log);
    assert!(tokenize_with(&server, old_key).await.is_ok());
    assert_eq!(
        tokenize_with(&server, new_key).await.unwrap_err(),
        tonic::Code::Unauthenticated
    );

    // kiosk leaves, kiosk2 comes, and tokenize drops to 1 call a second.
    std::fs::write(
        &config,
        format!(
            "[access]\nrate_per_second = 1\nburst = 1\n{}",
            principal_toml("kiosk2", &new.hash.to_config_string())
        ),
    )
    .unwrap();
    server.hangup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokenize_with(&server, new_key).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never took"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        tokenize_with(&server, old_key).await.unwrap_err(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        tokenize_with(&server, new_key).await.unwrap_err(),
        tonic::Code::ResourceExhausted,
        "the new rate limit is in force"
    );

    // kiosk2 gains a role, the rate limit goes back up and the log level
    // changes: the event names the changed principal, and the section
    // that waits for a restart.
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"debug\"\n[access]\nrate_per_second = 1000\n{}",
            principal_toml("kiosk2", &new.hash.to_config_string())
                .replace("[\"tokenize\"]", "[\"tokenize\", \"read_info\"]")
        ),
    )
    .unwrap();
    server.hangup();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while common::audit_events(&server, "operator", "ConfigReloaded")
        .await
        .len()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the second reload never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A file with a problem: nothing changes.
    std::fs::write(&config, "[access]\nmax_failed_auth = 99\n").unwrap();
    server.hangup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let events = common::audit_events(&server, "operator", "ConfigReloaded").await;
        if events.iter().any(|e| e.outcome == "REFUSED") {
            break events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refused reload: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(
        tokenize_with(&server, new_key).await.is_ok(),
        "kiosk2 stays"
    );
    let applied: Vec<_> = refused.iter().filter(|e| e.outcome == "OK").collect();
    assert_eq!(applied.len(), 2, "{refused:?}");
    // kiosk2 in, kiosk out, and --dev's seven generated principals kept;
    // then kiosk2 changed, and [log] waits for a restart.
    let without_digest = |resource: &str| {
        let (head, rest) = resource.split_once(" principals ").unwrap();
        assert!(
            head.starts_with("config sha256:") && head.len() == 30,
            "{head}"
        );
        rest.to_owned()
    };
    assert_eq!(
        without_digest(&applied[0].resource),
        "added:[kiosk2] removed:[kiosk] changed:[] unchanged:7"
    );
    assert_eq!(
        without_digest(&applied[1].resource),
        "added:[] removed:[] changed:[kiosk2] unchanged:7 restart-needed:[log]"
    );
    drop(server);
    common::assert_no_pan_leaked(&log, &dir.path().join("data"), &[VISA]);
}
