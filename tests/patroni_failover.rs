//! High availability on Patroni: Tessera on a two-node PostgreSQL 15
//! cluster with synchronous replication, under continuous tokenize and
//! detokenize load, through a node crash (SIGKILL to the primary's Patroni
//! and postmaster) and then a clean switchover (SIGTERM to the primary's
//! Patroni). Nothing acknowledged may be lost, no call may hang, calls fail
//! fast with UNAVAILABLE while there is no primary, and Tessera reconnects
//! by itself. The unavailability window is printed.
//!
//! A cluster test with a time bound of its own: the default nextest run
//! leaves it out (`default-filter` in `.config/nextest.toml`), and `.ci/run`
//! runs it in a separate step (`cargo nextest run --ignore-default-filter
//! --test patroni_failover`), and so can you.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/patroni.rs"]
mod patroni;
#[path = "common/postgres.rs"]
mod postgres;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, test_pan};
use tessera::proto::v1;
use tonic::Code;

/// Tessera's own bound on a commit in this test.
const COMMIT_DEADLINE: Duration = Duration::from_secs(3);
/// Longer than any call may take: a call past it hung.
const HANG: Duration = Duration::from_secs(20);

/// What one load worker saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged tokenizes: (PAN, token).
    acked: Vec<(String, String)>,
    /// Failed calls: when they started, their code and how long they took.
    failures: Vec<(Instant, Code, Duration)>,
    /// When each successful call ended.
    successes: Vec<Instant>,
    /// Detokenizes that returned a PAN other than the one tokenized.
    wrong: usize,
    /// The longest successful call.
    slowest_success: Duration,
}

/// Tokenizes fresh PANs and detokenizes the ones it got tokens for, one
/// call at a time, until `stop`.
async fn worker(
    server_addr: String,
    api_key: String,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut client = common::client(&server_addr, Some(&api_key)).await;
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let pan = test_pan(4, next.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        let call = client.tokenize(v1::TokenizeRequest {
            pan: pan.clone(),
            ..Default::default()
        });
        let outcome = tokio::time::timeout(HANG, call)
            .await
            .unwrap_or_else(|_| panic!("a tokenize hung for {HANG:?}"));
        match outcome {
            Ok(response) => {
                seen.successes.push(Instant::now());
                seen.slowest_success = seen.slowest_success.max(started.elapsed());
                seen.acked.push((pan, response.into_inner().token));
            }
            Err(status) => seen
                .failures
                .push((started, status.code(), started.elapsed())),
        }
        // Every other round, redeem an earlier token.
        if let Some((pan, token)) = seen.acked.get(seen.acked.len() / 2).cloned() {
            let started = Instant::now();
            let call = client.detokenize(v1::DetokenizeRequest { token });
            let outcome = tokio::time::timeout(HANG, call)
                .await
                .unwrap_or_else(|_| panic!("a detokenize hung for {HANG:?}"));
            match outcome {
                Ok(response) => {
                    seen.successes.push(Instant::now());
                    seen.slowest_success = seen.slowest_success.max(started.elapsed());
                    if response.into_inner().pan != pan {
                        seen.wrong += 1;
                    }
                }
                Err(status) => seen
                    .failures
                    .push((started, status.code(), started.elapsed())),
            }
        }
    }
    seen
}

/// Load from `workers` concurrent callers, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Load {
    async fn start(server: &Server, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let key = server.api_key("processor");
        let workers = (0..workers)
            .map(|_| {
                tokio::spawn(worker(
                    server.addr.clone(),
                    key.clone(),
                    Arc::clone(&next),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        Self { stop, workers }
    }

    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for worker in self.workers {
            let seen = worker.await.unwrap();
            all.acked.extend(seen.acked);
            all.failures.extend(seen.failures);
            all.successes.extend(seen.successes);
            all.wrong += seen.wrong;
            all.slowest_success = all.slowest_success.max(seen.slowest_success);
        }
        all.successes.sort();
        all
    }
}

/// Waits (on a blocking thread) until `ready`, within `limit`.
async fn wait_for(
    what: &'static str,
    limit: Duration,
    ready: impl FnMut() -> bool + Send + 'static,
) -> Duration {
    tokio::task::spawn_blocking(move || patroni::wait_for(what, limit, ready))
        .await
        .unwrap()
}

/// The longest time no call succeeded, from the last success before
/// `from` on.
fn gap_after(successes: &[Instant], from: Instant) -> Duration {
    let first = successes.partition_point(|t| *t < from).saturating_sub(1);
    successes[first..]
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .max()
        .expect("no call succeeded after the fault")
}

/// Checks the load's record: no wrong PAN, every failure UNAVAILABLE and
/// fast, and every acknowledged token still detokenizes to its PAN.
async fn check(server: &Server, seen: &Seen, phase: &str) {
    assert_eq!(seen.wrong, 0, "{phase}: a detokenize returned another PAN");
    assert!(
        seen.slowest_success <= 2 * COMMIT_DEADLINE + Duration::from_secs(3),
        "{phase}: a call took {:?}",
        seen.slowest_success
    );
    for (_, code, took) in &seen.failures {
        assert_eq!(
            *code,
            Code::Unavailable,
            "{phase}: a call failed with {code:?}"
        );
        // Queued behind a commit that timed out, a call may see two
        // deadlines; nothing waits longer.
        assert!(
            *took <= 2 * COMMIT_DEADLINE + Duration::from_secs(3),
            "{phase}: a failed call took {took:?}"
        );
    }
    let mut client = server.client("processor").await;
    for chunk in seen.acked.chunks(500) {
        let call = client.detokenize_batch(v1::DetokenizeBatchRequest {
            items: chunk
                .iter()
                .map(|(_, token)| v1::DetokenizeRequest {
                    token: token.clone(),
                })
                .collect(),
        });
        let results = tokio::time::timeout(HANG, call)
            .await
            .expect("a batch detokenize hung")
            .unwrap()
            .into_inner()
            .results;
        for ((pan, token), result) in chunk.iter().zip(results) {
            match result.result {
                Some(v1::detokenize_result::Result::Pan(got)) => {
                    assert_eq!(&got.pan, pan, "{phase}: token {token}");
                }
                other => panic!("{phase}: acknowledged token {token} lost: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_through_a_primary_crash_and_a_switchover() {
    let cluster = tokio::task::spawn_blocking(patroni::Cluster::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let env = vec![
        ("TESSERA__STORE__BACKEND", "postgres".to_owned()),
        (
            "TESSERA__STORE__URL",
            format!("{} connect_timeout=1", cluster.url()),
        ),
        (
            "TESSERA__STORE__PASSWORD_FILE",
            cluster.password_file().display().to_string(),
        ),
        ("TESSERA__STORE__MIGRATE", "true".to_owned()),
        (
            "TESSERA__STORE__COMMIT_DEADLINE_MS",
            COMMIT_DEADLINE.as_millis().to_string(),
        ),
        ("TESSERA__STORE__STATEMENT_TIMEOUT_MS", "2000".to_owned()),
        ("TESSERA__STORE__CONNECT_TIMEOUT_MS", "1000".to_owned()),
        // The load redeems thousands of tokens as fast as it can: not an
        // anomaly here, and not rate limited.
        ("TESSERA__ACCESS__LOCK_ON_ANOMALY", "false".to_owned()),
        (
            "TESSERA__ACCESS__DETOKENIZE_LEARNING_LIMIT",
            "1000000000".to_owned(),
        ),
        ("TESSERA__ACCESS__RATE_PER_SECOND", "10000000".to_owned()),
    ];
    let server = Server::start_dev_with_env(&data, &env, &log);

    // A node crash under load.
    let load = Load::start(&server, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = cluster.primary().expect("a primary");
    let crashed_at = Instant::now();
    let mut cluster = cluster;
    cluster.nodes[old].crash();
    let other = 1 - old;
    let (rest_port, name) = (
        cluster.nodes[other].rest_port,
        cluster.nodes[other].name.clone(),
    );
    wait_for(
        "the standby's promotion",
        Duration::from_secs(60),
        move || patroni::rest_ok(rest_port, "/primary"),
    )
    .await;
    let promoted = crashed_at.elapsed();
    // Let the load run on the new primary for a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = load.stop().await;
    let window = gap_after(&seen.successes, crashed_at);
    eprintln!(
        "crash of the primary: {name} promoted {promoted:?} after the crash; no call succeeded for {window:?}; \
         {} tokens acknowledged, {} calls failed (UNAVAILABLE)",
        seen.acked.len(),
        seen.failures.len()
    );
    assert!(
        window < Duration::from_secs(45),
        "unavailable for {window:?}"
    );
    check(&server, &seen, "crash").await;

    // The crashed node rejoins as the synchronous standby; then a clean
    // switchover under load.
    cluster.nodes[old].restart();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_for_sync_standby(Duration::from_secs(90));
        cluster
    })
    .await
    .unwrap();
    let load = Load::start(&server, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let primary = cluster.primary().expect("a primary");
    let switched_at = Instant::now();
    let mut cluster = cluster;
    cluster.nodes[primary].stop();
    let rest_port = cluster.nodes[1 - primary].rest_port;
    wait_for("the switchover", Duration::from_secs(60), move || {
        patroni::rest_ok(rest_port, "/primary")
    })
    .await;
    let promoted = switched_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = load.stop().await;
    let window = gap_after(&seen.successes, switched_at);
    eprintln!(
        "switchover: new primary {promoted:?} after the SIGTERM; no call succeeded for {window:?}; \
         {} tokens acknowledged, {} calls failed (UNAVAILABLE)",
        seen.acked.len(),
        seen.failures.len()
    );
    assert!(
        window < Duration::from_secs(30),
        "unavailable for {window:?}"
    );
    check(&server, &seen, "switchover").await;
    // One audit chain through both primaries, and it verifies.
    common::assert_audit_intact(&server).await;
    server.kill9();
    drop(cluster);
}
