#!/usr/bin/env bash
# The scale run's unary loads on a copy of a big store (STORE, a data
# directory left by scripts/bench_scale.sh): 10 s of tokenize and 10 s of
# detokenize at 64 in flight, then the server's RSS. SERVER_ENV adds
# environment to the server (e.g. TESSERA__STORE__CACHE_MB=32); BIN picks
# the build; WRAP runs the server under a profiler (e.g. "heaptrack -o /tmp/h").
#   STORE=/tmp/tessera-scale scripts/perf/rss_on_store.sh
cd "$(dirname "$0")/../.."
DATA=/tmp/rss-on-store; rm -rf $DATA; cp -a "${STORE:-/tmp/tessera-scale}" $DATA
BIN=${BIN:-target/release/tessera}
ADDR=http://127.0.0.1:50068
[ -n "$SERVER_ENV" ] && export $SERVER_ENV
$WRAP $BIN serve --dev --config deploy/bench-fjall.toml --data-dir $DATA --listen 127.0.0.1:50068 > /tmp/rss-on-store-ready.txt 2>/tmp/rss-on-store.log &
until grep -q "listening" /tmp/rss-on-store-ready.txt; do sleep 0.05; done
SPID=$(pgrep -f "listen 127.0.0.1:50068" | tail -1)
export TESSERA_API_KEY=$(python3 -c "import json;print(json.load(open('$DATA/dev-credentials.json'))['processor']['api_key'])")
$BIN bench --addr $ADDR --duration ${SECS:-10} --warmup 0 --rpc tokenize --concurrency 64 | tail -1 | sed 's/.*flight: //'
$BIN bench --addr $ADDR --duration ${SECS:-10} --warmup 0 --rpc detokenize --tokens 100000 --concurrency 64 | tail -1 | sed 's/.*flight: //'
echo "rss $(( $(awk '/VmRSS/ {print $2}' /proc/$SPID/status) / 1024 )) MiB"
kill -TERM $SPID; while kill -0 $SPID 2>/dev/null; do sleep 0.2; done; rm -rf $DATA
