//! `tessera bench`: a gRPC load generator with latency percentiles, for the
//! end-to-end numbers in BENCHMARKS.md (DESIGN.md §7).
//!
//! Keeps `--concurrency` calls in flight over `--connections` HTTP/2
//! connections for `--duration` seconds after a warm-up, then prints calls
//! per second, PANs per second (batches) and latency percentiles up to
//! p99.9. A list of concurrencies (`--concurrency 1,8,64,256`) runs each in
//! turn: a sweep. The `health` RPC is the bare baseline: same server,
//! transport and TLS, a handler that does nothing; `--ceiling` measures it
//! before each level of the run, so each result carries its ratio to the
//! ceiling measured minutes apart on the same machine. `--rpc mixed` draws
//! each call as a detokenize (`--read-percent`, 80 by default) or a
//! tokenize. `--json` prints one document that `scripts/bench_plot.py`
//! turns into a latency/throughput plot.
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
    /// Detokenize `--read-percent` of the calls, tokenize the rest.
    Mixed,
}

/// `tessera bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The RPC to load.
    #[arg(long, value_enum, default_value = "tokenize")]
    pub rpc: BenchRpc,
    /// Calls in flight; a comma-separated list runs a sweep, one level after
    /// another (e.g. `1,8,64,256`).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub concurrency: Vec<usize>,
    /// Also measure `health` at each concurrency, just before the RPC, and
    /// report the ratio to it.
    #[arg(long)]
    pub ceiling: bool,
    /// With `--rpc mixed`: the share of calls that detokenize, in percent.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
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
type HealthClient = tonic_health::pb::health_client::HealthClient<Channel>;

/// What one load task calls: the RPC, with a mixed load's read share.
#[derive(Debug, Clone, Copy)]
struct Load {
    rpc: BenchRpc,
    batch: usize,
    read_percent: u8,
}

/// One call of the chosen kind; the number of items it carried.
async fn one_call(
    load: Load,
    client: &mut Client,
    health: &mut HealthClient,
    tokens: &[String],
    n: usize,
) -> Result<u64, tonic::Status> {
    let batch = load.batch;
    let token = |i: usize| tokens[(n * batch.max(1) + i) % tokens.len().max(1)].clone();
    let pan = || synthetic_pan().map_err(tonic::Status::internal);
    let rpc = match load.rpc {
        BenchRpc::Mixed => {
            let roll = crate::csprng::below_u64(100)
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            if roll < u64::from(load.read_percent) {
                BenchRpc::Detokenize
            } else {
                BenchRpc::Tokenize
            }
        }
        other => other,
    };
    match (rpc, batch) {
        (BenchRpc::Health | BenchRpc::Mixed, _) => {
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

/// When a level measures: calls started before `from` warm up, calls
/// start until `stop`.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    stop: Instant,
}

/// Keeps calling until the window closes, recording calls started in it.
async fn worker(
    load: Load,
    mut client: Client,
    mut health: HealthClient,
    tokens: Arc<Vec<String>>,
    window: Window,
    seed: usize,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = seed;
    while Instant::now() < window.stop {
        let start = Instant::now();
        let result = one_call(load, &mut client, &mut health, &tokens, n).await;
        n = n.wrapping_add(997);
        if start < window.from {
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

/// The sample at `per_mille`/1000 of the sorted samples.
fn percentile(sorted: &[u32], per_mille: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = (sorted.len() * per_mille / 1000).min(sorted.len() - 1);
    sorted[index]
}

/// One level's figures.
#[derive(Debug, Clone, Copy)]
struct Measured {
    calls_per_second: f64,
    items_per_second: f64,
    errors: u64,
    p50: u32,
    p90: u32,
    p99: u32,
    p999: u32,
    max: u32,
}

impl Measured {
    fn of(mut all: Tally, seconds: u64) -> Self {
        all.latencies_us.sort_unstable();
        let seconds = f64::from(u32::try_from(seconds).unwrap_or(u32::MAX));
        let calls = u32::try_from(all.latencies_us.len()).map_or(f64::MAX, f64::from);
        let items = u32::try_from(all.items).map_or(f64::MAX, f64::from);
        let at = |per_mille| percentile(&all.latencies_us, per_mille);
        Self {
            calls_per_second: calls / seconds,
            items_per_second: items / seconds,
            errors: all.errors,
            p50: at(500),
            p90: at(900),
            p99: at(990),
            p999: at(999),
            max: all.latencies_us.last().copied().unwrap_or(0),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "calls_per_second": self.calls_per_second,
            "items_per_second": self.items_per_second,
            "errors": self.errors,
            "latency_us": {
                "p50": self.p50, "p90": self.p90, "p99": self.p99,
                "p99_9": self.p999, "max": self.max,
            },
        })
    }

    fn text(&self) -> String {
        let ms = |us: u32| f64::from(us) / 1000.0;
        format!(
            "{:.0} calls/s, {:.0} items/s, {} errors; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.calls_per_second,
            self.items_per_second,
            self.errors,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
        )
    }
}

/// The clients of a run: one per connection, shared by the load tasks.
struct Clients {
    channels: Vec<Channel>,
    bearer: Bearer,
}

impl Clients {
    fn pick(&self, i: usize) -> (Client, HealthClient) {
        let channel = self.channels[i % self.channels.len()].clone();
        (
            TokenizerClient::with_interceptor(channel.clone(), self.bearer.clone()),
            HealthClient::new(channel),
        )
    }
}

/// Runs one level: `concurrency` tasks for warm-up plus `seconds`.
async fn measure(
    load: Load,
    concurrency: usize,
    clients: &Clients,
    tokens: &Arc<Vec<String>>,
    warmup: u64,
    seconds: u64,
) -> Result<Measured, String> {
    let from = Instant::now() + Duration::from_secs(warmup);
    let window = Window {
        from,
        stop: from + Duration::from_secs(seconds),
    };
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let (client, health) = clients.pick(i);
        tasks.push(tokio::spawn(worker(
            load,
            client,
            health,
            Arc::clone(tokens),
            window,
            i,
        )));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.map_err(|e| format!("a load task failed: {e}"))?;
        all.latencies_us.extend(t.latencies_us);
        all.items += t.items;
        all.errors += t.errors;
    }
    Ok(Measured::of(all, seconds))
}

/// Makes `count` tokens to detokenize, in batches of up to 1,000.
async fn make_tokens(clients: &Clients, count: usize) -> Result<Vec<String>, String> {
    let (mut client, _) = clients.pick(0);
    let mut tokens = Vec::with_capacity(count);
    while tokens.len() < count.max(1) {
        let n = (count.max(1) - tokens.len()).min(1000);
        let items = (0..n)
            .map(|_| {
                synthetic_pan().map(|pan| v1::TokenizeRequest {
                    pan,
                    ..Default::default()
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let response = client
            .tokenize_batch(v1::TokenizeBatchRequest { items })
            .await
            .map_err(|s| format!("setup tokenize failed: {s}"))?;
        for result in response.into_inner().results {
            match result.result {
                Some(v1::tokenize_result::Result::Token(t)) => tokens.push(t.token),
                _ => return Err("setup tokenize refused an item".to_owned()),
            }
        }
    }
    Ok(tokens)
}

/// Runs `tessera bench`.
pub async fn run(args: BenchArgs) -> ExitCode {
    if args.concurrency.contains(&0) || args.connections == 0 || args.duration == 0 {
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
    let clients = Clients { channels, bearer };
    let tokens = if matches!(args.rpc, BenchRpc::Detokenize | BenchRpc::Mixed) {
        match make_tokens(&clients, args.tokens).await {
            Ok(t) => t,
            Err(e) => return fail(&e),
        }
    } else {
        Vec::new()
    };
    let tokens = Arc::new(tokens);
    let load = Load {
        rpc: args.rpc,
        batch: args.batch,
        read_percent: args.read_percent,
    };
    let ceiling_load = Load {
        rpc: BenchRpc::Health,
        ..load
    };
    let rpc = format!("{:?}", args.rpc).to_lowercase();
    let mut runs = Vec::new();
    let mut lines = Vec::new();
    let mut errors = 0;
    for &concurrency in &args.concurrency {
        let level = |load| {
            measure(
                load,
                concurrency,
                &clients,
                &tokens,
                args.warmup,
                args.duration,
            )
        };
        let ceiling = if args.ceiling {
            match level(ceiling_load).await {
                Ok(m) => Some(m),
                Err(e) => return fail(&e),
            }
        } else {
            None
        };
        let measured = match level(load).await {
            Ok(m) => m,
            Err(e) => return fail(&e),
        };
        errors += measured.errors;
        let mut run = measured.json();
        run["concurrency"] = concurrency.into();
        lines.push(format!(
            "{rpc} at {concurrency} in flight: {}",
            measured.text()
        ));
        if let Some(ceiling) = ceiling {
            let ratio = measured.calls_per_second / ceiling.calls_per_second.max(f64::MIN_POSITIVE);
            run["ceiling"] = ceiling.json();
            run["ratio_to_ceiling"] = ratio.into();
            lines.push(format!(
                "  health at {concurrency} in flight: {} (ratio {:.1} %)",
                ceiling.text(),
                ratio * 100.0
            ));
        }
        runs.push(run);
    }
    let value = serde_json::json!({
        "rpc": rpc, "batch": args.batch, "connections": args.connections,
        "seconds": args.duration, "read_percent": (args.rpc == BenchRpc::Mixed).then_some(args.read_percent),
        "runs": runs,
    });
    let header = format!(
        "{rpc}: {}s per level, {} connections, batch {}",
        args.duration, args.connections, args.batch
    );
    let text = std::iter::once(header)
        .chain(lines)
        .collect::<Vec<_>>()
        .join("\n");
    let code = emit(args.conn.json, &value, &text);
    if errors > 0 { ExitCode::FAILURE } else { code }
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
        assert_eq!(percentile(&samples, 500), 51);
        assert_eq!(percentile(&samples, 990), 100);
        assert_eq!(percentile(&[], 990), 0);
        let many: Vec<u32> = (1..=10_000).collect();
        assert_eq!(percentile(&many, 999), 9_991);
    }
}
