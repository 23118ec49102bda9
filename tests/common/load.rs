//! Continuous tokenize and detokenize load for fault tests (a PostgreSQL
//! failover, a database stopped and started, a replica killed): what was
//! acknowledged, what failed, how long calls took, and the check that
//! nothing acknowledged was lost.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Server, test_pan};
use tessera::proto::v1;
use tonic::Code;

/// Longer than any call may take: a call past it hung.
pub const HANG: Duration = Duration::from_secs(20);

/// What one load worker saw.
#[derive(Default)]
pub struct Seen {
    /// Acknowledged tokenizes: (PAN, token).
    pub acked: Vec<(String, String)>,
    /// When each of `acked` was acknowledged.
    pub acked_at: Vec<Instant>,
    /// Failed calls: when they started, their code and how long they took.
    pub failures: Vec<(Instant, Code, Duration)>,
    /// When each successful call ended.
    pub successes: Vec<Instant>,
    /// Detokenizes that returned a PAN other than the one tokenized.
    pub wrong: usize,
    /// The longest successful call.
    pub slowest_success: Duration,
}

/// Tokenizes fresh PANs and detokenizes the ones it got tokens for, one
/// call at a time, until `stop`.
async fn worker(
    server_addr: String,
    api_key: String,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut client = crate::common::client(&server_addr, Some(&api_key)).await;
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
                seen.acked_at.push(Instant::now());
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
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Seen>>,
}

impl Load {
    pub async fn start(server: &Server, workers: usize) -> Self {
        Self::start_at(server, workers, 0).await
    }

    /// Load whose PANs are numbered from `first` (so two loads never
    /// tokenize one PAN).
    pub async fn start_at(server: &Server, workers: usize, first: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(first));
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

    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for worker in self.workers {
            let seen = worker.await.unwrap();
            all.acked.extend(seen.acked);
            all.acked_at.extend(seen.acked_at);
            all.failures.extend(seen.failures);
            all.successes.extend(seen.successes);
            all.wrong += seen.wrong;
            all.slowest_success = all.slowest_success.max(seen.slowest_success);
        }
        all.successes.sort();
        all
    }
}

/// The longest time no call succeeded, from the last success before
/// `from` on.
pub fn gap_after(successes: &[Instant], from: Instant) -> Duration {
    let first = successes.partition_point(|t| *t < from).saturating_sub(1);
    successes[first..]
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .max()
        .expect("no call succeeded after the fault")
}

/// Checks the load's record: no wrong PAN, every failure UNAVAILABLE and
/// fast (within two of Tessera's commit deadlines `deadline`), and every
/// acknowledged token still detokenizes to its PAN through `server`.
pub async fn check(server: &Server, seen: &Seen, phase: &str, deadline: Duration) {
    assert_eq!(seen.wrong, 0, "{phase}: a detokenize returned another PAN");
    assert!(
        seen.slowest_success <= 2 * deadline + Duration::from_secs(3),
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
            *took <= 2 * deadline + Duration::from_secs(3),
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
