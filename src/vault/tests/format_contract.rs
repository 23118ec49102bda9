//! The token-format contract (DESIGN.md §2, SECURITY.md §5.7): the default
//! format serves every valid card, an explicit format is honoured exactly or
//! refused, deterministic reuse never changes what was asked for, and token
//! space runs out with a clear answer instead of a loop. Each test names the
//! review finding it closes.

use std::collections::HashSet;

use super::*;
use crate::domain::disclosure;
use crate::domain::pan::{MAX_PAN_LEN, MIN_PAN_LEN};

fn formatted(pan: &str, format: FormatRequest) -> TokenizeCommand {
    TokenizeCommand { format, ..cmd(pan) }
}

fn deterministic(pan: &str) -> TokenizeCommand {
    TokenizeCommand {
        deterministic: Some(true),
        ..cmd(pan)
    }
}

fn ff1(lead: Option<u32>) -> FormatRequest {
    FormatRequest {
        generator: Some(GeneratorKind::Ff1),
        keep_leading: lead,
        ..FormatRequest::default()
    }
}

fn kept(lead: u32, trail: u32, luhn: Option<LuhnPolicy>) -> FormatRequest {
    FormatRequest {
        keep_leading: Some(lead),
        keep_trailing: Some(trail),
        luhn,
        ..FormatRequest::default()
    }
}

/// A Luhn-valid PAN of `len` digits starting with `prefix`.
fn card(prefix: &str, len: usize, seed: u64) -> String {
    let mut digits: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    while digits.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        digits.push(u8::try_from((x >> 33) % 10).unwrap());
    }
    let last = len - 1;
    digits[last] = luhn::completing_digit(&digits, last);
    digits.iter().map(|d| char::from(b'0' + d)).collect()
}

async fn round_trips(f: &Fixture, t: &TenantId, token: &Token, pan: &str) {
    let back = f.vault.detokenize(t, token).await.unwrap();
    assert_eq!(back.expose_ascii().as_slice(), pan.as_bytes());
}

/// Finding 9: a card's FF1 tokenization stopped for good after 16 dead FF1
/// tokens (each delete burns a generation), with a misleading error.
#[tokio::test]
async fn ff1_generations_never_run_out() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let mut seen = HashSet::new();
    for round in 0..40 {
        let out = f
            .vault
            .tokenize(&t, formatted(MC19, ff1(None)))
            .await
            .unwrap();
        assert!(!out.reused, "round {round}");
        assert!(seen.insert(out.token.as_str().to_owned()), "round {round}");
        round_trips(&f, &t, &out.token, MC19).await;
        f.vault.delete(&t, &out.token).await.unwrap();
    }
}

/// Finding 10: asking for a single-use token returned the live multi-use
/// token (which then redeemed twice); other TTLs and metadata were ignored.
#[tokio::test]
async fn deterministic_reuse_refuses_other_options() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let first = f.vault.tokenize(&t, deterministic(VISA)).await.unwrap();

    let single_use = TokenizeCommand {
        single_use: true,
        ..deterministic(VISA)
    };
    let err = f.vault.tokenize(&t, single_use).await.unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::ReuseConflict {
                option: "single_use"
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("single_use"));

    let ttl = TokenizeCommand {
        ttl: Some(Duration::from_secs(60)),
        ..deterministic(VISA)
    };
    let err = f.vault.tokenize(&t, ttl).await.unwrap_err();
    assert!(
        matches!(err, VaultError::ReuseConflict { option: "ttl" }),
        "{err}"
    );

    let mut tagged = deterministic(VISA);
    tagged.metadata.insert("order".into(), "42".into());
    let err = f.vault.tokenize(&t, tagged).await.unwrap_err();
    assert!(
        matches!(err, VaultError::ReuseConflict { option: "metadata" }),
        "{err}"
    );

    // The same options still reuse, and the token is still multi-use.
    let again = f.vault.tokenize(&t, deterministic(VISA)).await.unwrap();
    assert!(again.reused);
    assert_eq!(again.token, first.token);
    round_trips(&f, &t, &first.token, VISA).await;
    round_trips(&f, &t, &first.token, VISA).await;
}

/// Finding 10: the single-use token a caller asked for is single-use, also
/// when deterministic: a matching reuse is the single-use token itself.
#[tokio::test]
async fn deterministic_single_use_reuses_only_single_use() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let once = || TokenizeCommand {
        single_use: true,
        ..deterministic(MC19)
    };
    let a = f.vault.tokenize(&t, once()).await.unwrap();
    let b = f.vault.tokenize(&t, once()).await.unwrap();
    assert!(b.reused && a.token == b.token);
    round_trips(&f, &t, &a.token, MC19).await;
    assert!(matches!(
        f.vault.detokenize(&t, &a.token).await,
        Err(VaultError::NotFound)
    ));
}

/// Finding 10: a deterministic or FF1 request for keep 0 + 0 (or 8 + 4) got
/// the existing 6 + 4 token, showing the BIN the caller asked to hide.
#[tokio::test]
async fn deterministic_lookup_is_per_format() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let six_four = f.vault.tokenize(&t, deterministic(MC19)).await.unwrap();
    let hidden = TokenizeCommand {
        format: kept(0, 0, None),
        ..deterministic(MC19)
    };
    let zero = f.vault.tokenize(&t, hidden).await.unwrap();
    assert!(!zero.reused);
    assert_ne!(zero.token, six_four.token);
    let hidden_again = TokenizeCommand {
        format: kept(0, 0, None),
        ..deterministic(MC19)
    };
    let zero_again = f.vault.tokenize(&t, hidden_again).await.unwrap();
    assert!(zero_again.reused && zero_again.token == zero.token);

    let ff1_six = f
        .vault
        .tokenize(&t, formatted(MC19, ff1(Some(6))))
        .await
        .unwrap();
    let ff1_eight = f
        .vault
        .tokenize(&t, formatted(MC19, ff1(Some(8))))
        .await
        .unwrap();
    assert!(!ff1_eight.reused);
    assert_eq!(&ff1_eight.token.as_str()[..8], &MC19[..8]);
    assert_ne!(ff1_six.token, ff1_eight.token);
    for out in [&six_four, &zero, &ff1_six, &ff1_eight] {
        round_trips(&f, &t, &out.token, MC19).await;
    }
}

/// Finding 11: the default format refused a 13-digit Visa and a 12-digit
/// Maestro ("random tokens need at least 4 random digits").
#[tokio::test]
async fn default_format_serves_every_length_and_brand() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let mut pans = vec!["4222222222222".to_owned(), "501800000009".to_owned()];
    // Visa, Mastercard, Amex, Discover, JCB, UnionPay, Diners, Maestro.
    for prefix in ["4", "51", "2221", "37", "6011", "3528", "62", "36", "6759"] {
        for len in MIN_PAN_LEN..=MAX_PAN_LEN {
            pans.push(card(prefix, len, u64::try_from(len).unwrap()));
        }
    }
    for pan in &pans {
        let len = pan.len();
        let out = f.vault.tokenize(&t, cmd(pan)).await.unwrap();
        let token = out.token.as_str();
        assert_eq!(token.len(), len, "{len}");
        assert!(!luhn::is_valid(&out.token.digits()), "{len}");
        let lead = token
            .bytes()
            .zip(pan.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let kept_lead = if len >= 15 { 6 } else { 0 };
        assert!(lead >= kept_lead, "{len}");
        assert_eq!(&token[len - 4..], &pan[len - 4..], "{len}");
        let hidden = out
            .masked_pan
            .as_str()
            .bytes()
            .filter(|b| *b == b'*')
            .count();
        assert!(
            hidden >= disclosure::min_hidden(len, 6),
            "{len}: {:?}",
            out.masked_pan
        );
        round_trips(&f, &t, &out.token, pan).await;
    }
}

/// Finding 11: keep 8 + 4 under the default Luhn policy was refused for every
/// 16-digit card (8-digit BINs are the networks' standard since 2022).
#[tokio::test]
async fn eight_four_works_for_sixteen_digits_under_every_policy() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    for luhn_policy in [None, Some(LuhnPolicy::Valid), Some(LuhnPolicy::Any)] {
        let out = f
            .vault
            .tokenize(&t, formatted(VISA, kept(8, 4, luhn_policy)))
            .await
            .unwrap();
        assert_eq!(&out.token.as_str()[..8], &VISA[..8]);
        assert_eq!(&out.token.as_str()[12..], &VISA[12..]);
        round_trips(&f, &t, &out.token, VISA).await;
    }
}

/// An explicit format is honoured exactly or refused with the reason, never
/// swapped; an unset count gives way so the rest of the request holds.
#[tokio::test]
async fn explicit_format_is_honoured_or_refused() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    let visa13 = "4222222222222";
    let err = f
        .vault
        .tokenize(&t, formatted(visa13, kept(6, 4, None)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::Generate(GenerateError::KeepsTooMany {
                kept: 10,
                len: 13,
                max_kept: 8
            })
        ),
        "{err}"
    );
    let lead_only = FormatRequest {
        keep_leading: Some(6),
        ..FormatRequest::default()
    };
    let out = f
        .vault
        .tokenize(&t, formatted(visa13, lead_only))
        .await
        .unwrap();
    assert_eq!(&out.token.as_str()[..6], &visa13[..6]);
    round_trips(&f, &t, &out.token, visa13).await;
}

/// Random-token capacity is the bucket's token space: the last free token is
/// found, and a full bucket answers `BucketExhausted` (RESOURCE_EXHAUSTED).
#[tokio::test]
async fn a_full_bucket_is_exhausted_not_a_loop() {
    let f = fixture(VaultPolicy::default());
    let t = tenant("default");
    // 16 digits keeping 8 + 4, Luhn-valid: 999 tokens besides the card.
    let format = kept(8, 4, Some(LuhnPolicy::Valid));
    let mut seen = HashSet::new();
    for _ in 0..999 {
        let out = f.vault.tokenize(&t, formatted(VISA, format)).await.unwrap();
        assert!(seen.insert(out.token.as_str().to_owned()));
    }
    let err = f
        .vault
        .tokenize(&t, formatted(VISA, format))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::Generate(GenerateError::BucketExhausted { capacity: 999 })
        ),
        "{err}"
    );
}
