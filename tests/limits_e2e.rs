//! Suspicious-activity controls end to end: rate limits answer
//! RESOURCE_EXHAUSTED with retry info; ten failed authentications lock a
//! key (PCI DSS 8.3.4); token enumeration and a detokenize volume far above
//! the baseline raise audited alerts and lock the principal; a call from a
//! new network raises an audited alert.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::Server;
use tessera::proto::v1;
use tonic::Code;
use tonic_types::StatusExt;

const VISA: &str = "4111111111111111";

fn server_with(access: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, format!("[access]\n{access}")).unwrap();
    let server = Server::start_dev_with_config(
        &config,
        &dir.path().join("data"),
        &dir.path().join("server.log"),
    );
    (server, dir)
}

fn tokenize() -> v1::TokenizeRequest {
    v1::TokenizeRequest {
        pan: VISA.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn rate_limit_answers_resource_exhausted_with_retry_info() {
    let (server, _dir) = server_with("rate_per_second = 1\nburst = 3\n");
    let mut processor = server.client("processor").await;
    for _ in 0..3 {
        processor.tokenize(tokenize()).await.unwrap();
    }
    let limited = processor.tokenize(tokenize()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let retry = limited.get_details_retry_info().expect("RetryInfo");
    assert!(
        retry
            .retry_delay
            .is_some_and(|d| d > std::time::Duration::ZERO)
    );
    // Another principal has its own bucket.
    let mut pos = server.client("pos").await;
    pos.tokenize(tokenize()).await.unwrap();
}

#[tokio::test]
async fn ten_failed_authentications_lock_the_key() {
    let (server, _dir) = server_with("");
    let real = server.api_key("processor");
    // Same public key id, wrong secret.
    let (id_part, secret) = real.rsplit_once('_').unwrap();
    let wrong_secret: String = secret
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let forged = format!("{id_part}_{wrong_secret}");
    let mut attacker = server.client_with_key(Some(&forged)).await;
    for _ in 0..10 {
        assert_eq!(
            attacker.tokenize(tokenize()).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let mut processor = server.client("processor").await;
    let locked = processor.tokenize(tokenize()).await.unwrap_err();
    assert_eq!(locked.code(), Code::Unauthenticated);
    assert!(locked.message().contains("locked"), "{}", locked.message());
    // Other principals are untouched.
    let mut pos = server.client("pos").await;
    pos.tokenize(tokenize()).await.unwrap();
}

#[tokio::test]
async fn token_enumeration_is_alerted_audited_and_locked() {
    let (server, _dir) = server_with("not_found_per_minute = 5\n");
    let mut processor = server.client("processor").await;
    let token = processor
        .tokenize(tokenize())
        .await
        .unwrap()
        .into_inner()
        .token;
    for n in 0..6u64 {
        let guess = format!("411111{n:06}1111");
        let status = processor
            .detokenize(v1::DetokenizeRequest { token: guess })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    let locked = processor
        .detokenize(v1::DetokenizeRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(locked.code(), Code::Unauthenticated);
    assert!(
        locked.message().contains("suspicious"),
        "{}",
        locked.message()
    );

    let anomalies = anomaly_events(&server).await;
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert_eq!(
        (
            anomalies[0].principal.as_str(),
            anomalies[0].resource.as_str(),
            anomalies[0].outcome.as_str()
        ),
        ("processor", "anomaly:token_enumeration", "LOCKED")
    );

    // Locked until an admin unlocks it; then it works again.
    let mut principals = v1::principals_client::PrincipalsClient::with_interceptor(
        server.channel().await,
        server.admin_auth("admin"),
    );
    let listed = principals
        .list_principals(v1::ListPrincipalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .principals;
    assert!(listed.iter().any(|p| p.name == "processor" && p.locked));
    let unlocked = principals
        .unlock_principal(v1::UnlockPrincipalRequest {
            name: "processor".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(unlocked.was_locked);
    processor
        .detokenize(v1::DetokenizeRequest { token })
        .await
        .unwrap();
}

async fn anomaly_events(server: &Server) -> Vec<v1::AuditEvent> {
    common::audit_events(server, "admin", "Anomaly").await
}

#[tokio::test]
async fn detokenize_volume_far_above_baseline_alerts_and_locks() {
    let (server, _dir) = server_with(
        "volume_window_seconds = 1\ndetokenize_spike_floor = 20\ndetokenize_spike_factor = 5\n",
    );
    let mut processor = server.client("processor").await;
    let token = processor
        .tokenize(tokenize())
        .await
        .unwrap()
        .into_inner()
        .token;
    let detokenize = || v1::DetokenizeRequest {
        token: token.clone(),
    };
    // Baseline: two PANs in the first window.
    for _ in 0..2 {
        processor.detokenize(detokenize()).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Ten in the next window is within 5 × 2 … a batch of 30 is not.
    let batch = v1::DetokenizeBatchRequest {
        items: (0..30).map(|_| detokenize()).collect(),
    };
    processor.detokenize_batch(batch).await.unwrap();
    let locked = processor.detokenize(detokenize()).await.unwrap_err();
    assert_eq!(locked.code(), Code::Unauthenticated);
    let events = anomaly_events(&server).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].resource.as_str(), events[0].outcome.as_str()),
        ("anomaly:detokenize_volume", "LOCKED")
    );
    // Another principal is unaffected.
    let mut other = server.client("other").await;
    other.tokenize(tokenize()).await.unwrap();
}

#[tokio::test]
async fn a_call_from_a_new_network_is_alerted() {
    let (server, _dir) = server_with("");
    let key = server.api_key("processor");
    let mut home = common::client_from(&server.addr, "127.0.0.1", &key).await;
    home.tokenize(tokenize()).await.unwrap();
    assert!(
        anomaly_events(&server).await.is_empty(),
        "the first network is learned"
    );
    // Same /24: nothing. Another /24: one alert, the call still served
    // (lock_on_new_network is off by default).
    let mut neighbour = common::client_from(&server.addr, "127.0.0.2", &key).await;
    neighbour.tokenize(tokenize()).await.unwrap();
    let mut away = common::client_from(&server.addr, "127.0.1.1", &key).await;
    away.tokenize(tokenize()).await.unwrap();
    away.tokenize(tokenize()).await.unwrap();
    let events = anomaly_events(&server).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0].principal.as_str(),
            events[0].resource.as_str(),
            events[0].outcome.as_str()
        ),
        ("processor", "anomaly:new_network", "ALERT")
    );
    assert!(
        events[0].origin.starts_with("127.0.1.1:"),
        "{}",
        events[0].origin
    );

    // With lock_on_new_network, the call is refused and the principal locked.
    let (server, _dir) = server_with("lock_on_new_network = true\n");
    let key = server.api_key("processor");
    let mut home = common::client_from(&server.addr, "127.0.0.1", &key).await;
    home.tokenize(tokenize()).await.unwrap();
    let mut away = common::client_from(&server.addr, "127.0.1.1", &key).await;
    assert_eq!(
        away.tokenize(tokenize()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        home.tokenize(tokenize()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

/// Finding 7: 300 calls with made-up API keys wrote 300 fsynced audit
/// events, and nothing limited them before authentication.
#[tokio::test]
async fn made_up_keys_cost_one_event_per_window_and_are_refused_per_network() {
    let (server, _dir) =
        server_with("max_failed_auth_per_network = 20\nrefusal_window_seconds = 3\n");
    let mut refused_early = 0;
    for n in 0..300u32 {
        let key = format!("tsk_{n:016x}_{}", "ab".repeat(32));
        let mut attacker = server.client_with_key(Some(&key)).await;
        let status = attacker.tokenize(tokenize()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        if status.message().contains("this network") {
            refused_early += 1;
        }
    }
    // After 20 failures in a window the rest of it is refused before
    // authentication (a slow machine may see a second window open).
    assert!(refused_early >= 200, "{refused_early} refused early");
    // The window passes (and its counts are flushed); the network may call again.
    tokio::time::sleep(std::time::Duration::from_millis(5000)).await;
    let mut processor = server.client("processor").await;
    processor.tokenize(tokenize()).await.unwrap();

    let refusals: Vec<_> = common::audit_events(&server, "operator", "Tokenize")
        .await
        .into_iter()
        .filter(|e| e.outcome == "Unauthenticated")
        .collect();
    assert!(refusals.len() <= 4, "{} single events", refusals.len());
    let counted: u64 = common::audit_events(&server, "operator", "RefusedCalls")
        .await
        .iter()
        .filter(|e| e.resource.starts_with("rpc:Tokenize "))
        .map(|e| {
            e.resource
                .split("count:")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        counted + u64::try_from(refusals.len()).unwrap(),
        300,
        "every refusal is accounted for"
    );
}

/// Finding 6: a batch cost one rate-limit token however many items it
/// carried, and the volume rule was blind during a principal's first window.
#[tokio::test]
async fn batches_pay_per_item_and_a_new_key_cannot_bulk_read_while_learning() {
    let (server, _dir) =
        server_with("rate_per_second = 1\nburst = 100\ndetokenize_learning_limit = 50\n");
    let mut processor = server.client("processor").await;
    let tokens: Vec<String> = processor
        .tokenize_batch(v1::TokenizeBatchRequest {
            items: (0..60).map(|_| tokenize()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(v1::tokenize_result::Result::Token(t)) => t.token,
            other => panic!("{other:?}"),
        })
        .collect();
    let again = processor
        .tokenize_batch(v1::TokenizeBatchRequest {
            items: (0..60).map(|_| tokenize()).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "60 + 60 > burst 100");

    let batch = || v1::DetokenizeBatchRequest {
        items: tokens
            .iter()
            .map(|t| v1::DetokenizeRequest { token: t.clone() })
            .collect(),
    };
    // 60 PANs in a new key's first window: over the learning limit of 50,
    // an alert (and a lock) although no baseline exists yet.
    processor.detokenize_batch(batch()).await.unwrap();
    let locked = processor.detokenize_batch(batch()).await.unwrap_err();
    assert_eq!(locked.code(), Code::Unauthenticated);
    let events = anomaly_events(&server).await;
    assert!(
        events
            .iter()
            .any(|e| e.resource == "anomaly:detokenize_volume"),
        "{events:?}"
    );
}
