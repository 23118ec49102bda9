#!/usr/bin/env bash
# FLOOD seconds of batch tokenize (4 x 1,000 in flight) on a fresh fjall
# store, then the server's RSS every 5 s for 30 s of idle, then 10 s each of
# unary tokenize and detokenize at 64 in flight and the RSS again. Shows
# whether memory comes back once the writes stop (BENCHMARKS.md, "What the
# RSS is"). SERVER_ENV adds environment to the server; BIN picks the build.
#   FLOOD=45 scripts/perf/rss_after_flood.sh
cd "$(dirname "$0")/../.."
DATA=/tmp/flood-data; rm -rf $DATA
BIN=${BIN:-target/release/tessera}
ADDR=http://127.0.0.1:50069
env $SERVER_ENV $BIN serve --dev --config deploy/bench-fjall.toml --data-dir $DATA --listen 127.0.0.1:50069 > /tmp/flood-ready.txt 2>/tmp/flood-server.log &
SPID=$!
until grep -q "listening" /tmp/flood-ready.txt; do sleep 0.05; done
export TESSERA_API_KEY=$(python3 -c "import json;print(json.load(open('$DATA/dev-credentials.json'))['processor']['api_key'])")
rss() { echo "$1: $(grep -E 'VmRSS|RssAnon|RssFile|Threads' /proc/$SPID/status | tr -s ' \t\n' ' ')"; }
$BIN bench --addr $ADDR --duration ${FLOOD:-60} --warmup 0 --rpc tokenize --batch 1000 --concurrency 4 | tail -1 | sed 's/.*flight: //'
rss "flood end"
for _ in 1 2 3 4 5 6; do sleep 5; rss "idle"; done
$BIN bench --addr $ADDR --duration 10 --warmup 0 --rpc tokenize --concurrency 64 | tail -1 | sed 's/.*flight: //'
$BIN bench --addr $ADDR --duration 10 --warmup 0 --rpc detokenize --tokens 100000 --concurrency 64 | tail -1 | sed 's/.*flight: //'
rss "after the unary loads"
kill -TERM $SPID; wait $SPID; rm -rf $DATA
