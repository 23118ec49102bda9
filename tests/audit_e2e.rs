//! The audit log end to end: every call becomes an event with the PCI DSS
//! 10.2.2 fields and the caller's request id; `Verify` (and `tessera audit
//! verify`) detect an edited, deleted, inserted, reordered or truncated log
//! and name the first bad position.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;

use common::{AdminChannel, Server, assert_no_pan_leaked};
use tessera::cli::client::Bearer;
use tessera::proto::v1;
use tessera::proto::v1::audit_client::AuditClient;
use tonic::Code;

type Auditor = AuditClient<AdminChannel>;

const VISA: &str = "4111111111111111";

async fn auditor(server: &Server) -> Auditor {
    AuditClient::with_interceptor(server.channel().await, server.admin_auth("admin"))
}

async fn all_events(client: &mut Auditor) -> Vec<v1::AuditEvent> {
    let mut stream = client
        .list_events(v1::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        events.extend(page.events);
    }
    events
}

fn with_request_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

#[tokio::test]
async fn every_call_is_an_event_with_the_required_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
    let server = Server::start(&data, &log);
    let mut processor = server.client("processor").await;
    let token = processor
        .tokenize(with_request_id(
            v1::TokenizeRequest {
                pan: VISA.into(),
                ..Default::default()
            },
            "req-tok",
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    for n in 0..3 {
        processor
            .detokenize(with_request_id(
                v1::DetokenizeRequest {
                    token: token.clone(),
                },
                &format!("req-det-{n}"),
            ))
            .await
            .unwrap();
    }
    let missing = processor
        .detokenize(with_request_id(
            v1::DetokenizeRequest {
                token: "4111110000001234".into(),
            },
            "req-miss",
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let mut anonymous = common::client(&server.addr, None).await;
    let denied = anonymous
        .detokenize(with_request_id(
            v1::DetokenizeRequest {
                token: token.clone(),
            },
            "req-anon",
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);

    // The system scope's auditor sees every event, the unattributed
    // refusal too (a tenant's auditors see their tenant's).
    let mut audit =
        AuditClient::with_interceptor(server.channel().await, server.admin_auth("operator"));
    let events = all_events(&mut audit).await;
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e.request_id == id)
            .unwrap_or_else(|| panic!("no event {id}"))
    };
    let tok = by_id("req-tok");
    assert_eq!(
        (
            tok.action.as_str(),
            tok.outcome.as_str(),
            tok.principal.as_str(),
            tok.tenant.as_str()
        ),
        ("Tokenize", "OK", "processor", "default")
    );
    assert!(tok.resource.starts_with("token:") && tok.resource.len() == "token:".len() + 16);
    for n in 0..3 {
        let e = by_id(&format!("req-det-{n}"));
        assert_eq!(
            (e.action.as_str(), e.outcome.as_str()),
            ("Detokenize", "OK")
        );
        assert_eq!(
            e.resource, tok.resource,
            "the same token, named by keyed id"
        );
    }
    assert_eq!(by_id("req-miss").outcome, "NotFound");
    let anon = by_id("req-anon");
    assert_eq!(
        (anon.outcome.as_str(), anon.principal.as_str()),
        ("Unauthenticated", "")
    );
    // The vault's own first event stores the audit key with the first
    // signed head; every other event is a call's.
    assert_eq!(
        (events[0].action.as_str(), events[0].principal.as_str()),
        ("AuditKeyCreated", "tessera")
    );
    for e in &events[1..] {
        assert!(
            e.time.is_some() && !e.origin.is_empty() && !e.request_id.is_empty(),
            "{e:?}"
        );
        assert!(!e.resource.contains(&token) && !format!("{e:?}").contains(VISA));
    }
    // Positions are consecutive.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, u64::try_from(i).unwrap());
    }
    // Filters.
    let mut stream = audit
        .list_events(v1::ListEventsRequest {
            action: "Detokenize".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut detokenizes = 0;
    while let Some(page) = stream.message().await.unwrap() {
        detokenizes += page
            .events
            .iter()
            .filter(|e| e.action == "Detokenize")
            .count();
        assert!(page.events.iter().all(|e| e.action == "Detokenize"));
    }
    assert_eq!(detokenizes, 5, "3 OK, 1 NotFound, 1 Unauthenticated");
    // Another tenant's auditor sees none of these events... the dev "other"
    // principal has no audit role, which is refused and audited itself.
    let mut other = AuditClient::with_interceptor(
        server.channel().await,
        Bearer::new(&server.api_key("other")).unwrap(),
    );
    assert_eq!(
        other.verify(v1::VerifyRequest {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    let report = audit
        .verify(v1::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(report.intact && report.head_signature_checked, "{report:?}");
    assert!(report.signed_through.is_some());
    drop(server);
    assert_no_pan_leaked(&log, &data, &[VISA]);
}

/// Rewrites the stored audit tree of a stopped server's data dir.
fn tamper(data: &Path, f: impl FnOnce(&sled::Tree)) {
    let db = sled::open(data.join("store")).unwrap();
    let tree = one_event_per_key(&db);
    f(&tree);
    db.flush().unwrap();
}

/// Unpacks the audit tree's segments (one per commit) into one event per
/// key, the layout Tessera still reads, so a forger's edits can address
/// single positions.
fn one_event_per_key(db: &sled::Db) -> sled::Tree {
    let tree = db.open_tree("audit").unwrap();
    let mut events = Vec::new();
    for item in tree.iter() {
        let (key, value) = item.unwrap();
        let first = u64::from_be_bytes(key.as_ref().try_into().unwrap());
        events.extend(tessera::store::segment::decode(first, &value).unwrap());
    }
    tree.clear().unwrap();
    for (seq, event) in events {
        tree.insert(key(seq), event).unwrap();
    }
    tree
}

fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test]
async fn tampering_is_detected_at_the_first_bad_position() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let log = dir.path().join("server.log");
    let server = Server::start(&pristine, &log);
    let mut processor = server.client("processor").await;
    for _ in 0..8 {
        processor
            .tokenize(v1::TokenizeRequest {
                pan: VISA.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    server.kill9();

    type Tamper = Box<dyn FnOnce(&sled::Tree)>;
    let cases: Vec<(&str, Tamper, u64)> = vec![
        (
            "edit",
            Box::new(|t: &sled::Tree| {
                let mut v = t.get(key(3)).unwrap().unwrap().to_vec();
                let last = v.len() - 1;
                v[last] ^= 0x01; // a byte of the origin field
                t.insert(key(3), v).unwrap();
            }),
            3,
        ),
        (
            "delete",
            Box::new(|t: &sled::Tree| {
                t.remove(key(4)).unwrap();
            }),
            4,
        ),
        (
            "insert",
            Box::new(|t: &sled::Tree| {
                // Shift events 5.. up by one and put a forged copy of 2 at 5.
                let n = u64::try_from(t.len()).unwrap();
                for i in (5..n).rev() {
                    let v = t.get(key(i)).unwrap().unwrap();
                    t.insert(key(i + 1), v).unwrap();
                }
                let forged = t.get(key(2)).unwrap().unwrap();
                t.insert(key(5), forged).unwrap();
            }),
            5,
        ),
        (
            "reorder",
            Box::new(|t: &sled::Tree| {
                let a = t.get(key(2)).unwrap().unwrap();
                let b = t.get(key(3)).unwrap().unwrap();
                t.insert(key(2), b).unwrap();
                t.insert(key(3), a).unwrap();
            }),
            2,
        ),
        (
            "truncate",
            Box::new(|t: &sled::Tree| {
                let n = u64::try_from(t.len()).unwrap();
                t.remove(key(n - 1)).unwrap();
                t.remove(key(n - 2)).unwrap();
            }),
            7,
        ),
    ];
    for (name, change, expected) in cases {
        let data = dir.path().join(name);
        copy_dir(&pristine, &data);
        tamper(&data, change);
        let server = Server::start(&data, &log);
        let mut audit = auditor(&server).await;
        let report = audit
            .verify(v1::VerifyRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(!report.intact, "{name}: {report:?}");
        assert_eq!(
            report.first_bad_position,
            Some(expected),
            "{name}: {report:?}"
        );
        // The CLI says so too, and exits non-zero.
        let out = server.admin_cli("admin", &["audit", "verify"]);
        assert!(!out.status.success(), "{name}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("TAMPERED at event {expected}")),
            "{name}"
        );
        if name == "truncate" {
            // Appending would sign over the truncation: the vault fails closed.
            let mut processor = server.client("processor").await;
            let refused = processor
                .tokenize(v1::TokenizeRequest {
                    pan: VISA.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::Unavailable);
            let report = audit
                .verify(v1::VerifyRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                report.first_bad_position,
                Some(expected),
                "still reported after refusals"
            );
        }
    }
    // The untouched copy verifies.
    let server = Server::start(&pristine, &log);
    let out = server.admin_cli("admin", &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Finding 5: a missing signed head counted as intact. Delete the head,
/// edit an event and recompute the unkeyed hashes: `verify` exited 0 and
/// the next unsealed append signed the forged chain.
#[tokio::test]
async fn a_deleted_head_is_tampering_until_an_operator_recovers() {
    use tessera::audit::chain::ChainedEvent;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Server::start(&data, &log);
    let mut processor = server.client("processor").await;
    let tokenize = || v1::TokenizeRequest {
        pan: VISA.into(),
        ..Default::default()
    };
    for _ in 0..6 {
        processor.tokenize(tokenize()).await.unwrap();
    }
    server.kill9();

    // The forger: no key, full write access to the data dir.
    {
        let db = sled::open(data.join("store")).unwrap();
        db.open_tree("audit_meta").unwrap().remove(b"head").unwrap();
        let tree = one_event_per_key(&db);
        let n = u64::try_from(tree.len()).unwrap();
        let mut prev = ChainedEvent::decode(&tree.get(key(2)).unwrap().unwrap())
            .unwrap()
            .hash;
        for seq in 3..n {
            let mut event = ChainedEvent::decode(&tree.get(key(seq)).unwrap().unwrap())
                .unwrap()
                .event;
            if seq == 3 {
                event.origin = "10.9.9.9:1".into();
            }
            let forged = ChainedEvent::new(seq, prev, event);
            prev = forged.hash;
            tree.insert(key(seq), forged.encode()).unwrap();
        }
        db.flush().unwrap();
    }

    let server = Server::start(&data, &log);
    let mut audit = auditor(&server).await;
    let report = audit
        .verify(v1::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!report.intact, "{report:?}");
    assert!(report.problem.contains("head is missing"), "{report:?}");
    let out = server.admin_cli("admin", &["audit", "verify"]);
    assert!(!out.status.success());
    // Nothing is appended (so nothing signs the forged chain): calls fail closed.
    let mut processor = server.client("processor").await;
    assert_eq!(
        processor.tokenize(tokenize()).await.unwrap_err().code(),
        Code::Unavailable
    );
    // A seal (the runbook's first step) must not make the vault impossible
    // to reopen and recover: the unseal goes past the refusing log.
    {
        use tessera::proto::v1::key_admin_client::KeyAdminClient;
        let mut operator =
            KeyAdminClient::with_interceptor(server.channel().await, server.admin_auth("operator"));
        let mut operator2 = KeyAdminClient::with_interceptor(
            server.channel().await,
            server.admin_auth("operator2"),
        );
        operator.seal(v1::SealRequest {}).await.unwrap();
        let id = common::approval_id(
            &operator
                .unseal(v1::UnsealRequest { share: Vec::new() })
                .await
                .unwrap_err(),
        );
        operator2.approve(v1::ApproveRequest { id }).await.unwrap();
    }
    // Only an operator's explicit, recorded recovery continues the log; a
    // tenant admin cannot, and a recovery needs a reason.
    let out = server.admin_cli("admin", &["audit", "recover", "--reason", "INC-7"]);
    assert!(!out.status.success());
    let out = server.admin_cli("operator", &["audit", "recover", "--reason", "INC-7"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    processor.tokenize(tokenize()).await.unwrap();
    let report = audit
        .verify(v1::VerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.recovered_at.len(), 1, "{report:?}");
    let out = server.admin_cli("admin", &["audit", "verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("recovered by an operator"));
    // The recovery is recorded in the system scope, with the reason and
    // what was found.
    let out = server.admin_cli(
        "operator",
        &["audit", "list", "--action", "AuditRecovered", "--json"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("reason:INC-7") && text.contains("head is missing"),
        "{text}"
    );
}

#[tokio::test]
async fn the_second_sink_gets_every_event_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let jsonl = dir.path().join("siem").join("audit.jsonl");
    std::fs::create_dir_all(jsonl.parent().unwrap()).unwrap();
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!("[audit]\njsonl_file = \"{}\"\n", jsonl.display()),
    )
    .unwrap();
    let server = Server::start_dev_with_config(&config, &data, &log);
    let mut processor = server.client("processor").await;
    let token = processor
        .tokenize(v1::TokenizeRequest {
            pan: VISA.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    processor
        .detokenize(v1::DetokenizeRequest { token })
        .await
        .unwrap();
    let mut audit = auditor(&server).await;
    let events = all_events(&mut audit).await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The ListEvents call itself is audited after it streams.
    assert!(
        lines.len() >= events.len(),
        "{} < {}",
        lines.len(),
        events.len()
    );
    for (line, event) in lines.iter().zip(&events) {
        assert_eq!(line["position"], event.position);
        assert_eq!(line["action"], event.action.as_str());
        assert_eq!(line["principal"], event.principal.as_str());
        assert_eq!(line["outcome"], event.outcome.as_str());
    }
    assert!(lines.iter().any(|l| l["action"] == "Detokenize"));
    drop(server);
    assert_no_pan_leaked(&log, dir.path(), &[VISA]);
}
