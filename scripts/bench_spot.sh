#!/bin/sh
# A quick A/B check of the unary hot paths: starts `serve --dev --config
# deploy/bench.toml` from BIN (default the release build) on a fresh data
# directory, runs tokenize and detokenize at 1 and 64 in flight with the
# health ceiling, and stops the server. Run several builds interleaved
# (BIN=/tmp/a scripts/bench_spot.sh; BIN=/tmp/b scripts/bench_spot.sh; …):
# this VM's ceiling moves by a factor of two between hours.
set -eu
BIN=${BIN:-./target/release/tessera}
PORT=${PORT:-50071}
DATA=${DATA:-/tmp/tessera-spot}
rm -rf "$DATA"
"$BIN" serve --dev --config deploy/bench.toml --data-dir "$DATA" --listen "127.0.0.1:$PORT" >"$DATA.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do
    [ -s "$DATA/dev-credentials.json" ] && "$BIN" bench --rpc health --addr "http://127.0.0.1:$PORT" \
        --duration 1 --warmup 0 --concurrency 1 >/dev/null 2>&1 && break
    sleep 0.1
done
TESSERA_API_KEY=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['processor']['api_key'])" "$DATA/dev-credentials.json")
export TESSERA_API_KEY
for rpc in tokenize detokenize; do
    "$BIN" bench --addr "http://127.0.0.1:$PORT" --rpc "$rpc" --concurrency 1,64 --duration 10 --ceiling
done
kill "$SERVER"
wait "$SERVER" || true
