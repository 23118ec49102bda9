//! Key administration end to end against the real binary: a Shamir-sealed
//! production-profile server unsealed by custodians, DEK rotation and
//! retirement, seal, restart; and crypto-shredding of one tenant in dev mode.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/softhsm.rs"]
mod softhsm;

use std::path::Path;

use common::{AdminChannel, OtpAuth, Server, approval_id, assert_no_pan_leaked};
use tessera::cli::client::Bearer;
use tessera::proto::v1;
use tessera::proto::v1::key_admin_client::KeyAdminClient;
use tonic::Code;

type Admin = KeyAdminClient<AdminChannel>;

/// What a master key rotation did.
#[derive(Debug)]
struct Rotated {
    master_key_id: String,
    rewrapped: u32,
}

/// Rotates the master key under dual control: `requester` files it (and
/// may not approve it), `approver` approves and so runs it.
async fn rotate_master(requester: &mut Admin, approver: &mut Admin) -> Rotated {
    let id = approval_id(
        &requester
            .rotate_master_key(v1::RotateMasterKeyRequest {})
            .await
            .unwrap_err(),
    );
    let listed = approver
        .list_approvals(v1::ListApprovalsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .approvals
            .iter()
            .any(|a| a.id == id && a.action == "RotateMasterKey")
    );
    let same = requester
        .approve(v1::ApproveRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(
        same.code(),
        Code::PermissionDenied,
        "the same admin cannot approve"
    );
    let done = approver
        .approve(v1::ApproveRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.action, "RotateMasterKey");
    let again = approver
        .approve(v1::ApproveRequest { id })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "an approval runs once");
    // "master key KEY; N keys rewrapped"
    let rest = done.result.strip_prefix("master key ").unwrap();
    let (key, count) = rest.split_once("; ").unwrap();
    Rotated {
        master_key_id: key.to_owned(),
        rewrapped: count.split(' ').next().unwrap().parse().unwrap(),
    }
}

const VISA: &str = "4111111111111111";
const MASTERCARD: &str = "5555555555554444";

async fn admin(server: &Server, auth: OtpAuth) -> Admin {
    KeyAdminClient::with_interceptor(server.channel().await, auth)
}

fn custodian_key(shares: &Path, n: u8) -> String {
    std::fs::read_to_string(shares.join(format!("custodian-{n}.key"))).unwrap()
}

/// Custodian `n`'s API key and TOTP codes, from the files `tessera init` wrote.
fn custodian(shares: &Path, n: u8) -> OtpAuth {
    let uri = std::fs::read_to_string(shares.join(format!("custodian-{n}.otpauth"))).unwrap();
    OtpAuth::new(&custodian_key(shares, n), &common::secret_of_uri(&uri))
}

fn share(shares: &Path, n: u8) -> Vec<u8> {
    std::fs::read(shares.join(format!("share-{n}.json"))).unwrap()
}

#[tokio::test]
async fn shamir_unseal_rotate_seal_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shares = dir.path().join("shares");
    let log = dir.path().join("server.log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["init", "--shares", "5", "--threshold", "3", "--data-dir"])
        .arg(&data)
        .arg("--share-dir")
        .arg(&shares)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second init on the same data dir is refused.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["init", "--data-dir"])
        .arg(&data)
        .arg("--share-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(64));

    // Add a processor and a tenant admin to the generated config: the
    // custodians are operators of the system scope, not tenant admins.
    let processor_key = tessera::access::api_key::generate().unwrap();
    let tenant_admin_key = tessera::access::api_key::generate().unwrap();
    let (tenant_admin_totp, tenant_admin_secret) = common::totp_file(dir.path(), "acme-admin");
    let config = data.join("tessera.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[principals]]\nname = \"processor\"\ntenant = \"default\"\nroles = [\"tokenize\", \"detokenize\", \"read_info\"]\napi_key_hash = \"{}\"\n\
         \n[[principals]]\nname = \"acme-admin\"\ntenant = \"default\"\nroles = [\"admin\"]\napi_key_hash = \"{}\"\ntotp_secret_file = \"{}\"\n",
        processor_key.hash.to_config_string(),
        tenant_admin_key.hash.to_config_string(),
        tenant_admin_totp.display(),
    ));
    std::fs::write(&config, text).unwrap();
    let ca = data.join("tls").join("ca.pem");
    let start = || {
        Server::start_with(
            &[
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            &data,
            &log,
        )
        .with_tls(&ca)
    };

    let server = start();
    let mut processor = server
        .client_with_key(Some(processor_key.key.expose_secret()))
        .await;
    let tokenize = |pan: &str| v1::TokenizeRequest {
        pan: pan.into(),
        ..Default::default()
    };

    // Sealed: tokenize and detokenize answer UNAVAILABLE, even with bad input.
    assert_eq!(
        processor.tokenize(tokenize(VISA)).await.unwrap_err().code(),
        Code::Unavailable
    );
    let bad = processor
        .detokenize(v1::DetokenizeRequest { token: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unavailable);

    let mut c1 = admin(&server, custodian(&shares, 1)).await;
    let mut c2 = admin(&server, custodian(&shares, 2)).await;
    let mut c3 = admin(&server, custodian(&shares, 3)).await;
    let mut acme = admin(
        &server,
        OtpAuth::new(tenant_admin_key.key.expose_secret(), &tenant_admin_secret),
    )
    .await;
    let status = c1
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(status.sealed);
    // Sealed, the server is up (readiness: operators unseal through it)
    // but the Tokenizer does not serve (what card traffic routes on).
    common::wait_for_health(&server, "", true).await;
    common::wait_for_health(&server, "tessera.v1.Tokenizer", false).await;
    assert_eq!(
        (
            status.kms_backend.as_str(),
            status.unseal_threshold,
            status.unseal_shares_received
        ),
        ("shamir", 3, 0)
    );
    assert!(status.master_key_id.is_empty());
    // Audit reads are refused while sealed too.
    {
        let mut audit = v1::audit_client::AuditClient::with_interceptor(
            server.channel().await,
            custodian(&shares, 1),
        );
        assert_eq!(
            audit.verify(v1::VerifyRequest {}).await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    // Other admin RPCs are refused while sealed.
    assert_eq!(
        acme.rotate_data_key(v1::RotateDataKeyRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );
    // A processor may not unseal.
    let mut not_admin = KeyAdminClient::with_interceptor(
        server.channel().await,
        Bearer::new(processor_key.key.expose_secret()).unwrap(),
    );
    let denied = not_admin
        .unseal(v1::UnsealRequest {
            share: share(&shares, 1),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let unseal = |n: u8| v1::UnsealRequest {
        share: share(&shares, n),
    };
    let p = c1.unseal(unseal(1)).await.unwrap().into_inner();
    assert_eq!((p.sealed, p.shares_received, p.threshold), (true, 1, 3));
    // The same custodian with another share, the same share from another
    // custodian, and garbage: all refused with INVALID_ARGUMENT on `share`.
    for (who, req) in [
        (1u8, unseal(2)),
        (2, unseal(1)),
        (
            2,
            v1::UnsealRequest {
                share: b"{\"format\":\"nope\"}".to_vec(),
            },
        ),
    ] {
        let client = if who == 1 { &mut c1 } else { &mut c2 };
        let status = client.unseal(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    }
    let p = c2.unseal(unseal(2)).await.unwrap().into_inner();
    assert_eq!((p.sealed, p.shares_received), (true, 2));
    assert_eq!(
        processor.tokenize(tokenize(VISA)).await.unwrap_err().code(),
        Code::Unavailable
    );
    let p = c3.unseal(unseal(3)).await.unwrap().into_inner();
    assert!(!p.sealed);
    common::wait_for_health(&server, "tessera.v1.Tokenizer", true).await;

    // Serving: tokenize under DEK v1, rotate, tokenize under v2; both open.
    let t1 = processor
        .tokenize(tokenize(VISA))
        .await
        .unwrap()
        .into_inner()
        .token;
    // A tenant admin cannot unseal, seal or rotate the master key.
    for refused in [
        acme.unseal(unseal(4)).await.unwrap_err(),
        acme.seal(v1::SealRequest {}).await.unwrap_err(),
        acme.rotate_master_key(v1::RotateMasterKeyRequest {})
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    // Nor can an operator manage a tenant's data keys.
    assert_eq!(
        c1.rotate_data_key(v1::RotateDataKeyRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let v = acme
        .rotate_data_key(v1::RotateDataKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(v, 2);
    let t2 = processor
        .tokenize(tokenize(MASTERCARD))
        .await
        .unwrap()
        .into_inner()
        .token;
    for (t, pan) in [(&t1, VISA), (&t2, MASTERCARD)] {
        let got = processor
            .detokenize(v1::DetokenizeRequest { token: t.clone() })
            .await
            .unwrap()
            .into_inner()
            .pan;
        assert_eq!(got, pan);
    }
    let status = acme
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!status.sealed && status.master_key_id.starts_with("shamir:"));
    let keys: Vec<(u32, i32, u64)> = status
        .data_keys
        .iter()
        .map(|k| (k.version, k.state, k.record_count))
        .collect();
    assert_eq!(
        keys,
        vec![
            (1, i32::from(v1::KeyState::DecryptOnly), 1),
            (2, i32::from(v1::KeyState::Active), 1)
        ]
    );
    // Retiring a version still in use, or the active one, is refused.
    for version in [1, 2] {
        let status = acme
            .retire_data_key(v1::RetireDataKeyRequest {
                tenant: String::new(),
                version,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
    }
    // Admins act on their own tenant only.
    let other = acme
        .get_status(v1::GetStatusRequest {
            tenant: "other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);

    // Master key rotation: a new derived version, every DEK rewrapped; it
    // must survive seal, restart and unseal.
    let rotated = rotate_master(&mut c1, &mut c2).await;
    assert!(
        rotated.master_key_id.starts_with("shamir:")
            && rotated.master_key_id != status.master_key_id
    );
    assert_eq!(
        rotated.rewrapped, 4,
        "two DEKs, one index key and the audit key"
    );
    assert_eq!(status.master_key_version, 1);
    let after = c1
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (after.master_key_version, after.master_key_id.as_str()),
        (2, rotated.master_key_id.as_str())
    );

    // Seal: everything but GetStatus and Unseal is UNAVAILABLE again.
    c2.seal(v1::SealRequest {}).await.unwrap();
    common::wait_for_health(&server, "tessera.v1.Tokenizer", false).await;
    assert_eq!(
        processor
            .detokenize(v1::DetokenizeRequest { token: t1.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );
    assert!(
        c1.get_status(v1::GetStatusRequest::default())
            .await
            .unwrap()
            .into_inner()
            .sealed
    );

    // Restart (kill -9): sealed; three other custodians unseal; old tokens open.
    server.kill9();
    let server = start();
    let mut processor = server
        .client_with_key(Some(processor_key.key.expose_secret()))
        .await;
    assert_eq!(
        processor
            .detokenize(v1::DetokenizeRequest { token: t1.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );
    for n in [5u8, 3, 4] {
        let mut c = admin(&server, custodian(&shares, n)).await;
        c.unseal(unseal(n)).await.unwrap();
    }
    for (t, pan) in [(&t1, VISA), (&t2, MASTERCARD)] {
        let got = processor
            .detokenize(v1::DetokenizeRequest { token: t.clone() })
            .await
            .unwrap()
            .into_inner()
            .pan;
        assert_eq!(got, pan);
    }

    drop(server);
    assert_no_pan_leaked(&log, &data, &[VISA, MASTERCARD]);
}

#[tokio::test]
async fn shredding_one_tenant_leaves_the_other_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Server::start(&data, &log);
    let mut processor = server.client("processor").await;
    let mut other = server.client("other").await;
    let mut admin_default = admin(&server, server.admin_auth("admin")).await;

    let req = |pan: &str| v1::TokenizeRequest {
        pan: pan.into(),
        ..Default::default()
    };
    let mine = processor
        .tokenize(req(VISA))
        .await
        .unwrap()
        .into_inner()
        .token;
    let theirs = other
        .tokenize(req(MASTERCARD))
        .await
        .unwrap()
        .into_inner()
        .token;

    // Dual control: one admin files the shred, a second one approves it.
    let id = approval_id(
        &admin_default
            .shred_tenant(v1::ShredTenantRequest::default())
            .await
            .unwrap_err(),
    );
    let still = processor
        .detokenize(v1::DetokenizeRequest {
            token: mine.clone(),
        })
        .await;
    assert!(still.is_ok(), "nothing happens before the approval");
    let mut admin2 = admin(&server, server.admin_auth("admin2")).await;
    let done = admin2
        .approve(v1::ApproveRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.action, "ShredTenant");
    assert!(
        done.result.contains("2 keys destroyed"),
        "one DEK and one index key: {}",
        done.result
    );

    let gone = processor
        .detokenize(v1::DetokenizeRequest {
            token: mine.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let pan = other
        .detokenize(v1::DetokenizeRequest {
            token: theirs.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .pan;
    assert_eq!(pan, MASTERCARD);

    // After a restart the shredded tenant's token is still unreadable.
    server.kill9();
    let server = Server::start(&data, &log);
    let mut processor = server.client("processor").await;
    let mut other = server.client("other").await;
    assert_eq!(
        processor
            .detokenize(v1::DetokenizeRequest { token: mine })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        other
            .detokenize(v1::DetokenizeRequest { token: theirs })
            .await
            .unwrap()
            .into_inner()
            .pan,
        MASTERCARD
    );

    drop(server);
    assert_no_pan_leaked(&log, &data, &[VISA, MASTERCARD]);
}

fn pan_n(n: u64) -> String {
    common::test_pan(5, n)
}

async fn tokenize_many(server: &Server, pans: &[String]) -> Vec<String> {
    tokenize_many_as(server, pans, false).await
}

/// Tokenizes `pans` in batches as the processor, single-use or not.
async fn tokenize_many_as(server: &Server, pans: &[String], single_use: bool) -> Vec<String> {
    let mut processor = server.client("processor").await;
    let mut tokens = Vec::new();
    for chunk in pans.chunks(1000) {
        let items = chunk
            .iter()
            .map(|p| v1::TokenizeRequest {
                pan: p.clone(),
                single_use,
                ..Default::default()
            })
            .collect();
        let results = processor
            .tokenize_batch(v1::TokenizeBatchRequest { items })
            .await
            .unwrap()
            .into_inner()
            .results;
        for r in results {
            match r.result {
                Some(v1::tokenize_result::Result::Token(t)) => tokens.push(t.token),
                other => panic!("tokenize failed: {other:?}"),
            }
        }
    }
    tokens
}

async fn record_counts(admin: &mut Admin) -> Vec<(u32, u64)> {
    admin
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .data_keys
        .iter()
        .map(|k| (k.version, k.record_count))
        .collect()
}

/// Re-encryption cut short by `kill -9` resumes by itself after a restart,
/// from its checkpoint, and every token still opens.
#[tokio::test]
async fn reencryption_resumes_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let config = dir.path().join("tessera.toml");
    // Throttled so the job is reliably mid-way when the server dies; the
    // processor then reads all 2,500 PANs back at once, which a new key's
    // learning limit (1,000) would take for a bulk exfiltration.
    std::fs::write(
        &config,
        "[keys]\nreencrypt_records_per_second = 1000\n[access]\ndetokenize_learning_limit = 10000\n",
    )
    .unwrap();
    let server = Server::start_dev_with_config(&config, &data, &log);
    let pans: Vec<String> = (0..2500).map(pan_n).collect();
    let tokens = tokenize_many(&server, &pans).await;
    let mut admin_client = admin(&server, server.admin_auth("admin")).await;
    assert_eq!(
        admin_client
            .rotate_data_key(v1::RotateDataKeyRequest::default())
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );

    let mut stream = admin_client
        .reencrypt(v1::ReencryptRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        !first.finished && first.done > 0 && first.done < 2500,
        "{first:?}"
    );
    assert_eq!((first.total, first.target_version), (2500, 2));
    server.kill9();

    let server = Server::start_dev_with_config(&config, &data, &log);
    let mut admin_client = admin(&server, server.admin_auth("admin")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if record_counts(&mut admin_client).await == vec![(1, 0), (2, 2500)] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "re-encryption did not resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("resuming re-encryption from checkpoint"),
        "the restarted job resumed, not restarted"
    );

    let mut processor = server.client("processor").await;
    let items = tokens
        .iter()
        .map(|t| v1::DetokenizeRequest { token: t.clone() })
        .collect::<Vec<_>>();
    for (chunk, pans) in items.chunks(1000).zip(pans.chunks(1000)) {
        let results = processor
            .detokenize_batch(v1::DetokenizeBatchRequest {
                items: chunk.to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        for (r, pan) in results.into_iter().zip(pans) {
            match r.result {
                Some(v1::detokenize_result::Result::Pan(p)) => assert_eq!(&p.pan, pan),
                other => panic!("detokenize failed: {other:?}"),
            }
        }
    }
    // The old key can now be destroyed.
    admin_client
        .retire_data_key(v1::RetireDataKeyRequest {
            tenant: String::new(),
            version: 1,
        })
        .await
        .unwrap();

    drop(server);
    let sample: Vec<&str> = pans.iter().take(50).map(String::as_str).collect();
    assert_no_pan_leaked(&log, &data, &sample);
}

/// Live traffic keeps flowing, with zero failed calls, while the DEK rotates
/// and the tenant is re-encrypted.
#[tokio::test]
async fn traffic_continues_through_rotation_and_reencryption() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let config = dir.path().join("tessera.toml");
    // Four workers read back every PAN they tokenize for as long as the key
    // operations take: more than a new key's learning limit (1,000) allows.
    std::fs::write(&config, "[access]\ndetokenize_learning_limit = 1000000\n").unwrap();
    let server = Server::start_dev_with_config(&config, &data, &log);
    let seed: Vec<String> = (10_000..10_600).map(pan_n).collect();
    tokenize_many(&server, &seed).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let mut processor = server.client("processor").await;
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut issued = Vec::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let pan = pan_n(20_000 + w * 100_000 + n);
                n += 1;
                let token = processor
                    .tokenize(v1::TokenizeRequest {
                        pan: pan.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("tokenize during key operations")
                    .into_inner()
                    .token;
                let back = processor
                    .detokenize(v1::DetokenizeRequest {
                        token: token.clone(),
                    })
                    .await
                    .expect("detokenize during key operations")
                    .into_inner()
                    .pan;
                assert_eq!(back, pan);
                issued.push((token, pan));
            }
            issued
        }));
    }
    let mut admin_client = admin(&server, server.admin_auth("admin")).await;
    let mut operator = admin(&server, server.admin_auth("operator")).await;
    let mut operator2 = admin(&server, server.admin_auth("operator2")).await;
    for round in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let v = admin_client
            .rotate_data_key(v1::RotateDataKeyRequest::default())
            .await
            .unwrap()
            .into_inner()
            .version;
        assert_eq!(v, round + 2);
        let master = rotate_master(&mut operator, &mut operator2).await;
        assert!(
            master.master_key_id.starts_with("dev:") && master.rewrapped >= 2,
            "{master:?}"
        );
        let mut stream = admin_client
            .reencrypt(v1::ReencryptRequest::default())
            .await
            .unwrap()
            .into_inner();
        while let Some(p) = stream.message().await.unwrap() {
            if p.finished {
                assert_eq!(p.target_version, v);
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut processor = server.client("processor").await;
    let mut checked = 0;
    for w in workers {
        for (token, pan) in w.await.unwrap() {
            let back = processor
                .detokenize(v1::DetokenizeRequest { token })
                .await
                .unwrap()
                .into_inner()
                .pan;
            assert_eq!(back, pan);
            checked += 1;
        }
    }
    assert!(checked > 0);
    drop(server);
    assert_no_pan_leaked(&log, &data, &[seed[0].as_str(), seed[1].as_str()]);
}

/// A production-profile server whose master key lives in an HSM (SoftHSM2
/// through PKCS#11): the KEK is made with the CLI, records survive a restart.
#[tokio::test]
async fn pkcs11_backed_server_round_trip_and_restart() {
    let token = softhsm::Token::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "hsm",
            "create-kek",
            "--module",
            softhsm::MODULE,
            "--token-label",
            &token.label,
            "--pin-file",
        ])
        .arg(&token.pin_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let processor_key = tessera::access::api_key::generate().unwrap();
    let admin_key = tessera::access::api_key::generate().unwrap();
    let admin2_key = tessera::access::api_key::generate().unwrap();
    let (ops_totp, ops_secret) = common::totp_file(dir.path(), "ops");
    let (ops2_totp, ops2_secret) = common::totp_file(dir.path(), "ops2");
    let pki = common::TestPki::new(&dir.path().join("pki"));
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[kms]\nbackend = \"pkcs11\"\nmodule = \"{}\"\ntoken_label = \"{}\"\npin_file = \"{}\"\n\n\
             [[principals]]\nname = \"processor\"\ntenant = \"default\"\nroles = [\"tokenize\", \"detokenize\"]\napi_key_hash = \"{}\"\n\n\
             [[principals]]\nname = \"ops\"\ntenant = \"_system\"\nroles = [\"operator\"]\napi_key_hash = \"{}\"\ntotp_secret_file = \"{}\"\n\n\
             [[principals]]\nname = \"ops2\"\ntenant = \"_system\"\nroles = [\"operator\"]\napi_key_hash = \"{}\"\ntotp_secret_file = \"{}\"\n{}",
            data.display(),
            softhsm::MODULE,
            token.label,
            token.pin_file.display(),
            processor_key.hash.to_config_string(),
            admin_key.hash.to_config_string(),
            ops_totp.display(),
            admin2_key.hash.to_config_string(),
            ops2_totp.display(),
            pki.config(false, false),
        ),
    )
    .unwrap();
    let args = [
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let server = Server::start_with(&args, &data, &log).with_tls(&pki.ca());
    let mut processor = server
        .client_with_key(Some(processor_key.key.expose_secret()))
        .await;
    let token_value = processor
        .tokenize(v1::TokenizeRequest {
            pan: VISA.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut ops = admin(
        &server,
        OtpAuth::new(admin_key.key.expose_secret(), &ops_secret),
    )
    .await;
    let status = ops
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!status.sealed);
    assert_eq!(status.kms_backend, "pkcs11");
    assert_eq!(
        status.master_key_id,
        format!("pkcs11:{}/tessera-kek", token.label)
    );
    // A new HSM key version; the DEKs are rewrapped under it.
    let mut ops2 = admin(
        &server,
        OtpAuth::new(admin2_key.key.expose_secret(), &ops2_secret),
    )
    .await;
    let rotated = rotate_master(&mut ops, &mut ops2).await;
    assert_eq!(
        rotated.master_key_id,
        format!("pkcs11:{}/tessera-kek.v2", token.label)
    );
    assert_eq!(
        rotated.rewrapped, 3,
        "one DEK, one index key and the audit key"
    );
    server.kill9();

    let server = Server::start_with(&args, &data, &log).with_tls(&pki.ca());
    let mut processor = server
        .client_with_key(Some(processor_key.key.expose_secret()))
        .await;
    let pan = processor
        .detokenize(v1::DetokenizeRequest { token: token_value })
        .await
        .unwrap()
        .into_inner()
        .pan;
    assert_eq!(pan, VISA);
    drop(server);
    assert_no_pan_leaked(&log, &data, &[VISA]);
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// The Prometheus endpoint exposes the seal state and every data key's age
/// (and never a token or PAN).
#[tokio::test]
async fn metrics_expose_key_age_and_seal_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let metrics_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, format!("[metrics]\nlisten = \"{metrics_addr}\"\n")).unwrap();
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
    let mut ops = admin(&server, server.admin_auth("admin")).await;
    ops.rotate_data_key(v1::RotateDataKeyRequest::default())
        .await
        .unwrap();
    let status = ops
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.master_key_version, 1);
    let body = http_get(&metrics_addr, "/metrics");
    assert!(body.contains("tessera_sealed 0"), "{body}");
    for version in ["1", "2"] {
        let line =
            format!("tessera_data_key_age_seconds{{tenant=\"default\",version=\"{version}\"}}");
        assert!(body.contains(&line), "missing {line} in {body}");
    }
    assert!(
        body.contains("tessera_data_key_overdue{tenant=\"default\",version=\"2\"} 0"),
        "{body}"
    );
    // Names and labels, not values: a latency sum such as 0.0032873251
    // is digits enough to read as a card number.
    let series: String = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!body.contains(&token) && !tessera::leak::contains_pan(&series));

    let mut operator = admin(&server, server.admin_auth("operator")).await;
    operator.seal(v1::SealRequest {}).await.unwrap();
    ops.get_status(v1::GetStatusRequest::default())
        .await
        .unwrap();
    assert!(http_get(&metrics_addr, "/metrics").contains("tessera_sealed 1"));
    drop(server);
    assert_no_pan_leaked(&log, &data, &[VISA]);
}

/// Detokenizes `tokens` in batches as the processor: each item's PAN, or
/// the code it failed with.
async fn redeem_all(server: &Server, tokens: &[String]) -> Vec<Result<String, Code>> {
    let mut processor = server.client("processor").await;
    let mut out = Vec::new();
    for chunk in tokens.chunks(1000) {
        let items = chunk
            .iter()
            .map(|t| v1::DetokenizeRequest { token: t.clone() })
            .collect();
        let results = processor
            .detokenize_batch(v1::DetokenizeBatchRequest { items })
            .await
            .unwrap()
            .into_inner()
            .results;
        out.extend(results.into_iter().map(|r| match r.result {
            Some(v1::detokenize_result::Result::Pan(p)) => Ok(p.pan),
            Some(v1::detokenize_result::Result::Error(s)) => Err(Code::from_i32(s.code)),
            None => Err(Code::Unknown),
        }));
    }
    out
}

/// Issue 11, point 7: compaction purges dead tokens past the grace period,
/// page by page with an audit event each, leaves live tokens alone, keeps
/// purged ids reserved, and a run cut short by `kill -9` continues from its
/// checkpoint when an operator runs `tessera keys compact` again.
#[tokio::test]
async fn compaction_purges_the_dead_is_audited_and_continues_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let config = dir.path().join("tessera.toml");
    // No grace, and throttled so the run is reliably mid-way when the
    // server dies; the processor redeems 3,000 PANs at once, which a new
    // key's learning limit (1,000) would take for a bulk exfiltration.
    std::fs::write(
        &config,
        "[tokens]\npurge_grace_s = 0\ncompact_records_per_second = 2000\n\
         [access]\ndetokenize_learning_limit = 100000\nlock_on_anomaly = false\n",
    )
    .unwrap();
    let server = Server::start_dev_with_config(&config, &data, &log);
    let live_pans: Vec<String> = (0..100).map(pan_n).collect();
    let live = tokenize_many(&server, &live_pans).await;
    let dead_pans: Vec<String> = (100..3100).map(pan_n).collect();
    let dead = tokenize_many_as(&server, &dead_pans, true).await;
    // Redeemed once: consumed, dead.
    let redeemed = redeem_all(&server, &dead).await;
    assert!(redeemed.iter().all(Result::is_ok));

    let mut operator = admin(&server, server.admin_auth("operator")).await;
    let mut stream = operator
        .compact(v1::CompactRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        !first.finished && first.examined > 0 && first.examined < 3100,
        "{first:?}"
    );
    server.kill9();

    let server = Server::start_dev_with_config(&config, &data, &log);
    let out = server.admin_cli("operator", &["keys", "compact", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["examined"], 3100, "{done}");
    assert_eq!(done["purged"], 3000, "{done}");
    assert_eq!(done["dead_in_grace"], 0, "{done}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("resuming compaction from checkpoint"),
        "the second run continued the first"
    );

    // The dead are gone, the live still open.
    for got in redeem_all(&server, &dead).await {
        assert_eq!(got, Err(Code::NotFound));
    }
    let got = redeem_all(&server, &live).await;
    assert_eq!(got, live_pans.iter().cloned().map(Ok).collect::<Vec<_>>());

    // Audited: the start, every page with its counts (which add up to the
    // whole run, across the kill), and the end; the chain verifies.
    let pages = common::audit_events(&server, "operator", "Compacted").await;
    let purged = common::purged_by(&pages);
    assert_eq!(purged, 3000, "{pages:?}");
    assert!(pages.iter().all(|e| e.principal == "operator"));
    assert_eq!(
        common::audit_events(&server, "operator", "Compact")
            .await
            .len(),
        2,
        "one start per run"
    );
    let end = common::audit_events(&server, "operator", "CompactFinished").await;
    assert!(
        end.iter().any(|e| e.resource.contains("purged:3000")),
        "{end:?}"
    );
    let verify = server.admin_cli("operator", &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // A tenant admin cannot run it.
    let mut tenant_admin = admin(&server, server.admin_auth("admin")).await;
    let refused = tenant_admin
        .compact(v1::CompactRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    drop(server);
    // A sample: the scan reads the whole data directory once per PAN.
    let sample: Vec<&str> = live_pans
        .iter()
        .chain(&dead_pans)
        .step_by(100)
        .map(String::as_str)
        .collect();
    assert_no_pan_leaked(&log, &data, &sample);
}
