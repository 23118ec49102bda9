//! Criterion benches of the store and the write pipeline, per backend:
//! one durable append (a commit of one unit: on sled a transaction and a
//! flush), a point read, and the committer taking 64 concurrent writers
//! (a record and an audit event each) in as few commits as their arrival
//! allows: group commit's whole point, measured without gRPC.
//!
//! PostgreSQL runs too when its server programs are installed (or can be:
//! the throwaway cluster of the tests, with `fsync` on), one commit being
//! a transaction and a durable COMMIT.
//!
//! Run: `cargo bench --bench store`. Numbers go to BENCHMARKS.md.

#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera::audit::AuditEvent;
use tessera::domain::{CardBrand, MaskedPan, TenantId, TokenId};
use tessera::pipeline::{Pipeline, Submission};
use tessera::store::fjall::FjallStore;
use tessera::store::memory::MemoryStore;
use tessera::store::postgres::{PgOptions, PgStore};
use tessera::store::sled::SledStore;
use tessera::store::{PublicFacts, SealedRecord, Store, WriteUnit};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|_| std::process::abort())
}

/// A record shaped like a tokenize's: 16-digit facts, 70 sealed bytes.
fn record(n: u64) -> SealedRecord {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8] = 0x5A;
    SealedRecord {
        token_id: TokenId::from_bytes(id),
        tenant: TenantId::new("bench").unwrap_or_else(|_| std::process::abort()),
        fingerprint: None,
        facts: PublicFacts {
            masked_pan: MaskedPan::from_stored("411111******1111".into())
                .unwrap_or_else(|| std::process::abort()),
            brand: CardBrand::Visa,
            created_at_ms: 1_700_000_000_000,
            expires_at_ms: None,
            single_use: false,
            metadata: BTreeMap::new(),
        },
        sealed_pan: vec![0xA5; 70],
    }
}

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        time_ms: 1_700_000_000_000 + n,
        request_id: format!("{n:016x}"),
        principal: "pos".into(),
        tenant: "bench".into(),
        action: "Tokenize".into(),
        resource: format!("token:{n:016x}"),
        outcome: "OK".into(),
        origin: "127.0.0.1:50000".into(),
    }
}

/// A fresh, migrated database on a throwaway cluster with `fsync` on (the
/// tests' clusters turn it off), kept running until the process exits.
fn postgres_store(rt: &tokio::runtime::Runtime) -> PgStore {
    static CLUSTER: std::sync::OnceLock<postgres::Postgres> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let cluster = CLUSTER.get_or_init(|| postgres::Postgres::start_with(&["-c", "fsync=on"]));
    let name = format!("bench{}", NEXT.fetch_add(1, Ordering::Relaxed));
    rt.block_on(async {
        let url = cluster.database(&name).await;
        let store = PgStore::new(&PgOptions::new(url)).unwrap_or_else(|_| std::process::abort());
        store
            .migrate()
            .await
            .unwrap_or_else(|_| std::process::abort());
        store
    })
}

/// The backends, each fresh: sled and fjall in temporary directories,
/// memory, PostgreSQL.
fn backends(
    rt: &tokio::runtime::Runtime,
) -> Vec<(&'static str, Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap_or_else(|_| std::process::abort());
    let sled = SledStore::open(&dir.path().join("store")).unwrap_or_else(|_| std::process::abort());
    let fjall_dir = tempfile::tempdir().unwrap_or_else(|_| std::process::abort());
    let fjall =
        FjallStore::open(fjall_dir.path(), 64 << 20).unwrap_or_else(|_| std::process::abort());
    vec![
        ("sled", Arc::new(sled), Some(dir)),
        ("fjall", Arc::new(fjall), Some(fjall_dir)),
        ("memory", Arc::new(MemoryStore::new()), None),
        ("postgres", Arc::new(postgres_store(rt)), None),
    ]
}

fn append_and_get(c: &mut Criterion) {
    let rt = runtime();
    for (name, store, _dir) in backends(&rt) {
        let next = AtomicU64::new(0);
        c.bench_function(&format!("store/{name}/append_durable"), |b| {
            b.iter(|| {
                let n = next.fetch_add(1, Ordering::Relaxed);
                rt.block_on(store.append(record(n)))
            })
        });
        let known = record(0).token_id;
        c.bench_function(&format!("store/{name}/get_hit"), |b| {
            b.iter(|| rt.block_on(store.get(std::hint::black_box(&known))))
        });
    }
}

/// 64 writers submit at once; one iteration ends when all are durable.
fn committer_batch(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(64));
    for (name, store, _dir) in backends(&rt) {
        let pipeline = Arc::new(Pipeline::new(store));
        let next = Arc::new(AtomicU64::new(1_000_000));
        group.bench_function(format!("{name}/64_writers_record_and_event"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut writers = Vec::with_capacity(64);
                    for _ in 0..64 {
                        let pipeline = Arc::clone(&pipeline);
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        writers.push(tokio::spawn(async move {
                            pipeline
                                .submit(Submission {
                                    unit: WriteUnit {
                                        records: vec![record(n)],
                                        ..WriteUnit::default()
                                    },
                                    events: vec![event(n)],
                                    ..Submission::default()
                                })
                                .await
                        }));
                    }
                    for writer in writers {
                        if !matches!(writer.await, Ok(Ok(_))) {
                            std::process::abort();
                        }
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append_and_get, committer_batch);
criterion_main!(benches);
