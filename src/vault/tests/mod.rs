use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;
use crate::config::Profile;
use crate::kms::dev::DevKms;
use crate::store::memory::MemoryStore;
use crate::tokens::luhn;

struct Fixture {
    vault: Arc<Vault>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn fixture(policy: VaultPolicy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let vault = Vault::new(kms, Arc::new(MemoryStore::new()), clock.clone(), policy);
    Fixture {
        vault: Arc::new(vault),
        clock,
        _dir: dir,
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn cmd(pan: &str) -> TokenizeCommand {
    TokenizeCommand {
        pan: Pan::parse(pan).unwrap(),
        format: FormatRequest::default(),
        deterministic: None,
        ttl: None,
        single_use: false,
        metadata: BTreeMap::new(),
    }
}

const VISA: &str = "4111111111111111";
const MC19: &str = "5555555555555555556";

#[tokio::test]
async fn round_trip_default_format() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let out = f.vault.tokenize(&t, cmd(VISA)).await.unwrap();
    assert_eq!(out.token.len(), 16);
    assert!(out.token.as_str().starts_with("411111") && out.token.as_str().ends_with("1111"));
    assert!(!luhn::is_valid(&out.token.digits()));
    assert_eq!(out.masked_pan.as_str(), "411111******1111");
    assert_eq!(out.brand, CardBrand::Visa);
    assert!(!out.reused);
    let pan = f.vault.detokenize(&t, &out.token).await.unwrap();
    assert_eq!(pan.expose_ascii().as_slice(), VISA.as_bytes());
}

#[tokio::test]
async fn random_mode_issues_fresh_tokens_deterministic_reuses() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let a = f.vault.tokenize(&t, cmd(VISA)).await.unwrap();
    let b = f.vault.tokenize(&t, cmd(VISA)).await.unwrap();
    assert_ne!(a.token, b.token);

    let det = |pan| TokenizeCommand {
        deterministic: Some(true),
        ..cmd(pan)
    };
    let c = f.vault.tokenize(&t, det(VISA)).await.unwrap();
    let d = f.vault.tokenize(&t, det(VISA)).await.unwrap();
    assert_eq!(c.token, d.token);
    assert!(!c.reused && d.reused);
    // Another tenant gets its own token for the same PAN.
    let e = f.vault.tokenize(&tenant("other"), det(VISA)).await.unwrap();
    assert!(!e.reused);
}

#[tokio::test]
async fn deleted_deterministic_token_is_replaced() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let det = || TokenizeCommand {
        deterministic: Some(true),
        ..cmd(VISA)
    };
    let first = f.vault.tokenize(&t, det()).await.unwrap();
    f.vault.delete(&t, &first.token).await.unwrap();
    let second = f.vault.tokenize(&t, det()).await.unwrap();
    assert!(!second.reused);
    assert_ne!(first.token, second.token);
    assert!(matches!(
        f.vault.detokenize(&t, &first.token).await,
        Err(VaultError::NotFound)
    ));
}

#[tokio::test]
async fn ff1_is_deterministic_and_gets_a_new_generation_after_delete() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let ff1 = || TokenizeCommand {
        format: FormatRequest {
            generator: Some(GeneratorKind::Ff1),
            ..FormatRequest::default()
        },
        ..cmd(MC19)
    };
    let a = f.vault.tokenize(&t, ff1()).await.unwrap();
    let b = f.vault.tokenize(&t, ff1()).await.unwrap();
    assert_eq!(a.token, b.token);
    assert!(b.reused);
    f.vault.delete(&t, &a.token).await.unwrap();
    let c = f.vault.tokenize(&t, ff1()).await.unwrap();
    assert!(!c.reused);
    assert_ne!(c.token, a.token);
    assert_eq!(
        f.vault
            .detokenize(&t, &c.token)
            .await
            .unwrap()
            .expose_ascii()
            .as_slice(),
        MC19.as_bytes()
    );
}

#[tokio::test]
async fn ff1_refuses_small_domain() {
    let f = fixture(VaultPolicy::default());
    let c = TokenizeCommand {
        format: FormatRequest {
            generator: Some(GeneratorKind::Ff1),
            ..FormatRequest::default()
        },
        ..cmd(VISA)
    };
    let err = f.vault.tokenize(&tenant("default"), c).await.unwrap_err();
    assert!(matches!(
        err,
        VaultError::Generate(GenerateError::Ff1DomainTooSmall {
            encrypted: 5,
            minimum: 6
        })
    ));
}

#[tokio::test]
async fn other_tenant_cannot_see_token() {
    let f = fixture(VaultPolicy::default());
    let out = f.vault.tokenize(&tenant("a"), cmd(VISA)).await.unwrap();
    let b = tenant("b");
    f.vault.tokenize(&b, cmd(MC19)).await.unwrap();
    assert!(matches!(
        f.vault.detokenize(&b, &out.token).await,
        Err(VaultError::NotFound)
    ));
    assert!(matches!(
        f.vault.token_info(&b, &out.token).await,
        Err(VaultError::NotFound)
    ));
    assert!(matches!(
        f.vault.delete(&b, &out.token).await,
        Err(VaultError::NotFound)
    ));
    // A tenant with no keys at all answers the same.
    assert!(matches!(
        f.vault.detokenize(&tenant("c"), &out.token).await,
        Err(VaultError::NotFound)
    ));
}

#[tokio::test]
async fn ttl_expires() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let c = TokenizeCommand {
        ttl: Some(Duration::from_secs(60)),
        ..cmd(VISA)
    };
    let out = f.vault.tokenize(&t, c).await.unwrap();
    let info = f.vault.token_info(&t, &out.token).await.unwrap();
    assert_eq!(info.expires_at_ms, Some(info.created_at_ms + 60_000));
    f.clock.advance_ms(59_999);
    assert!(f.vault.detokenize(&t, &out.token).await.is_ok());
    f.clock.advance_ms(1);
    assert!(matches!(
        f.vault.detokenize(&t, &out.token).await,
        Err(VaultError::NotFound)
    ));
}

#[tokio::test]
async fn single_use_race_yields_exactly_one_pan() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let out = f
        .vault
        .tokenize(
            &t,
            TokenizeCommand {
                single_use: true,
                ..cmd(VISA)
            },
        )
        .await
        .unwrap();
    let token = Arc::new(out.token);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (vault, t, token) = (f.vault.clone(), t.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            vault.detokenize(&t, &token).await.is_ok()
        }));
    }
    let mut wins = 0;
    for task in tasks {
        wins += usize::from(task.await.unwrap());
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn live_token_is_refused_as_pan() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let c = TokenizeCommand {
        format: FormatRequest {
            luhn: Some(LuhnPolicy::Valid),
            ..FormatRequest::default()
        },
        ..cmd(VISA)
    };
    let out = f.vault.tokenize(&t, c).await.unwrap();
    let again = cmd(out.token.as_str());
    let err = f.vault.tokenize(&t, again).await.unwrap_err();
    assert!(matches!(
        err,
        VaultError::InvalidArgument { field: "pan", .. }
    ));
}

#[tokio::test]
async fn metadata_and_format_limits() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let mut c = cmd(VISA);
    c.metadata
        .insert("note".into(), "card 5555555555554444".into());
    assert!(matches!(
        f.vault.tokenize(&t, c).await,
        Err(VaultError::InvalidArgument {
            field: "metadata",
            ..
        })
    ));
    // Separated card numbers too (finding 3).
    for value in [
        "5555 5555 5555 4444",
        "3782-822463-10005",
        "4111.1111.1111.1111",
    ] {
        let mut c = cmd(VISA);
        c.metadata.insert("note".into(), value.into());
        assert!(
            matches!(
                f.vault.tokenize(&t, c).await,
                Err(VaultError::InvalidArgument {
                    field: "metadata",
                    ..
                })
            ),
            "{value}"
        );
    }
    let mut c = cmd(VISA);
    c.metadata.insert("k".into(), "v".repeat(5000));
    assert!(matches!(
        f.vault.tokenize(&t, c).await,
        Err(VaultError::InvalidArgument {
            field: "metadata",
            ..
        })
    ));
    let c = TokenizeCommand {
        format: FormatRequest {
            keep_leading: Some(3),
            ..FormatRequest::default()
        },
        ..cmd(VISA)
    };
    assert!(matches!(
        f.vault.tokenize(&t, c).await,
        Err(VaultError::InvalidArgument {
            field: "format.keep_leading",
            ..
        })
    ));
    assert!(f.vault.check_batch_len(1000).is_ok());
    assert!(f.vault.check_batch_len(1001).is_err());
    assert!(f.vault.check_batch_len(0).is_err());
}

#[tokio::test]
async fn error_messages_never_contain_digits_of_the_pan() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let c = TokenizeCommand {
        format: FormatRequest {
            generator: Some(GeneratorKind::Ff1),
            ..FormatRequest::default()
        },
        ..cmd(VISA)
    };
    let message = f.vault.tokenize(&t, c).await.unwrap_err().to_string();
    assert!(!message.contains("411111"), "{message}");
}

fn pan_n(n: u64) -> String {
    let mut digits: Vec<u8> = format!("4{:014}", n * 104_729 + 7)
        .bytes()
        .map(|b| b - b'0')
        .collect();
    digits.push(0);
    let last = digits.len() - 1;
    digits[last] = luhn::completing_digit(&digits, last);
    digits.into_iter().map(|d| char::from(d + b'0')).collect()
}

#[tokio::test]
async fn rotation_reencryption_and_retirement() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let mut issued = Vec::new();
    for n in 0..1200 {
        let pan = pan_n(n);
        let out = f.vault.tokenize(&t, cmd(&pan)).await.unwrap();
        issued.push((out.token, pan));
        if n == 700 {
            assert_eq!(f.vault.rotate_data_key(&t).await.unwrap(), 2);
        }
    }
    let status = f.vault.key_status(&t).await.unwrap();
    let counts: Vec<(u32, u64)> = status
        .data_keys
        .iter()
        .map(|k| (k.version, k.record_count))
        .collect();
    assert_eq!(counts, vec![(1, 701), (2, 499)]);
    assert!(matches!(
        f.vault.retire_data_key(&t, 1).await,
        Err(VaultError::Precondition(_))
    ));

    // Seal after the first page: the job stops, its checkpoint stays.
    let vault = f.vault.clone();
    let mut pages = 0;
    let err = f
        .vault
        .reencrypt(&t, |p| {
            pages += 1;
            if !p.finished {
                vault.seal();
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Sealed));
    assert_eq!(pages, 1);
    assert_eq!(
        f.vault.pending_reencryptions().await.unwrap(),
        vec![t.clone()]
    );

    // Reopen (dev KMS: two operators approve a reopen) and run again: it
    // resumes.
    let last_seal = f.vault.last_seal().await.unwrap();
    f.vault.reopen(last_seal).await.unwrap();
    let mut first_done = None;
    let done = f
        .vault
        .reencrypt(&t, |p| {
            first_done.get_or_insert(p.done);
        })
        .await
        .unwrap();
    assert_eq!(
        first_done,
        Some(2 * u64::try_from(reencrypt::PAGE).unwrap()),
        "continued after the checkpoint"
    );
    assert!(done.finished);
    assert_eq!(
        (done.done, done.total, done.target_version),
        (1200, 1200, 2)
    );
    assert!(f.vault.pending_reencryptions().await.unwrap().is_empty());

    let status = f.vault.key_status(&t).await.unwrap();
    let counts: Vec<(u32, u64)> = status
        .data_keys
        .iter()
        .map(|k| (k.version, k.record_count))
        .collect();
    assert_eq!(counts, vec![(1, 0), (2, 1200)]);
    f.vault.retire_data_key(&t, 1).await.unwrap();
    assert_eq!(
        f.vault.key_status(&t).await.unwrap().data_keys[0].state,
        admin::KeyState::Destroyed
    );
    for (token, pan) in &issued {
        let got = f.vault.detokenize(&t, token).await.unwrap();
        assert_eq!(got.expose_ascii().as_slice(), pan.as_bytes());
    }
    // Running again finds nothing to do.
    let again = f.vault.reencrypt(&t, |_| {}).await.unwrap();
    assert_eq!((again.rewritten, again.done), (0, 1200));
}

#[tokio::test]
async fn cryptoperiod_flags_an_overdue_active_key() {
    let policy = VaultPolicy {
        data_key_max_age: Duration::from_secs(3600),
        ..VaultPolicy::default()
    };
    let f = fixture(policy);
    let t = tenant("default");
    f.vault.tokenize(&t, cmd(VISA)).await.unwrap();
    assert!(!f.vault.key_status(&t).await.unwrap().data_keys[0].overdue);
    f.clock.advance_ms(3_600_001);
    assert!(f.vault.key_status(&t).await.unwrap().data_keys[0].overdue);
    // Rotation moves new writes to a fresh key that is not overdue; the old
    // one is decrypt-only and no longer flagged.
    f.vault.rotate_data_key(&t).await.unwrap();
    f.vault.tokenize(&t, cmd(MC19)).await.unwrap();
    let keys = f.vault.key_status(&t).await.unwrap().data_keys;
    assert_eq!(
        (keys[0].state, keys[0].overdue),
        (admin::KeyState::DecryptOnly, false)
    );
    assert_eq!(
        (keys[1].state, keys[1].overdue, keys[1].record_count),
        (admin::KeyState::Active, false, 1)
    );
}

#[tokio::test]
async fn sealed_vault_refuses_everything_and_forgets_keys() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let out = f.vault.tokenize(&t, cmd(VISA)).await.unwrap();
    f.vault.seal();
    assert!(matches!(
        f.vault.tokenize(&t, cmd(VISA)).await,
        Err(VaultError::Sealed)
    ));
    assert!(matches!(
        f.vault.detokenize(&t, &out.token).await,
        Err(VaultError::Sealed)
    ));
    assert!(matches!(
        f.vault.rotate_data_key(&t).await,
        Err(VaultError::Sealed)
    ));
    assert!(f.vault.key_status(&t).await.unwrap().sealed);
    let last_seal = f.vault.last_seal().await.unwrap();
    f.vault.reopen(last_seal).await.unwrap();
    assert!(f.vault.detokenize(&t, &out.token).await.is_ok());
}

/// Finding 13: a shredded tenant silently got fresh keys on the next
/// tokenize; its old records then made Reencrypt fail with INTERNAL and
/// blocked key retirement.
#[tokio::test]
async fn a_shredded_tenant_stays_shredded_until_an_operator_recreates_it() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("acme");
    let old = f.vault.tokenize(&t, cmd(VISA)).await.unwrap();
    assert_eq!(f.vault.rotate_data_key(&t).await.unwrap(), 2);
    f.vault.tokenize(&t, cmd(MC19)).await.unwrap();
    f.vault.shred_tenant(&t).await.unwrap();

    assert!(matches!(
        f.vault.tokenize(&t, cmd(VISA)).await,
        Err(VaultError::TenantShredded)
    ));
    assert!(matches!(
        f.vault.rotate_data_key(&t).await,
        Err(VaultError::TenantShredded)
    ));
    assert!(matches!(
        f.vault.detokenize(&t, &old.token).await,
        Err(VaultError::NotFound)
    ));
    // Other tenants are untouched.
    f.vault.tokenize(&tenant("other"), cmd(VISA)).await.unwrap();

    f.vault.recreate_tenant(&t).await.unwrap();
    assert!(matches!(
        f.vault.recreate_tenant(&t).await,
        Err(VaultError::Precondition(_))
    ));
    let fresh = f.vault.tokenize(&t, cmd(VISA)).await.unwrap();
    let pan = f.vault.detokenize(&t, &fresh.token).await.unwrap();
    assert_eq!(pan.expose_ascii().as_slice(), VISA.as_bytes());
    assert!(matches!(
        f.vault.detokenize(&t, &old.token).await,
        Err(VaultError::NotFound)
    ));
    // New versions number above the destroyed ones.
    let status = f.vault.key_status(&t).await.unwrap();
    let states: Vec<_> = status
        .data_keys
        .iter()
        .map(|k| (k.version, k.state, k.record_count))
        .collect();
    use crate::vault::admin::KeyState;
    assert_eq!(
        states,
        vec![
            (1, KeyState::Destroyed, 1),
            (2, KeyState::Destroyed, 1),
            (3, KeyState::Active, 1)
        ]
    );
    // Re-encryption skips (and counts) what can never be opened, and old
    // records hold no live version's retirement up.
    assert_eq!(f.vault.rotate_data_key(&t).await.unwrap(), 4);
    let done = f.vault.reencrypt(&t, |_| {}).await.unwrap();
    assert_eq!((done.rewritten, done.skipped_unreadable), (1, 2));
    f.vault.retire_data_key(&t, 3).await.unwrap();
}

/// Finding 15: a deterministic reuse could return a token whose record
/// (another writer's, found before its flush) was not yet durable.
#[tokio::test]
async fn a_reused_token_is_durable_before_it_is_returned() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap());
    let store = Arc::new(MemoryStore::new());
    let vault = Vault::new(
        kms,
        store.clone(),
        Arc::new(ManualClock::new(1_700_000_000_000)),
        VaultPolicy::default(),
    );
    let t = tenant("default");
    let det = || TokenizeCommand {
        deterministic: Some(true),
        ..cmd(VISA)
    };
    vault.tokenize(&t, det()).await.unwrap();
    let before = store.sync_count();
    let again = vault.tokenize(&t, det()).await.unwrap();
    assert!(again.reused);
    assert!(
        store.sync_count() > before,
        "the reuse waited for durability"
    );
}

/// Review finding: an Unseal call in flight (checked while unsealed) could
/// undo a seal that landed before it reached the vault: on a backend
/// without shares, `unseal` reopened whatever it found.
#[tokio::test]
async fn only_an_approved_reopen_unseals_a_vault_without_shares() {
    let f = fixture(VaultPolicy::default());
    f.vault.seal();
    let progress = f.vault.unseal("operator", &[]).await.unwrap();
    assert!(progress.sealed && f.vault.is_sealed());
    let last_seal = f.vault.last_seal().await.unwrap();
    f.vault.reopen(last_seal).await.unwrap();
    assert!(!f.vault.is_sealed());
}

mod compaction;
mod format_contract;

/// Review finding H1: an item whose token cannot be generated (FF1 over a
/// domain too small) failed the whole TokenizeBatch; it is that item's
/// error, and the rest of the batch commits with one event naming them.
#[tokio::test]
async fn one_bad_item_never_fails_a_batch() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let ff1_too_small = TokenizeCommand {
        format: FormatRequest {
            generator: Some(GeneratorKind::Ff1),
            ..FormatRequest::default()
        },
        ..cmd(VISA)
    };
    let event = crate::audit::AuditEvent {
        action: "TokenizeBatch".into(),
        principal: "pos".into(),
        ..Default::default()
    };
    let results = f
        .vault
        .tokenize_batch(
            &t,
            vec![cmd(&pan_n(1)), ff1_too_small, cmd(&pan_n(2))],
            event,
            |r| format!("failed={}", r.iter().filter(|r| r.is_err()).count()),
        )
        .await
        .unwrap();
    assert!(matches!(
        results[1],
        Err(VaultError::Generate(
            GenerateError::Ff1DomainTooSmall { .. }
        ))
    ));
    for (i, pan) in [(0, pan_n(1)), (2, pan_n(2))] {
        let token = &results[i].as_ref().unwrap().token;
        let back = f.vault.detokenize(&t, token).await.unwrap();
        assert_eq!(back.expose_ascii().as_slice(), pan.as_bytes());
    }
    let events = f.vault.audit_events(0, 100).await.unwrap();
    let batch: Vec<_> = events
        .iter()
        .filter(|e| e.event.action == "TokenizeBatch")
        .collect();
    assert_eq!(batch.len(), 1, "one event for the batch");
    assert_eq!(batch[0].event.resource, "failed=1");
}

/// A batch that loses a race for one card to a concurrent writer places
/// that card again on its own, answers its repeats from it, and commits
/// the rest as one batch: placing all of its items one by one (one commit
/// and one event each) held a batch of 1,000 for 37 s under load.
#[tokio::test]
async fn a_batch_that_loses_one_card_to_a_race_replaces_only_that_card() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let deterministic = |pan: &str| TokenizeCommand {
        deterministic: Some(true),
        ..cmd(pan)
    };
    let event = |principal: &str| crate::audit::AuditEvent {
        action: "TokenizeBatch".into(),
        principal: principal.into(),
        ..Default::default()
    };
    let count = |r: &[Result<Tokenized, VaultError>]| format!("items={}", r.len());
    let mut second: Vec<TokenizeCommand> = vec![deterministic(VISA)];
    // Cards nobody else wants, and repeats of the lost card.
    second.extend((1..=40).map(|n| cmd(&pan_n(n))));
    second.extend((0..20).map(|_| deterministic(VISA)));
    // The tenant's keys exist already (made first, they would order the
    // two batches). Both plan before either commits (one thread): the
    // first commits the card, the second's batch is refused for it.
    f.vault.tokenize(&t, cmd(&pan_n(99))).await.unwrap();
    let (first, second) = tokio::join!(
        f.vault
            .tokenize_batch(&t, vec![deterministic(VISA)], event("a"), count),
        f.vault.tokenize_batch(&t, second, event("b"), count),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    let token = &first[0].as_ref().unwrap().token;
    assert_eq!(
        &second[0].as_ref().unwrap().token,
        token,
        "the card's token"
    );
    for repeat in &second[41..] {
        assert_eq!(&repeat.as_ref().unwrap().token, token, "a repeat");
    }
    for (n, result) in (1..=40).zip(&second[1..41]) {
        let back = f
            .vault
            .detokenize(&t, &result.as_ref().unwrap().token)
            .await
            .unwrap();
        assert_eq!(back.expose_ascii().as_slice(), pan_n(n).as_bytes());
    }
    let events = f.vault.audit_events(0, 1000).await.unwrap();
    let of_b: Vec<_> = events.iter().filter(|e| e.event.principal == "b").collect();
    // The lost card's own event, then the batch's (naming the repeats):
    // not one per item.
    assert_eq!(of_b.len(), 2, "{of_b:#?}");
    assert_eq!(of_b[1].event.resource, "items=61");
}

/// Two replicas' first calls on one store each make an audit key; one
/// root is stored with its signed head, the other replica's commit is
/// refused and it takes the stored root. Checked against the head the
/// winner signed, the loser's own key would have read as a forged head
/// (and latched its appends), so a new key does not check an old head.
#[tokio::test]
async fn replicas_making_the_audit_key_at_once_agree_on_one() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let kms = Arc::new(DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap());
        // Sled chains the events before it checks the units, as PostgreSQL
        // does: the loser's chain step sees the winner's head.
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sled::SledStore::open(&dir.path().join("store")).unwrap());
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let replica = || {
            Arc::new(Vault::new(
                kms.clone(),
                Arc::clone(&store),
                clock.clone(),
                VaultPolicy::default(),
            ))
        };
        let (a, b) = (replica(), replica());
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let first_call = |vault: Arc<Vault>, start: Arc<tokio::sync::Barrier>| {
            tokio::spawn(async move {
                start.wait().await;
                vault.tokenize(&tenant("acme"), cmd(VISA)).await.map(|_| ())
            })
        };
        let (ra, rb) = tokio::join!(
            first_call(a.clone(), start.clone()),
            first_call(b.clone(), start)
        );
        ra.unwrap().unwrap();
        rb.unwrap().unwrap();
        for vault in [&a, &b] {
            vault.ping().await.unwrap();
            let report = vault.verify_audit().await.unwrap();
            assert!(report.ok() && report.head_checked, "{}", report.problem);
        }
        let made = store
            .audit_records(0, 10)
            .await
            .unwrap()
            .iter()
            .filter(|(_, bytes)| {
                crate::audit::chain::ChainedEvent::decode(bytes)
                    .unwrap()
                    .event
                    .action
                    == crate::keyring::AUDIT_KEY_CREATED
            })
            .count();
        assert_eq!(made, 1);
    }
}

/// Review of the audit-key change: an attacker who can write the store
/// rewrites the log, forges a head and deletes the audit key's root, so a
/// vault that starts next would make a new key and sign over the forgery.
/// A new key never signs a log that has a head: the vault refuses audited
/// calls, verification reports the missing key instead of making one, and
/// only an audited recovery (which stores a new root) continues the log.
#[tokio::test]
async fn a_deleted_audit_key_under_a_signed_head_is_never_replaced_silently() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap());
    let store: Arc<dyn Store> =
        Arc::new(crate::store::sled::SledStore::open(&dir.path().join("store")).unwrap());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let vault = || {
        Vault::new(
            kms.clone(),
            Arc::clone(&store),
            clock.clone(),
            VaultPolicy::default(),
        )
    };
    let first = vault();
    let event = || crate::audit::AuditEvent {
        action: "Detokenize".into(),
        principal: "p".into(),
        ..Default::default()
    };
    first.record_audit(event()).await.unwrap();
    first.record_audit(event()).await.unwrap();
    drop(first);
    assert_eq!(
        store
            .destroy_wrapped_keys(&TenantId::system())
            .await
            .unwrap(),
        1
    );

    let next = vault();
    let refused = next.record_audit(event()).await.unwrap_err();
    assert!(
        matches!(
            refused,
            VaultError::Audit(crate::audit::AuditError::Tampered)
        ),
        "{refused}"
    );
    assert!(matches!(
        next.tokenize(&tenant("acme"), cmd(VISA)).await,
        Err(VaultError::Audit(crate::audit::AuditError::Tampered))
    ));
    let report = next.verify_audit().await.unwrap();
    assert!(
        !report.ok() && report.problem.contains("audit key"),
        "{report:?}"
    );
    assert!(
        store.all_wrapped_keys().await.unwrap().is_empty(),
        "no key made"
    );
    assert_eq!(store.audit_records(0, 10).await.unwrap().len(), 3);

    let (_, found) = next
        .recover_audit(crate::audit::AuditEvent {
            principal: "operator".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!found.ok(), "the recovery records what it found");
    next.record_audit(event()).await.unwrap();
    next.tokenize(&tenant("acme"), cmd(VISA)).await.unwrap();
    let report = next.verify_audit().await.unwrap();
    assert!(report.head_checked, "{report:?}");
    assert_eq!(report.recovered_at, vec![3]);
}

/// Second review: a running vault's committer knows the log's end, so the
/// log's head is not re-read before a commit. An attacker who deletes the
/// audit key's root *and* the head (and appends after the end) then waits
/// for the cached key to go (its lifetime, or a seal): the vault made a new
/// root and signed over everything. A store with any key but no root lost
/// its root; no new one is made, and no KMS call either.
#[tokio::test]
async fn a_running_vault_never_makes_a_new_audit_key_after_root_and_head_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap());
    let store = Arc::new(crate::store::sled::SledStore::open(&dir.path().join("store")).unwrap());
    let vault = Vault::new(
        kms,
        store.clone(),
        Arc::new(ManualClock::new(1_700_000_000_000)),
        VaultPolicy::default(),
    );
    let event = || crate::audit::AuditEvent {
        action: "Detokenize".into(),
        principal: "p".into(),
        ..Default::default()
    };
    vault.tokenize(&tenant("acme"), cmd(VISA)).await.unwrap();
    vault.record_audit(event()).await.unwrap();
    crate::store::KeyStore::destroy_wrapped_keys(store.as_ref(), &TenantId::system())
        .await
        .unwrap();
    store.delete_audit_head_for_test();
    vault.keys.clear();

    let refused = vault.record_audit(event()).await.unwrap_err();
    assert!(
        matches!(
            refused,
            VaultError::Audit(crate::audit::AuditError::Tampered)
        ),
        "{refused}"
    );
    let system_keys = crate::store::KeyStore::wrapped_keys(store.as_ref(), &TenantId::system())
        .await
        .unwrap();
    assert!(system_keys.is_empty(), "a new root was made");
}

/// Review findings: a replica that had not yet polled a seal made on
/// another went on approving and serving exports, and an unseal racing a
/// second seal undid it. Asking for the last seal (as every export check
/// and approval does) follows it at once, and an opening supersedes only
/// the seals it was checked against, by store change, not by clock.
#[tokio::test]
async fn seals_are_followed_and_superseded_by_store_change() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(DevKms::open_or_create(&dir.path().join("k"), Profile::Dev).unwrap());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let replica = || {
        Vault::new(
            kms.clone(),
            Arc::clone(&store),
            clock.clone(),
            VaultPolicy::default(),
        )
    };
    let (a, b) = (replica(), replica());
    assert_eq!(b.last_seal().await.unwrap(), 0, "never sealed");
    a.seal_everywhere().await.unwrap();
    assert!(!b.is_sealed(), "no poll has run");
    let sealed_by = b.last_seal().await.unwrap();
    assert!(sealed_by > 0);
    assert!(b.is_sealed());
    assert_eq!(a.last_seal().await.unwrap(), sealed_by);

    // Review finding: an unseal approved against one seal reopened the
    // vault over a second seal made while it ran. It reopens over the
    // seals it was checked against only.
    a.seal_everywhere().await.unwrap();
    assert!(a.last_seal().await.unwrap() > sealed_by);
    a.reopen(sealed_by).await.unwrap();
    assert!(a.is_sealed(), "the second seal holds");
    a.reopen(a.last_seal().await.unwrap()).await.unwrap();
    assert!(!a.is_sealed());

    // A process started after the vault was reopened starts open; one
    // that did not adopt the seal state follows the seals.
    let started = replica();
    started.adopt_seal_state().await.unwrap();
    started.last_seal().await.unwrap();
    assert!(!started.is_sealed());
    let unaware = replica();
    unaware.last_seal().await.unwrap();
    assert!(unaware.is_sealed());

    // Review finding: a restart undid a seal. Started while the newest
    // seal stands, a process starts sealed, and two operators reopen it.
    started.seal_everywhere().await.unwrap();
    let restarted = replica();
    restarted.adopt_seal_state().await.unwrap();
    assert!(restarted.is_sealed());
    let newest = restarted.last_seal().await.unwrap();
    restarted.reopen(newest).await.unwrap();
    assert!(!restarted.is_sealed());
    let after_reopen = replica();
    after_reopen.adopt_seal_state().await.unwrap();
    assert!(!after_reopen.is_sealed());
}
