//! Access control end to end: TLS and mTLS (wrong CA, expired certificate,
//! no certificate when required, identity mismatch), the TOTP second factor
//! (valid, missing, expired, replayed), and principals managed on a running
//! server (added, listed, revoked at once and across restarts).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{OtpAuth, Server, TestPki, otp, secret_of_uri};
use tessera::access::totp::{OTP_HEADER, TotpSecret};
use tessera::cli::client::Bearer;
use tessera::proto::v1;
use tessera::proto::v1::key_admin_client::KeyAdminClient;
use tessera::proto::v1::principals_client::PrincipalsClient;
use tessera::proto::v1::tokenizer_client::TokenizerClient;
use tessera::tls::ClientTls;
use tessera::tls::pki::Validity;
use tonic::Code;

const VISA: &str = "4111111111111111";

fn tokenize() -> v1::TokenizeRequest {
    v1::TokenizeRequest {
        pan: VISA.into(),
        ..Default::default()
    }
}

/// A dev server serving TLS from `pki` (the dev principals carry the
/// certificate identities spiffe://tessera/NAME).
fn tls_server(dir: &Path, pki: &TestPki, client_ca: bool, require: bool) -> Server {
    let config = dir.join("tessera.toml");
    std::fs::write(&config, pki.config(client_ca, require)).unwrap();
    Server::start_dev_with_config(&config, &dir.join("data"), &dir.join("server.log"))
        .with_tls(&pki.ca())
}

/// Connects with `tls`; `Err` when the handshake (or connection) fails.
async fn try_channel(addr: &str, tls: &ClientTls) -> Result<tonic::transport::Channel, String> {
    tessera::tls::install_crypto_provider();
    tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .tls_config(tls.config().unwrap())
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Tokenizes over `tls` with no API key: Ok(token) or the failure.
async fn tokenize_with_cert(
    addr: &str,
    tls: &ClientTls,
    key: Option<&str>,
) -> Result<String, String> {
    let channel = try_channel(addr, tls).await?;
    let bearer = key.map_or_else(Bearer::none, |k| Bearer::new(k).unwrap());
    TokenizerClient::with_interceptor(channel, bearer)
        .tokenize(tokenize())
        .await
        .map(|r| r.into_inner().token)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn tls_serves_with_the_right_ca_and_refuses_the_wrong_one_and_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let server = tls_server(dir.path(), &pki, false, false);
    let mut processor = server.client("processor").await;
    let token = processor
        .tokenize(tokenize())
        .await
        .unwrap()
        .into_inner()
        .token;
    let pan = processor
        .detokenize(v1::DetokenizeRequest { token })
        .await
        .unwrap()
        .into_inner()
        .pan;
    assert_eq!(pan, VISA);

    // A client that trusts another CA refuses the server.
    let other = TestPki::new(&dir.path().join("other-pki"));
    let wrong_ca = ClientTls {
        ca_file: Some(other.ca()),
        ..ClientTls::default()
    };
    let key = server.api_key("processor");
    assert!(
        tokenize_with_cert(&server.addr, &wrong_ca, Some(&key))
            .await
            .is_err()
    );

    // Plaintext gRPC to the TLS port gets no answer.
    let plain_addr = server.addr.replacen("https://", "http://", 1);
    let plaintext = async {
        let channel = tonic::transport::Endpoint::from_shared(plain_addr)
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        TokenizerClient::with_interceptor(channel, Bearer::new(&key).unwrap())
            .tokenize(tokenize())
            .await
            .map_err(|s| s.to_string())
    };
    assert!(plaintext.await.is_err());

    // The CLI speaks TLS with --ca-cert.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "tokenize",
            VISA,
            "--json",
            "--addr",
            &server.addr,
            "--ca-cert",
        ])
        .arg(pki.ca())
        .env("TESSERA_API_KEY", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = server.log.clone();
    let data = server.data_dir.clone();
    drop(server);
    common::assert_no_pan_leaked(&log, &data, &[VISA]);
}

#[tokio::test]
async fn mtls_maps_certificates_to_principals_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let server = tls_server(dir.path(), &pki, true, true);
    let with_cert = |(cert, key): (std::path::PathBuf, std::path::PathBuf)| ClientTls {
        ca_file: Some(pki.ca()),
        cert_file: Some(cert),
        key_file: Some(key),
        server_name: None,
    };

    // The processor's certificate alone authenticates it.
    let processor =
        with_cert(pki.client("processor", "spiffe://tessera/processor", Validity::days(1)));
    let token = tokenize_with_cert(&server.addr, &processor, None)
        .await
        .unwrap();
    let channel = try_channel(&server.addr, &processor).await.unwrap();
    let pan = TokenizerClient::with_interceptor(channel, Bearer::none())
        .detokenize(v1::DetokenizeRequest { token })
        .await
        .unwrap()
        .into_inner()
        .pan;
    assert_eq!(pan, VISA);

    // The pos certificate names a principal without the detokenize role.
    let pos = with_cert(pki.client("pos", "spiffe://tessera/pos", Validity::days(1)));
    let channel = try_channel(&server.addr, &pos).await.unwrap();
    let denied = TokenizerClient::with_interceptor(channel, Bearer::none())
        .detokenize(v1::DetokenizeRequest {
            token: "4111110000001111".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A certificate and an API key that name different principals.
    let processor_key = server.api_key("processor");
    let mismatch = tokenize_with_cert(&server.addr, &pos, Some(&processor_key))
        .await
        .unwrap_err();
    assert!(mismatch.starts_with("Unauthenticated"), "{mismatch}");

    // A valid certificate whose identity no principal holds.
    let stranger =
        with_cert(pki.client("stranger", "spiffe://tessera/stranger", Validity::days(1)));
    let unknown = tokenize_with_cert(&server.addr, &stranger, None)
        .await
        .unwrap_err();
    assert!(unknown.starts_with("Unauthenticated"), "{unknown}");

    // No certificate, an expired one, and one from another CA: refused
    // during the handshake, even with a valid API key.
    let none = ClientTls {
        ca_file: Some(pki.ca()),
        ..ClientTls::default()
    };
    let expired =
        with_cert(pki.client("expired", "spiffe://tessera/processor", Validity::expired()));
    let other = TestPki::new(&dir.path().join("other-pki"));
    let (foreign_cert, foreign_key) =
        other.client("foreign", "spiffe://tessera/processor", Validity::days(1));
    let foreign = ClientTls {
        ca_file: Some(pki.ca()),
        cert_file: Some(foreign_cert),
        key_file: Some(foreign_key),
        server_name: None,
    };
    for (name, tls) in [
        ("no cert", &none),
        ("expired", &expired),
        ("wrong CA", &foreign),
    ] {
        let result = tokenize_with_cert(&server.addr, tls, Some(&processor_key)).await;
        assert!(result.is_err(), "{name}: {result:?}");
    }
}

#[tokio::test]
async fn admin_calls_need_a_fresh_totp_code_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &dir.path().join("server.log"));
    let key = server.api_key("admin");
    let secret = server.totp_secret("admin");
    let channel = server.channel().await;
    let call = |code: Option<String>| {
        let channel = channel.clone();
        let key = key.clone();
        async move {
            let mut request = tonic::Request::new(v1::GetStatusRequest::default());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
            if let Some(code) = code {
                request
                    .metadata_mut()
                    .insert(OTP_HEADER, code.parse().unwrap());
            }
            KeyAdminClient::new(channel).get_status(request).await
        }
    };
    let missing = call(None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("x-tessera-otp"),
        "{}",
        missing.message()
    );

    // A code from ten steps ago has expired.
    let parsed = TotpSecret::from_base32(&secret).unwrap();
    let stale = parsed.code(
        SystemTime::now() - Duration::from_secs(10),
        common::OTP_STEP,
    );
    let expired = call(Some(stale)).await.unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);

    let code = otp(&secret);
    call(Some(code.clone())).await.unwrap();
    let replayed = call(Some(code)).await.unwrap_err();
    assert_eq!(replayed.code(), Code::Unauthenticated);
    assert!(
        replayed.message().contains("already used"),
        "{}",
        replayed.message()
    );

    // A wrong code never works, and a valid API key alone is not enough for
    // the audit log either.
    let now = tessera::access::totp::counter(SystemTime::now(), common::OTP_STEP);
    let wrong = (parsed.code_at(now) + 1) % 1_000_000;
    let refused = call(Some(format!("{wrong:06}"))).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut audit = v1::audit_client::AuditClient::with_interceptor(
        server.channel().await,
        Bearer::new(&key).unwrap(),
    );
    let status = audit.verify(v1::VerifyRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn principals_are_added_and_revoked_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Server::start(&data, &log);
    let mut admin =
        PrincipalsClient::with_interceptor(server.channel().await, server.admin_auth("admin"));

    // The CLI adds a POS principal; its key works at once.
    let out = server.admin_cli(
        "admin",
        &["principal", "add", "till-7", "--role", "tokenize", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let till_key = added["api_key"].as_str().unwrap().to_owned();
    assert!(added["otpauth_uri"].as_str().unwrap().is_empty());
    let mut till = server.client_with_key(Some(&till_key)).await;
    till.tokenize(tokenize()).await.unwrap();

    // An admin gets an otpauth:// URI, and its codes work.
    let ops = admin
        .add_principal(v1::AddPrincipalRequest {
            name: "ops".into(),
            roles: vec!["admin".into()],
            cert_identity: String::new(),
            tenant: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        ops.otpauth_uri
            .starts_with("otpauth://totp/Tessera:ops?secret=")
    );
    // Granting admin waits for a second admin: the key works only after.
    assert_eq!(ops.approval_id.len(), 16);
    let ops_auth = OtpAuth::new(&ops.api_key, &secret_of_uri(&ops.otpauth_uri));
    let mut ops_admin = KeyAdminClient::with_interceptor(server.channel().await, ops_auth.clone());
    let early = ops_admin
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::Unauthenticated);
    let mut admin2 =
        KeyAdminClient::with_interceptor(server.channel().await, server.admin_auth("admin2"));
    admin2
        .approve(v1::ApproveRequest {
            id: ops.approval_id.clone(),
        })
        .await
        .unwrap();
    ops_admin
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap();

    // Names are unique; bad requests say which field is wrong.
    let dup = admin
        .add_principal(v1::AddPrincipalRequest {
            name: "till-7".into(),
            roles: vec!["tokenize".into()],
            cert_identity: String::new(),
            tenant: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad = admin
        .add_principal(v1::AddPrincipalRequest {
            name: "x".into(),
            roles: vec!["root".into()],
            cert_identity: String::new(),
            tenant: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let listed = admin
        .list_principals(v1::ListPrincipalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .principals;
    let names: Vec<_> = listed.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"till-7") && names.contains(&"ops") && names.contains(&"processor"));
    assert!(
        !names.contains(&"other"),
        "another tenant's principals stay hidden"
    );

    // Revocation: the very next call fails; self-revocation is refused;
    // another tenant's principal is not found.
    admin
        .revoke_principal(v1::RevokePrincipalRequest {
            name: "till-7".into(),
            cascade: false,
        })
        .await
        .unwrap();
    let revoked = till.tokenize(tokenize()).await.unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated);
    let own = admin
        .revoke_principal(v1::RevokePrincipalRequest {
            name: "admin".into(),
            cascade: false,
        })
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::FailedPrecondition);
    let foreign = admin
        .revoke_principal(v1::RevokePrincipalRequest {
            name: "other".into(),
            cascade: false,
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    let out = server.admin_cli("admin2", &["principal", "revoke", "ops"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = ops_admin
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Still revoked after a restart; the added key was never stored in clear.
    drop(server);
    let server = Server::start(&data, &log);
    let mut till = server.client_with_key(Some(&till_key)).await;
    assert_eq!(
        till.tokenize(tokenize()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Nothing under the data directory (the store, its shared state, any
    // file) holds an issued key in clear.
    for file in files_under(&data) {
        let bytes = std::fs::read(&file).unwrap();
        for key in [&till_key, &ops.api_key] {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{} holds an API key",
                file.display()
            );
        }
    }
    let out = server.admin_cli("admin", &["principal", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let till_row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "till-7")
        .unwrap();
    assert_eq!(till_row["revoked"], true);
    assert_eq!(till_row["origin"], "added");
}

/// Finding 8: admin strings reached the store and the audit log before they
/// were validated (a 2.5 MB name made of card numbers was refused, but
/// logged, and `tessera audit list` failed afterwards). Finding 3: card
/// numbers with separators passed the metadata filter and the scans.
#[tokio::test]
async fn admin_strings_and_metadata_are_checked_before_anything_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Server::start(&data, &log);
    let mut admin =
        PrincipalsClient::with_interceptor(server.channel().await, server.admin_auth("admin"));
    let spaced = "5555 5555 5555 4444";
    let dashed = "3782-822463-10005";

    // Sending 2.5 MB can outlast a one-second test TOTP step on a loaded
    // machine: this call goes with an admin session instead of a code.
    let session = admin
        .create_session(v1::CreateSessionRequest {})
        .await
        .unwrap()
        .into_inner()
        .session;
    let mut admin_session = PrincipalsClient::with_interceptor(
        server.channel().await,
        Bearer::new(&server.api_key("admin"))
            .unwrap()
            .with_session(&session)
            .unwrap(),
    );
    let huge = format!("{spaced} ").repeat(2_500_000 / 20);
    let refused = admin_session
        .add_principal(v1::AddPrincipalRequest {
            name: huge,
            roles: vec!["tokenize".into()],
            cert_identity: String::new(),
            tenant: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    for name in [dashed, "till 7", "till\n7"] {
        let refused = admin
            .add_principal(v1::AddPrincipalRequest {
                name: name.into(),
                roles: vec!["tokenize".into()],
                cert_identity: String::new(),
                tenant: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{name:?}");
        assert!(!refused.message().contains(name), "{name:?}");
    }
    let unknown_role = admin
        .add_principal(v1::AddPrincipalRequest {
            name: "till-8".into(),
            roles: vec![dashed.into()],
            cert_identity: String::new(),
            tenant: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_role.code(), Code::InvalidArgument);
    assert!(!tessera::leak::contains_pan(unknown_role.message()));
    for refused in [
        admin
            .revoke_principal(v1::RevokePrincipalRequest {
                name: dashed.into(),
                cascade: false,
            })
            .await
            .unwrap_err(),
        admin
            .unlock_principal(v1::UnlockPrincipalRequest {
                name: spaced.into(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(!tessera::leak::contains_pan(refused.message()));
    }
    let mut keys =
        KeyAdminClient::with_interceptor(server.channel().await, server.admin_auth("admin"));
    let bad_id = keys
        .approve(v1::ApproveRequest { id: dashed.into() })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);

    // Metadata with separated card numbers is refused and never echoed.
    let mut pos = server.client("processor").await;
    for value in [spaced, dashed, "4111.1111.1111.1111", "4111/1111/1111/1111"] {
        let refused = pos
            .tokenize(v1::TokenizeRequest {
                pan: VISA.into(),
                metadata: [("note".to_owned(), value.to_owned())].into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{value}");
        assert!(!tessera::leak::contains_pan(refused.message()));
    }

    // The audit log still reads, and holds none of it.
    let events = common::audit_events(&server, "admin", "").await;
    assert!(
        events
            .iter()
            .any(|e| e.resource == "principal:<invalid name>")
    );
    assert!(events.iter().any(|e| e.resource == "approval:<invalid id>"));
    for event in &events {
        assert!(event.resource.len() <= 128, "{}", event.resource.len());
        assert!(
            !tessera::leak::contains_pan(&event.resource),
            "{}",
            event.resource
        );
    }
    drop(server);
    common::assert_no_pan_leaked(&log, &data, &[spaced, dashed, VISA]);
}

/// Requirement 2 and finding 15: each admin call needed a fresh TOTP code,
/// so a rotation ceremony (status, rotate, re-encrypt, status) waited two
/// minutes for codes. `tessera login` opens a short-lived session instead.
#[tokio::test]
async fn an_admin_session_carries_a_ceremony_without_new_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = Server::start(&data, &log);
    let cli = |args: &[&str], session: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(args)
            .args(["--addr", &server.addr])
            .env("TESSERA_API_KEY", server.api_key("admin"))
            .env_remove("TESSERA_OTP")
            .stdin(std::process::Stdio::null());
        match session {
            Some(s) => command.env("TESSERA_SESSION", s),
            None => command.env_remove("TESSERA_SESSION"),
        };
        command.output().unwrap()
    };

    let login = server.admin_cli("admin", &["login", "--json"]);
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let opened: serde_json::Value = serde_json::from_slice(&login.stdout).unwrap();
    let session = opened["session"].as_str().unwrap().to_owned();
    assert!(session.starts_with("tss_"));

    // The ceremony: no code asked for (stdin is closed), every step works.
    let started = std::time::Instant::now();
    for args in [
        &["keys", "status"][..],
        &["keys", "rotate"],
        &["keys", "reencrypt"],
        &["keys", "status"],
        &["audit", "verify"],
    ] {
        let out = cli(args, Some(&session));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // Without the session (and without a code) the same command fails.
    assert!(!cli(&["keys", "status"], None).status.success());

    // Bound to its principal: another admin's key with this session fails,
    // and a session cannot open another session.
    let mut as_admin2 = KeyAdminClient::with_interceptor(
        server.channel().await,
        Bearer::new(&server.api_key("admin2"))
            .unwrap()
            .with_session(&session)
            .unwrap(),
    );
    let stolen = as_admin2
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::Unauthenticated);
    let mut principals = PrincipalsClient::with_interceptor(
        server.channel().await,
        Bearer::new(&server.api_key("admin"))
            .unwrap()
            .with_session(&session)
            .unwrap(),
    );
    let chained = principals
        .create_session(v1::CreateSessionRequest {})
        .await
        .unwrap_err();
    assert_eq!(chained.code(), Code::FailedPrecondition);

    // Logout ends it; the session never reached the log or the store.
    let out = cli(&["logout"], Some(&session));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cli(&["keys", "status"], Some(&session)).status.success());
    drop(server);
    let secret = session.rsplit('_').next().unwrap();
    for file in common::files_under(&data).into_iter().chain([log]) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the session secret is in {}",
            file.display()
        );
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}
