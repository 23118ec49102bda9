//! `tessera bench`: a gRPC load generator with latency percentiles, for the
//! end-to-end numbers in BENCHMARKS.md (DESIGN.md §7).
//!
//! Keeps `--concurrency` calls in flight over `--connections` HTTP/2
//! connections for `--duration` seconds after a warm-up, then prints calls
//! per second, PANs per second (batches) and latency percentiles. The
//! `health` RPC is the bare baseline: same server, transport and TLS, a
//! handler that does nothing, so ratios to it show what the vault adds.
//! Synthetic PANs are random Luhn-valid 16-digit numbers under the 999999
//! test BIN, never real cards.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tonic::transport::Channel;

use crate::cli::client::{Bearer, Connection, emit, fail};
use crate::proto::v1;
use crate::proto::v1::tokenizer_client::TokenizerClient;
use crate::tokens::luhn;

/// What to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchRpc {
    /// `Tokenize` (or `TokenizeBatch` with `--batch`).
    Tokenize,
    /// `Detokenize` (or `DetokenizeBatch` with `--batch`) of pre-made tokens.
    Detokenize,
    /// `grpc.health.v1.Health/Check`: the bare transport baseline.
    Health,
}

/// `tessera bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The RPC to load.
    #[arg(long, value_enum, default_value = "tokenize")]
    pub rpc: BenchRpc,
    /// Calls in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Items per call (batch RPCs); 0 = unary.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Distinct tokens made up front for `--rpc detokenize`.
    #[arg(long, default_value_t = 1000)]
    pub tokens: usize,
    /// Connection.
    #[command(flatten)]
    pub conn: Connection,
}

/// A random Luhn-valid 16-digit PAN under the test BIN 999999.
fn synthetic_pan() -> Result<String, String> {
    let mut digits = [9u8; 16];
    crate::csprng::fill_digits(&mut digits[6..15]).map_err(|e| e.to_string())?;
    digits[15] = luhn::completing_digit(&digits, 15);
    Ok(digits.iter().map(|d| char::from(b'0' + d)).collect())
}

/// The measured results of one run.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    items: u64,
    errors: u64,
}

type Client = TokenizerClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// One call of the chosen kind; the number of items it carried.
async fn one_call(
    rpc: BenchRpc,
    batch: usize,
    client: &mut Client,
    health: &mut tonic_health::pb::health_client::HealthClient<Channel>,
    tokens: &[String],
    n: usize,
) -> Result<u64, tonic::Status> {
    let token = |i: usize| tokens[(n * batch.max(1) + i) % tokens.len().max(1)].clone();
    let pan = || synthetic_pan().map_err(tonic::Status::internal);
    match (rpc, batch) {
        (BenchRpc::Health, _) => {
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            Ok(1)
        }
        (BenchRpc::Tokenize, 0) => {
            client
                .tokenize(v1::TokenizeRequest {
                    pan: pan()?,
                    ..Default::default()
                })
                .await?;
            Ok(1)
        }
        (BenchRpc::Tokenize, b) => {
            let items = (0..b)
                .map(|_| {
                    pan().map(|pan| v1::TokenizeRequest {
                        pan,
                        ..Default::default()
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            client
                .tokenize_batch(v1::TokenizeBatchRequest { items })
                .await?;
            Ok(u64::try_from(b).unwrap_or(u64::MAX))
        }
        (BenchRpc::Detokenize, 0) => {
            client
                .detokenize(v1::DetokenizeRequest { token: token(0) })
                .await?;
            Ok(1)
        }
        (BenchRpc::Detokenize, b) => {
            let items = (0..b)
                .map(|i| v1::DetokenizeRequest { token: token(i) })
                .collect();
            client
                .detokenize_batch(v1::DetokenizeBatchRequest { items })
                .await?;
            Ok(u64::try_from(b).unwrap_or(u64::MAX))
        }
    }
}

/// Keeps calling until `stop`, recording only calls started after `measure_from`.
#[allow(clippy::too_many_arguments)]
async fn worker(
    rpc: BenchRpc,
    batch: usize,
    mut client: Client,
    mut health: tonic_health::pb::health_client::HealthClient<Channel>,
    tokens: Arc<Vec<String>>,
    measure_from: Instant,
    stop: Instant,
    seed: usize,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = seed;
    while Instant::now() < stop {
        let start = Instant::now();
        let result = one_call(rpc, batch, &mut client, &mut health, &tokens, n).await;
        n = n.wrapping_add(997);
        if start < measure_from {
            continue;
        }
        let micros = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
        match result {
            Ok(items) => {
                tally.latencies_us.push(micros);
                tally.items += items;
            }
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[index]
}

/// Runs `tessera bench`.
pub async fn run(args: BenchArgs) -> ExitCode {
    if args.concurrency == 0 || args.connections == 0 || args.duration == 0 {
        return fail("--concurrency, --connections and --duration must be positive");
    }
    let bearer = match args.rpc {
        BenchRpc::Health => Bearer::none(),
        _ => match args.conn.bearer() {
            Ok(b) => b,
            Err(e) => return fail(&e),
        },
    };
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        match crate::cli::client::channel(&args.conn).await {
            Ok(c) => channels.push(c),
            Err(e) => return fail(&e),
        }
    }
    let client_for = |i: usize| {
        let channel = channels[i % channels.len()].clone();
        (
            TokenizerClient::with_interceptor(channel.clone(), bearer.clone()),
            tonic_health::pb::health_client::HealthClient::new(channel),
        )
    };
    // Tokens to detokenize, made up front.
    let mut tokens = Vec::new();
    if args.rpc == BenchRpc::Detokenize {
        let (mut client, _) = client_for(0);
        for _ in 0..args.tokens.max(1) {
            let pan = match synthetic_pan() {
                Ok(p) => p,
                Err(e) => return fail(&e),
            };
            match client
                .tokenize(v1::TokenizeRequest {
                    pan,
                    ..Default::default()
                })
                .await
            {
                Ok(r) => tokens.push(r.into_inner().token),
                Err(s) => return fail(&format!("setup tokenize failed: {s}")),
            }
        }
    }
    let tokens = Arc::new(tokens);
    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let stop = measure_from + Duration::from_secs(args.duration);
    let mut tasks = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency {
        let (client, health) = client_for(i);
        tasks.push(tokio::spawn(worker(
            args.rpc,
            args.batch,
            client,
            health,
            Arc::clone(&tokens),
            measure_from,
            stop,
            i,
        )));
    }
    let mut all = Tally::default();
    for task in tasks {
        match task.await {
            Ok(t) => {
                all.latencies_us.extend(t.latencies_us);
                all.items += t.items;
                all.errors += t.errors;
            }
            Err(e) => return fail(&format!("a load task failed: {e}")),
        }
    }
    all.latencies_us.sort_unstable();
    let seconds = f64::from(u32::try_from(args.duration).unwrap_or(u32::MAX));
    let calls = u32::try_from(all.latencies_us.len()).map_or(f64::MAX, f64::from);
    let items = u32::try_from(all.items).map_or(f64::MAX, f64::from);
    let (p50, p90, p99) = (
        percentile(&all.latencies_us, 50),
        percentile(&all.latencies_us, 90),
        percentile(&all.latencies_us, 99),
    );
    let max = all.latencies_us.last().copied().unwrap_or(0);
    let rpc = format!("{:?}", args.rpc).to_lowercase();
    let value = serde_json::json!({
        "rpc": rpc, "batch": args.batch, "concurrency": args.concurrency,
        "connections": args.connections, "seconds": args.duration,
        "calls_per_second": calls / seconds, "items_per_second": items / seconds,
        "errors": all.errors,
        "latency_us": { "p50": p50, "p90": p90, "p99": p99, "max": max },
    });
    let text = format!(
        "{rpc}: {:.0} calls/s, {:.0} items/s over {}s ({} in flight, {} connections, batch {}), {} errors\n\
         latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        calls / seconds,
        items / seconds,
        args.duration,
        args.concurrency,
        args.connections,
        args.batch,
        all.errors,
        f64::from(p50) / 1000.0,
        f64::from(p90) / 1000.0,
        f64::from(p99) / 1000.0,
        f64::from(max) / 1000.0,
    );
    let code = emit(args.conn.json, &value, &text);
    if all.errors > 0 {
        ExitCode::FAILURE
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_pans_are_valid_test_cards() {
        for _ in 0..100 {
            let pan = synthetic_pan().unwrap();
            assert!(pan.starts_with("999999") && pan.len() == 16);
            assert!(crate::domain::Pan::parse(&pan).is_ok(), "Luhn-valid");
        }
    }

    #[test]
    fn percentiles_pick_from_sorted_samples() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50), 51);
        assert_eq!(percentile(&samples, 99), 100);
        assert_eq!(percentile(&[], 99), 0);
    }
}
