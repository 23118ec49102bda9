//! Compaction through the vault: dead tokens go after the grace period,
//! expired ones are marked first, superseded seal versions drop, each page
//! is audited, and a run cut short continues from its checkpoint.

use super::*;
use crate::audit::AuditEvent;
use crate::tokens::GeneratorKind;
use crate::vault::compact::{COMPACTED_ACTION, CompactProgress, PAGE};

const HOUR_MS: u64 = 3_600_000;

fn operator() -> AuditEvent {
    AuditEvent {
        principal: "ops".into(),
        tenant: "_system".into(),
        action: "Compact".into(),
        ..AuditEvent::default()
    }
}

/// The `n`th Luhn-valid 16-digit Visa number.
fn pan(n: usize) -> String {
    let mut digits: Vec<u8> = format!("411111{n:09}0").bytes().map(|b| b - b'0').collect();
    digits[15] = luhn::completing_digit(&digits, 15);
    digits.iter().map(|d| char::from(b'0' + d)).collect()
}

async fn compacted_events(vault: &Vault) -> Vec<String> {
    vault
        .audit_events(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.action == COMPACTED_ACTION)
        .map(|e| e.event.resource)
        .collect()
}

#[tokio::test]
async fn dead_tokens_go_after_the_grace_expired_ones_are_marked_first() {
    let f = fixture(VaultPolicy {
        purge_grace: Duration::from_millis(HOUR_MS),
        ..VaultPolicy::default()
    });
    let t = tenant("default");
    let live = f.vault.tokenize(&t, cmd(VISA)).await.unwrap().token;
    let short = TokenizeCommand {
        ttl: Some(Duration::from_secs(60)),
        ..cmd(&pan(1))
    };
    let expiring = f.vault.tokenize(&t, short).await.unwrap().token;
    let deleted = f.vault.tokenize(&t, cmd(&pan(2))).await.unwrap().token;
    f.vault.delete(&t, &deleted).await.unwrap();
    let once = TokenizeCommand {
        single_use: true,
        ..cmd(&pan(3))
    };
    let consumed = f.vault.tokenize(&t, once).await.unwrap().token;
    f.vault.detokenize(&t, &consumed).await.unwrap();
    let det = |p: &str| TokenizeCommand {
        deterministic: Some(true),
        ..cmd(p)
    };
    let old_det = f.vault.tokenize(&t, det(&pan(4))).await.unwrap().token;
    f.vault.delete(&t, &old_det).await.unwrap();

    // Two minutes on: the TTL passed, nothing is past the grace.
    f.clock.advance_ms(120_000);
    let first = f.vault.compact(&operator(), |_| {}).await.unwrap();
    assert_eq!(
        (
            first.examined,
            first.expired,
            first.purged,
            first.dead_in_grace
        ),
        (5, 1, 0, 3),
        "{first:?}"
    );
    assert!(first.finished && !f.vault.compaction_pending().await.unwrap());
    for token in [&live] {
        f.vault.detokenize(&t, token).await.unwrap();
    }
    // Two hours on: every dead record goes, the expired one included.
    f.clock.advance_ms(2 * HOUR_MS);
    let second = f.vault.compact(&operator(), |_| {}).await.unwrap();
    assert_eq!(
        (
            second.examined,
            second.expired,
            second.purged,
            second.dead_in_grace
        ),
        (5, 0, 4, 0),
        "{second:?}"
    );
    assert_eq!(second.dead_by_ms, f.clock.now_ms() - HOUR_MS);
    for token in [&expiring, &deleted, &consumed, &old_det] {
        assert!(matches!(
            f.vault.detokenize(&t, token).await,
            Err(VaultError::NotFound)
        ));
        assert!(matches!(
            f.vault.token_info(&t, token).await,
            Err(VaultError::NotFound)
        ));
    }
    let got = f.vault.detokenize(&t, &live).await.unwrap();
    assert_eq!(got.expose_ascii().as_slice(), VISA.as_bytes());
    // The purged deterministic token's PAN gets a new token, which works.
    let fresh = f.vault.tokenize(&t, det(&pan(4))).await.unwrap();
    assert!(!fresh.reused);
    assert_ne!(fresh.token, old_det);
    f.vault.detokenize(&t, &fresh.token).await.unwrap();
    // Each page that removed something is one event, counts only.
    let events = compacted_events(&f.vault).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].contains("expired:1 purged:0"), "{events:?}");
    assert!(events[1].contains("expired:0 purged:4"), "{events:?}");
    // No number long enough to look like a card number to a log scan (a
    // millisecond time has 13 digits).
    for event in &events {
        assert!(
            event
                .split(|c: char| !c.is_ascii_digit())
                .all(|digits| digits.len() < 12),
            "{event}"
        );
    }
    assert!(f.vault.verify_audit().await.unwrap().ok());
    // Nothing left to do: a third run removes nothing and writes no event.
    let third = f.vault.compact(&operator(), |_| {}).await.unwrap();
    assert_eq!((third.purged, third.expired), (0, 0));
    assert_eq!(compacted_events(&f.vault).await.len(), 2);
}

#[tokio::test]
async fn superseded_seal_versions_drop_and_every_token_still_opens() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let mut issued = Vec::new();
    for n in 0..20 {
        let p = pan(n);
        issued.push((f.vault.tokenize(&t, cmd(&p)).await.unwrap().token, p));
    }
    for _ in 0..3 {
        f.vault.rotate_data_key(&t).await.unwrap();
        f.vault.reencrypt(&t, |_| {}).await.unwrap();
    }
    let done = f.vault.compact(&operator(), |_| {}).await.unwrap();
    // Versions 1 and 2 of each record go; 3, the newest, stays.
    assert_eq!((done.seal_versions_dropped, done.purged), (40, 0));
    let ids: Vec<TokenId> = f
        .vault
        .store
        .scan_all(None, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.record.token_id)
        .collect();
    for (_, versions) in f.vault.store.seal_versions(&ids).await.unwrap() {
        assert_eq!(versions, vec![3]);
    }
    for (token, p) in &issued {
        let got = f.vault.detokenize(&t, token).await.unwrap();
        assert_eq!(got.expose_ascii().as_slice(), p.as_bytes());
    }
    // The old data keys can go now, and the tokens still open.
    for version in 1..=3 {
        f.vault.retire_data_key(&t, version).await.unwrap();
    }
    f.vault.detokenize(&t, &issued[0].0).await.unwrap();
}

#[tokio::test]
async fn a_run_cut_short_continues_from_its_checkpoint_with_its_cutoff() {
    let f = fixture(VaultPolicy {
        purge_grace: Duration::ZERO,
        ..VaultPolicy::default()
    });
    let t = tenant("default");
    let total = 2 * PAGE + 100;
    for n in 0..total {
        let token = f.vault.tokenize(&t, cmd(&pan(n))).await.unwrap().token;
        f.vault.delete(&t, &token).await.unwrap();
    }
    f.clock.advance_ms(1);
    // Seal after the first page: the run stops, its checkpoint stays.
    let vault = f.vault.clone();
    let mut pages = 0;
    let err = f
        .vault
        .compact(&operator(), |_| {
            pages += 1;
            vault.seal();
        })
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Sealed));
    assert_eq!(pages, 1);
    assert!(f.vault.compaction_pending().await.unwrap());
    let cutoff = f.clock.now_ms();

    // Later, unsealed again: the run continues after the first page, with
    // the cutoff it started with, and counts the whole run.
    let last_seal = f.vault.last_seal().await.unwrap();
    f.vault.reopen(last_seal).await.unwrap();
    f.clock.advance_ms(HOUR_MS);
    let mut first: Option<CompactProgress> = None;
    let done = f
        .vault
        .compact(&operator(), |p| {
            first.get_or_insert(p);
        })
        .await
        .unwrap();
    let first = first.unwrap();
    assert_eq!(
        first.examined,
        2 * u64::try_from(PAGE).unwrap(),
        "continued"
    );
    assert_eq!(first.dead_by_ms, cutoff);
    let total = u64::try_from(total).unwrap();
    assert_eq!((done.examined, done.purged), (total, total));
    assert!(f.vault.store.scan_all(None, 10).await.unwrap().is_empty());
    assert!(!f.vault.compaction_pending().await.unwrap());
    assert_eq!(compacted_events(&f.vault).await.len(), 3);
}

#[tokio::test]
async fn a_card_whose_ff1_tokens_were_purged_gets_a_fresh_generation() {
    let f = fixture(VaultPolicy {
        purge_grace: Duration::ZERO,
        ..VaultPolicy::default()
    });
    let t = tenant("default");
    let ff1 = || TokenizeCommand {
        format: FormatRequest {
            generator: Some(GeneratorKind::Ff1),
            ..FormatRequest::default()
        },
        ..cmd(MC19)
    };
    let mut purged = Vec::new();
    for _ in 0..2 {
        let token = f.vault.tokenize(&t, ff1()).await.unwrap().token;
        f.vault.delete(&t, &token).await.unwrap();
        purged.push(token);
    }
    f.clock.advance_ms(1);
    assert_eq!(
        f.vault.compact(&operator(), |_| {}).await.unwrap().purged,
        2
    );
    // Generations 0 and 1 read as absent but stay taken: the next is 2.
    let fresh = f.vault.tokenize(&t, ff1()).await.unwrap();
    assert!(!purged.contains(&fresh.token));
    let pan = f.vault.detokenize(&t, &fresh.token).await.unwrap();
    assert_eq!(pan.expose_ascii().as_slice(), MC19.as_bytes());
}

#[tokio::test]
async fn a_newest_seal_version_that_does_not_open_keeps_the_older_ones() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let token = f.vault.tokenize(&t, cmd(VISA)).await.unwrap().token;
    for _ in 0..2 {
        f.vault.rotate_data_key(&t).await.unwrap();
        f.vault.reencrypt(&t, |_| {}).await.unwrap();
    }
    let id = f.vault.store.scan_all(None, 1).await.unwrap()[0]
        .record
        .token_id;
    // A forged (or damaged) newest version: it must not take the good
    // ones with it.
    let forged = crate::store::SealedVersion {
        id,
        version: 3,
        sealed_pan: vec![0xAB; 60],
    };
    f.vault
        .store
        .append_sealed_versions(vec![forged])
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let done = f.vault.compact(&operator(), |_| {}).await.unwrap();
    assert_eq!((done.seal_versions_dropped, done.unopenable), (0, 1));
    assert_eq!(
        f.vault.store.seal_versions(&[id]).await.unwrap(),
        vec![(id, vec![1, 2, 3])]
    );
    assert!(f.vault.detokenize(&t, &token).await.is_err());
}

#[tokio::test]
async fn a_resumed_run_never_purges_under_a_shorter_grace_than_todays() {
    let f = fixture(VaultPolicy {
        purge_grace: Duration::ZERO,
        ..VaultPolicy::default()
    });
    let t = tenant("default");
    let total = PAGE + 100;
    for n in 0..total {
        let token = f.vault.tokenize(&t, cmd(&pan(n))).await.unwrap().token;
        f.vault.delete(&t, &token).await.unwrap();
    }
    f.clock.advance_ms(1);
    let vault = f.vault.clone();
    f.vault
        .compact(&operator(), |_| vault.seal())
        .await
        .unwrap_err();
    assert!(f.vault.compaction_pending().await.unwrap());
    // The grace is raised (a legal hold) before the run is resumed.
    let kms = Arc::new(DevKms::open_or_create(&f._dir.path().join("k"), Profile::Dev).unwrap());
    let held = Vault::new(
        kms,
        f.vault.store.clone(),
        f.clock.clone(),
        VaultPolicy {
            purge_grace: Duration::from_millis(HOUR_MS),
            ..VaultPolicy::default()
        },
    );
    let done = held.compact(&operator(), |_| {}).await.unwrap();
    let (first_page, rest) = (u64::try_from(PAGE).unwrap(), 100);
    assert_eq!((done.purged, done.dead_in_grace), (first_page, rest));
    assert_eq!(done.dead_by_ms, f.clock.now_ms() - HOUR_MS);
}

#[tokio::test]
async fn a_batch_with_a_card_whose_ff1_token_was_purged_commits_once() {
    let f = fixture(VaultPolicy {
        purge_grace: Duration::ZERO,
        ..VaultPolicy::default()
    });
    let t = tenant("default");
    let ff1 = |p: &str| TokenizeCommand {
        format: FormatRequest {
            generator: Some(GeneratorKind::Ff1),
            ..FormatRequest::default()
        },
        ..cmd(p)
    };
    let purged = f.vault.tokenize(&t, ff1(MC19)).await.unwrap().token;
    f.vault.delete(&t, &purged).await.unwrap();
    f.clock.advance_ms(1);
    assert_eq!(
        f.vault.compact(&operator(), |_| {}).await.unwrap().purged,
        1
    );
    let event = AuditEvent {
        action: "TokenizeBatch".into(),
        principal: "batcher".into(),
        ..AuditEvent::default()
    };
    let items = vec![ff1(MC19), ff1(&pan(7)), ff1(&pan(8))];
    let results = f
        .vault
        .tokenize_batch(&t, items, event, |r| format!("items={}", r.len()))
        .await
        .unwrap();
    let fresh = &results[0].as_ref().unwrap().token;
    assert_ne!(fresh, &purged);
    let pan = f.vault.detokenize(&t, fresh).await.unwrap();
    assert_eq!(pan.expose_ascii().as_slice(), MC19.as_bytes());
    // The purged generation was skipped up front: one commit, one event,
    // not a refused batch placed item by item.
    let events = f.vault.audit_events(0, 1000).await.unwrap();
    let batch: Vec<_> = events
        .iter()
        .filter(|e| e.event.principal == "batcher")
        .collect();
    assert_eq!(batch.len(), 1, "{batch:#?}");
}
