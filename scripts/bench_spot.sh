#!/bin/sh
# A quick A/B check of the unary hot paths: starts `serve --dev --config
# deploy/bench.toml` from BIN (default the release build) on a fresh data
# directory, runs tokenize and detokenize at 1 and 64 in flight with the
# health ceiling, and stops the server. Run several builds interleaved
# (BIN=/tmp/a scripts/bench_spot.sh; BIN=/tmp/b scripts/bench_spot.sh; …):
# this VM's ceiling moves by a factor of two between hours.
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-./target/release/tessera}
PORT=${PORT:-50071}
DATA=${DATA:-/tmp/tessera-spot}
. scripts/bench_lib.sh
serve deploy/bench.toml "$PORT" "$DATA"
for rpc in tokenize detokenize; do
    "$BIN" bench --addr "http://127.0.0.1:$PORT" --rpc "$rpc" --concurrency 1,64 --duration 10 --ceiling
done
kill "$SERVER"
wait "$SERVER" || true
