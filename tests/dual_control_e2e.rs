//! Dual control as an attacker tries it (SECURITY.md §5.1, §5.2; review
//! findings 1 and 2): one admin minting a PAN reader, minting its own second
//! person, approving its own request; a tenant admin reaching vault-wide
//! actions; one operator sealing and unsealing alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{AdminChannel, OtpAuth, Server, approval_id, secret_of_uri};
use tessera::proto::v1;
use tessera::proto::v1::key_admin_client::KeyAdminClient;
use tessera::proto::v1::principals_client::PrincipalsClient;
use tonic::Code;

const VISA: &str = "4111111111111111";

type Keys = KeyAdminClient<AdminChannel>;
type Book = PrincipalsClient<AdminChannel>;

async fn keys(server: &Server, auth: OtpAuth) -> Keys {
    KeyAdminClient::with_interceptor(server.channel().await, auth)
}

async fn book(server: &Server, auth: OtpAuth) -> Book {
    PrincipalsClient::with_interceptor(server.channel().await, auth)
}

fn grant(name: &str, role: &str) -> v1::AddPrincipalRequest {
    v1::AddPrincipalRequest {
        name: name.into(),
        roles: vec![role.into()],
        cert_identity: String::new(),
        tenant: String::new(),
    }
}

async fn approve(client: &mut Keys, id: &str) -> Result<v1::ApproveResponse, tonic::Status> {
    client
        .approve(v1::ApproveRequest { id: id.into() })
        .await
        .map(tonic::Response::into_inner)
}

/// Finding 1: one admin with its TOTP secret added a `detokenize` principal
/// and read PANs with it; it added a second admin and had it approve its own
/// RotateMasterKey or ShredTenant.
#[tokio::test]
async fn one_admin_can_neither_mint_a_reader_nor_its_own_second_person() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &dir.path().join("server.log"));
    let mut admin = book(&server, server.admin_auth("admin")).await;
    let mut admin_keys = keys(&server, server.admin_auth("admin")).await;
    let mut admin2_keys = keys(&server, server.admin_auth("admin2")).await;
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

    // A PAN reader: credentials are issued, but do nothing until approved.
    let reader = admin
        .add_principal(grant("reader", "detokenize"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reader.approval_id.len(), 16);
    let mut as_reader = server.client_with_key(Some(&reader.api_key)).await;
    let refused = as_reader
        .detokenize(v1::DetokenizeRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // The requester cannot approve its own grant.
    let own = approve(&mut admin_keys, &reader.approval_id)
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);

    // Its own second person: an admin it creates waits for approval too...
    let shred = approval_id(
        &admin_keys
            .shred_tenant(v1::ShredTenantRequest::default())
            .await
            .unwrap_err(),
    );
    let minted = admin
        .add_principal(grant("mallory", "admin"))
        .await
        .unwrap()
        .into_inner();
    let mallory_auth = OtpAuth::new(&minted.api_key, &secret_of_uri(&minted.otpauth_uri));
    let mut mallory = keys(&server, mallory_auth.clone()).await;
    assert_eq!(
        approve(&mut mallory, &shred).await.unwrap_err().code(),
        Code::Unauthenticated,
        "not live before approval"
    );
    // ...and once another admin lets it in, it is still no eligible approver
    // of its creator's request (created by the requester, after the request).
    approve(&mut admin2_keys, &minted.approval_id)
        .await
        .unwrap();
    let ineligible = approve(&mut mallory, &shred).await.unwrap_err();
    assert_eq!(ineligible.code(), Code::PermissionDenied, "{ineligible:?}");
    assert!(ineligible.message().contains("eligible"), "{ineligible:?}");
    // A principal that needs no approval (tokenize) cannot approve either.
    let helper = admin
        .add_principal(grant("helper", "tokenize"))
        .await
        .unwrap()
        .into_inner();
    assert!(helper.approval_id.is_empty());
    let mut helper_keys = keys(&server, OtpAuth::key_only(&helper.api_key)).await;
    assert_eq!(
        approve(&mut helper_keys, &shred).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Nothing was shredded: the processor still reads its token.
    processor
        .detokenize(v1::DetokenizeRequest {
            token: token.clone(),
        })
        .await
        .unwrap();

    // A second, eligible admin approves the reader: now it reads PANs.
    let done = approve(&mut admin2_keys, &reader.approval_id)
        .await
        .unwrap();
    assert_eq!(done.action, "AddPrincipal");
    let pan = as_reader
        .detokenize(v1::DetokenizeRequest { token })
        .await
        .unwrap()
        .into_inner()
        .pan;
    assert_eq!(pan, VISA);

    // ListApprovals shows approvers what they would approve.
    let pending = admin_keys
        .list_approvals(v1::ListApprovalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert!(
        pending
            .iter()
            .any(|a| a.id == shred && a.action == "ShredTenant" && a.detail == "tenant default")
    );
}

/// Finding 2: a tenant admin sealed the whole vault and unsealed it again
/// alone (dev, HSM and AWS backends), and rotated the master key every
/// tenant uses.
#[tokio::test]
async fn vault_wide_actions_need_operators_and_unseal_needs_two() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &dir.path().join("server.log"));
    let mut processor = server.client("processor").await;
    let tokenize = || v1::TokenizeRequest {
        pan: VISA.into(),
        ..Default::default()
    };
    for who in ["admin", "other"] {
        let auth = if who == "admin" {
            server.admin_auth(who)
        } else {
            OtpAuth::key_only(&server.api_key(who))
        };
        let mut tenant = keys(&server, auth).await;
        for refused in [
            tenant.seal(v1::SealRequest {}).await.unwrap_err(),
            tenant
                .unseal(v1::UnsealRequest { share: Vec::new() })
                .await
                .unwrap_err(),
            tenant
                .rotate_master_key(v1::RotateMasterKeyRequest {})
                .await
                .unwrap_err(),
        ] {
            assert_eq!(refused.code(), Code::PermissionDenied, "{who}: {refused:?}");
        }
    }
    processor.tokenize(tokenize()).await.unwrap();

    let mut operator = keys(&server, server.admin_auth("operator")).await;
    let mut operator2 = keys(&server, server.admin_auth("operator2")).await;
    operator.seal(v1::SealRequest {}).await.unwrap();
    assert_eq!(
        processor.tokenize(tokenize()).await.unwrap_err().code(),
        Code::Unavailable
    );
    // One operator cannot reopen the vault: unsealing files a request...
    let id = approval_id(
        &operator
            .unseal(v1::UnsealRequest { share: Vec::new() })
            .await
            .unwrap_err(),
    );
    assert_eq!(
        approve(&mut operator, &id).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // ...that no tenant admin can approve...
    let mut admin = keys(&server, server.admin_auth("admin")).await;
    assert_eq!(
        approve(&mut admin, &id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        processor.tokenize(tokenize()).await.unwrap_err().code(),
        Code::Unavailable
    );
    // ...and a second operator does, while the vault is still sealed.
    let done = approve(&mut operator2, &id).await.unwrap();
    assert_eq!(
        (done.action.as_str(), done.result.as_str()),
        ("Unseal", "vault unsealed")
    );
    processor.tokenize(tokenize()).await.unwrap();

    // Master key rotation: operator files, the other operator approves.
    let id = approval_id(
        &operator
            .rotate_master_key(v1::RotateMasterKeyRequest {})
            .await
            .unwrap_err(),
    );
    let done = approve(&mut operator2, &id).await.unwrap();
    assert_eq!(done.action, "RotateMasterKey");
}

/// Review findings on the first cut: an admin used a principal it had minted
/// (approved by someone else) to file requests it then approved itself; an
/// operator minted non-admin principals inside a tenant alone; a pending
/// unseal request outlived the seal after it; a revoked admin's pending
/// grant stayed approvable.
#[tokio::test]
async fn puppets_cannot_approve_and_stale_requests_die() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &dir.path().join("server.log"));
    let mut admin = book(&server, server.admin_auth("admin")).await;
    let mut admin_keys = keys(&server, server.admin_auth("admin")).await;
    let mut admin2_keys = keys(&server, server.admin_auth("admin2")).await;

    // admin's puppet m1, approved by admin2 in good faith…
    let m1 = admin
        .add_principal(grant("m1", "admin"))
        .await
        .unwrap()
        .into_inner();
    approve(&mut admin2_keys, &m1.approval_id).await.unwrap();
    let m1_auth = OtpAuth::new(&m1.api_key, &secret_of_uri(&m1.otpauth_uri));
    let mut m1_keys = keys(&server, m1_auth.clone()).await;
    // …files a shred; its creator may not approve it.
    let shred = approval_id(
        &m1_keys
            .shred_tenant(v1::ShredTenantRequest::default())
            .await
            .unwrap_err(),
    );
    let puppet = approve(&mut admin_keys, &shred).await.unwrap_err();
    assert_eq!(puppet.code(), Code::PermissionDenied, "{puppet:?}");
    // A sibling (another admin minted by the same admin) may not either.
    let m2 = admin
        .add_principal(grant("m2", "admin"))
        .await
        .unwrap()
        .into_inner();
    approve(&mut admin2_keys, &m2.approval_id).await.unwrap();
    let mut m2_keys = keys(
        &server,
        OtpAuth::new(&m2.api_key, &secret_of_uri(&m2.otpauth_uri)),
    )
    .await;
    assert_eq!(
        approve(&mut m2_keys, &shred).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Revoking a requester drops its pending grants, and with `cascade`
    // everything it created (it was shown their keys) goes too.
    let mut m1_book = book(&server, m1_auth).await;
    let reader = m1_book
        .add_principal(grant("m1-reader", "detokenize"))
        .await
        .unwrap()
        .into_inner();
    let till = m1_book
        .add_principal(grant("m1-till", "tokenize"))
        .await
        .unwrap()
        .into_inner();
    let revoked = admin
        .revoke_principal(v1::RevokePrincipalRequest {
            name: "m1".into(),
            cascade: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.also_revoked, vec!["m1-till".to_owned()]);
    let mut as_till = server.client_with_key(Some(&till.api_key)).await;
    assert_eq!(
        as_till
            .tokenize(v1::TokenizeRequest {
                pan: VISA.into(),
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        approve(&mut admin2_keys, &reader.approval_id)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // In a tenant an operator adds only admins, never a till or a deleter.
    let mut operator_book = book(&server, server.admin_auth("operator")).await;
    for role in ["tokenize", "delete", "detokenize"] {
        let refused = operator_book
            .add_principal(v1::AddPrincipalRequest {
                tenant: "default".into(),
                ..grant(&format!("op-{role}"), role)
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{role}");
    }

    // An unseal request filed before a seal cannot reopen the vault after it.
    let mut operator = keys(&server, server.admin_auth("operator")).await;
    let mut operator2 = keys(&server, server.admin_auth("operator2")).await;
    operator.seal(v1::SealRequest {}).await.unwrap();
    let stale = approval_id(
        &operator
            .unseal(v1::UnsealRequest { share: Vec::new() })
            .await
            .unwrap_err(),
    );
    operator2.seal(v1::SealRequest {}).await.unwrap();
    assert_eq!(
        approve(&mut operator2, &stale).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// Review finding: an operator held the credentials of every principal it
/// added to a tenant. Operators now only bootstrap a tenant's two admins,
/// each under a second operator's approval, and what they do to a tenant is
/// filed under that tenant for its auditors.
#[tokio::test]
async fn operators_only_bootstrap_a_tenants_admins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &dir.path().join("server.log"));
    let mut operator = book(&server, server.admin_auth("operator")).await;
    let mut operator2 = book(&server, server.admin_auth("operator2")).await;
    let in_acme = |name: &str| v1::AddPrincipalRequest {
        tenant: "acme".into(),
        ..grant(name, "admin")
    };
    let first = operator
        .add_principal(in_acme("acme-a1"))
        .await
        .unwrap()
        .into_inner();
    let second = operator2
        .add_principal(in_acme("acme-a2"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.approval_id.is_empty() && !second.approval_id.is_empty());
    let third = operator
        .add_principal(in_acme("acme-a3"))
        .await
        .unwrap_err();
    assert_eq!(third.code(), Code::PermissionDenied, "{third:?}");
    let filed = common::audit_events(&server, "operator", "AddPrincipal").await;
    assert!(
        filed
            .iter()
            .any(|e| e.principal == "operator" && e.tenant == "acme"),
        "{filed:?}"
    );
}

/// Outside check on the export kit: a seal revoked nothing, so an export
/// approved before an incident's seal served again after the unseal, and a
/// request filed before it could still be approved. Both die with the seal.
#[tokio::test]
async fn a_seal_revokes_exports_approved_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &dir.path().join("server.log"));
    let mut processor = server.client("processor").await;
    let token = common::tokenize(&mut processor, VISA).await;
    let mut operator = keys(&server, server.admin_auth("operator")).await;
    let mut operator2 = keys(&server, server.admin_auth("operator2")).await;
    let request_export = |client: &mut Keys| {
        let mut client = client.clone();
        async move {
            approval_id(
                &client
                    .request_export(v1::RequestExportRequest {
                        tenant: "default".into(),
                    })
                    .await
                    .unwrap_err(),
            )
        }
    };
    let export = |client: &mut Keys, approval: &str| {
        let mut client = client.clone();
        let request = v1::ExportBatchRequest {
            approval_id: approval.into(),
            tokens: vec![token.clone()],
        };
        async move {
            client.export_batch(request).await.map(|r| {
                match r.into_inner().results[0].result.clone() {
                    Some(v1::detokenize_result::Result::Pan(p)) => p.pan,
                    other => panic!("{other:?}"),
                }
            })
        }
    };

    let granted = request_export(&mut operator).await;
    approve(&mut operator2, &granted).await.unwrap();
    assert_eq!(export(&mut operator, &granted).await.unwrap(), VISA);
    let pending = request_export(&mut operator).await;

    operator.seal(v1::SealRequest {}).await.unwrap();
    let unseal = approval_id(
        &operator
            .unseal(v1::UnsealRequest { share: Vec::new() })
            .await
            .unwrap_err(),
    );
    approve(&mut operator2, &unseal).await.unwrap();
    processor
        .detokenize(v1::DetokenizeRequest {
            token: token.clone(),
        })
        .await
        .unwrap();

    let revoked = export(&mut operator, &granted).await.unwrap_err();
    assert_eq!(revoked.code(), Code::PermissionDenied, "{revoked:?}");
    assert_eq!(
        approve(&mut operator2, &pending).await.unwrap_err().code(),
        Code::NotFound
    );
    // Asked for and approved again after the unseal, an export serves.
    let again = request_export(&mut operator).await;
    approve(&mut operator2, &again).await.unwrap();
    assert_eq!(export(&mut operator, &again).await.unwrap(), VISA);
    // The seal's audit event says what it revoked.
    let seals = common::audit_events(&server, "operator", "Seal").await;
    assert_eq!(
        seals
            .iter()
            .map(|e| e.resource.as_str())
            .collect::<Vec<_>>(),
        ["vault requests_dropped:1 exports_revoked:1"]
    );
}

async fn tokenize_visa(server: &Server) -> Result<(), tonic::Status> {
    let mut processor = server.client("processor").await;
    processor
        .tokenize(v1::TokenizeRequest {
            pan: VISA.into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Outside review: a restart undid a seal. A process started while the
/// vault's newest seal stands (dev, HSM and AWS backends start unsealed)
/// starts sealed; once two operators reopen it, restarts start open.
#[tokio::test]
async fn a_restart_does_not_undo_a_seal() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
    let server = Server::start(&data, &log);
    tokenize_visa(&server).await.unwrap();
    keys(&server, server.admin_auth("operator"))
        .await
        .seal(v1::SealRequest {})
        .await
        .unwrap();
    server.kill9();

    let server = Server::start(&data, &log);
    let refused = tokenize_visa(&server).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let unseal = approval_id(
        &keys(&server, server.admin_auth("operator"))
            .await
            .unseal(v1::UnsealRequest { share: Vec::new() })
            .await
            .unwrap_err(),
    );
    approve(
        &mut keys(&server, server.admin_auth("operator2")).await,
        &unseal,
    )
    .await
    .unwrap();
    tokenize_visa(&server).await.unwrap();
    server.kill9();

    let server = Server::start(&data, &log);
    tokenize_visa(&server).await.unwrap();
}
