//! Criterion benches of key management: Shamir unseal, the DEK cache hit on
//! every detokenize, and re-encryption throughput on sled.
//!
//! Run: `cargo bench --bench keys`. Numbers go to BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera::clock::SystemClock;
use tessera::config::Profile;
use tessera::domain::{Pan, TenantId, Token};
use tessera::keyring::Keyring;
use tessera::kms::Kms;
use tessera::kms::dev::DevKms;
use tessera::kms::shamir::{ShamirKms, split_new_master_key};
use tessera::pipeline::Pipeline;
use tessera::store::Store;
use tessera::store::memory::MemoryStore;
use tessera::store::sled::SledStore;
use tessera::tokens::{TokenFormat, luhn};
use tessera::vault::{FormatRequest, TokenizeCommand, Vault, VaultPolicy};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|_| std::process::abort())
}

fn shamir_unseal(c: &mut Criterion) {
    let rt = runtime();
    let (setup, shares) = split_new_master_key(3, 5).unwrap_or_else(|_| std::process::abort());
    let files: Vec<Vec<u8>> = shares
        .iter()
        .map(|s| serde_json::to_vec(s).unwrap_or_default())
        .collect();
    c.bench_function("kms/shamir_unseal_3_of_5", |b| {
        b.iter(|| {
            let kms = ShamirKms::sealed(setup.clone()).unwrap_or_else(|_| std::process::abort());
            rt.block_on(async {
                for (who, f) in ["a", "b", "c"].iter().zip(&files) {
                    let _ = kms.submit_share(who, f).await;
                }
            });
            assert!(kms.master_key_id().is_some());
        })
    });
}

fn dek_cache_hit(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap_or_else(|_| std::process::abort());
    let kms: Arc<dyn Kms> = Arc::new(
        DevKms::open_or_create(&dir.path().join("k"), Profile::Dev)
            .unwrap_or_else(|_| std::process::abort()),
    );
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let pipeline = Arc::new(Pipeline::new(Arc::clone(&store)));
    let keyring = Keyring::new(kms, store, Arc::new(SystemClock), pipeline);
    let tenant = TenantId::new("bench").unwrap_or_else(|_| std::process::abort());
    rt.block_on(keyring.current_dek(&tenant))
        .unwrap_or_else(|_| std::process::abort());
    c.bench_function("keyring/dek_cache_hit", |b| {
        b.iter(|| rt.block_on(keyring.dek(&tenant, 1)))
    });
    // The keyed ids every call computes, from the tenant's cached keys.
    let keys = rt
        .block_on(keyring.tenant_keys(&tenant, true))
        .ok()
        .flatten()
        .unwrap_or_else(|| std::process::abort());
    let token = Token::parse("4111110000021111").unwrap_or_else(|_| std::process::abort());
    c.bench_function("keyring/token_id", |b| {
        b.iter(|| keys.token_id(std::hint::black_box(&token)))
    });
    let card = pan(7);
    let format = TokenFormat::default();
    c.bench_function("keyring/fingerprint", |b| {
        b.iter(|| keys.fingerprint(std::hint::black_box(&card), &format))
    });
}

fn pan(n: u64) -> Pan {
    let mut digits: Vec<u8> = format!("4{:014}", n * 7_919 + 3)
        .bytes()
        .map(|b| b - b'0')
        .collect();
    digits.push(0);
    let last = digits.len() - 1;
    digits[last] = luhn::completing_digit(&digits, last);
    Pan::from_digits(&digits).unwrap_or_else(|_| std::process::abort())
}

/// Re-encryption of 2,000 records on sled (durable: one flush per page of
/// 500). Each iteration builds a fresh store with records under DEK v1,
/// rotates, and times the job alone.
fn reencrypt_throughput(c: &mut Criterion) {
    const RECORDS: u64 = 2_000;
    let rt = runtime();
    let mut group = c.benchmark_group("vault");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("reencrypt_2000_records_sled", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap_or_else(|_| std::process::abort());
                let store = Arc::new(
                    SledStore::open(&dir.path().join("store"))
                        .unwrap_or_else(|_| std::process::abort()),
                );
                let kms = Arc::new(
                    DevKms::open_or_create(&dir.path().join("k"), Profile::Dev)
                        .unwrap_or_else(|_| std::process::abort()),
                );
                let vault = Vault::new(kms, store, Arc::new(SystemClock), VaultPolicy::default());
                let tenant = TenantId::new("bench").unwrap_or_else(|_| std::process::abort());
                rt.block_on(async {
                    for n in 0..RECORDS {
                        let cmd = TokenizeCommand {
                            pan: pan(n),
                            format: FormatRequest::default(),
                            deterministic: None,
                            ttl: None,
                            single_use: false,
                            metadata: Default::default(),
                        };
                        vault
                            .tokenize(&tenant, cmd)
                            .await
                            .unwrap_or_else(|_| std::process::abort());
                    }
                    vault
                        .rotate_data_key(&tenant)
                        .await
                        .unwrap_or_else(|_| std::process::abort());
                    let start = Instant::now();
                    let done = vault
                        .reencrypt(&tenant, |_| {})
                        .await
                        .unwrap_or_else(|_| std::process::abort());
                    total += start.elapsed();
                    assert_eq!(done.rewritten, RECORDS);
                });
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, shamir_unseal, dek_cache_hit, reencrypt_throughput);
criterion_main!(benches);
