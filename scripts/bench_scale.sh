#!/usr/bin/env bash
# Store-size scaling (BENCHMARKS.md, "Store size"): the same unary loads at a
# small store and after LOAD_SECONDS of batch tokenizing (millions of
# tokens), the server's RSS and store size at each, and the time from start
# to serving after a restart on the big store.
#
#   cargo build --release && scripts/bench_scale.sh [OUT]   # LOAD_SECONDS=400
set -u
cd "$(dirname "$0")/.."
OUT=${1:-bench-scale}
BIN=target/release/tessera
CONFIG=${CONFIG:-deploy/bench.toml}   # deploy/bench-fjall.toml for the fjall backend
DATA=${DATA:-/tmp/tessera-scale}
ADDR=http://127.0.0.1:50071
mkdir -p "$OUT"
rm -rf "$DATA"

# Start to serving: until the server prints its readiness line, which it does
# once the store is open and the listener bound.
start() {
    local t0 t1
    : >"$OUT/ready.txt"
    t0=$(date +%s.%N)
    "$BIN" serve --dev --config "$CONFIG" --data-dir "$DATA" --listen 127.0.0.1:50071 >"$OUT/ready.txt" 2>>"$OUT/server.log" &
    PID=$!
    until grep -q "^tessera listening on" "$OUT/ready.txt"; do sleep 0.005; done
    t1=$(date +%s.%N)
    echo "startup_to_serving_s $(echo "$t1 - $t0" | bc)" >>"$OUT/results.txt"
    TESSERA_API_KEY=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['processor']['api_key'])" "$DATA/dev-credentials.json")
    export TESSERA_API_KEY
}

measure() { # LABEL
    for rpc in health tokenize; do
        "$BIN" bench --rpc "$rpc" --addr "$ADDR" --duration 10 --json >"$OUT/$1-$rpc.json"
    done
    # 100,000 tokens made for the run, spread over the whole key space.
    "$BIN" bench --rpc detokenize --tokens 100000 --addr "$ADDR" --duration 10 --json >"$OUT/$1-detokenize.json"
    echo "$1 rss_kb $(awk '/VmRSS/ {print $2}' /proc/$PID/status)" >>"$OUT/results.txt"
    echo "$1 store_bytes $(du -sb "$DATA" | cut -f1)" >>"$OUT/results.txt"
}

: >"$OUT/results.txt"
start
"$BIN" bench --rpc tokenize --batch 1000 --concurrency 1 --duration 1 --warmup 0 --addr "$ADDR" --json >"$OUT/load-small.json"
measure small
"$BIN" bench --rpc tokenize --batch 1000 --concurrency 4 --duration "${LOAD_SECONDS:-400}" --warmup 0 --addr "$ADDR" --json >"$OUT/load-big.json"
measure big
kill -TERM "$PID"; wait "$PID" 2>/dev/null; sleep 2
start
echo "after_restart rss_kb $(awk '/VmRSS/ {print $2}' /proc/$PID/status)" >>"$OUT/results.txt"
measure restarted
kill -TERM "$PID"; wait "$PID" 2>/dev/null
cat "$OUT/results.txt"
