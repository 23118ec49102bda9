#!/usr/bin/env bash
# The target's unary loads on a fresh fjall store, twice over: 10 s of
# tokenize, then 10 s of detokenize over 100,000 tokens, each at 64 in
# flight; the server's RSS at the end and its peak (sampled every 0.2 s).
# SERVER_ENV adds environment to the server; BIN picks the build.
#   scripts/perf/unary_rss.sh
cd "$(dirname "$0")/../.."
DATA=/tmp/unary-rss-data; rm -rf $DATA
BIN=${BIN:-target/release/tessera}
ADDR=http://127.0.0.1:50067
env $SERVER_ENV $BIN serve --dev --config deploy/bench-fjall.toml --data-dir $DATA --listen 127.0.0.1:50067 > /tmp/unary-rss-ready.txt 2>/tmp/unary-rss-server.log &
SPID=$!
until grep -q "listening" /tmp/unary-rss-ready.txt; do sleep 0.05; done
export TESSERA_API_KEY=$(python3 -c "import json;print(json.load(open('$DATA/dev-credentials.json'))['processor']['api_key'])")
( peak=0; while kill -0 $SPID 2>/dev/null; do r=$(awk '/VmRSS/ {print $2}' /proc/$SPID/status 2>/dev/null); [ -n "$r" ] && [ $r -gt $peak ] && peak=$r && echo $peak > /tmp/unary-rss-peak; sleep 0.2; done ) &
for _ in 1 2; do
    $BIN bench --addr $ADDR --duration 10 --warmup 0 --rpc tokenize --concurrency 64 | tail -1 | sed 's/.*flight: //'
    $BIN bench --addr $ADDR --duration 10 --warmup 0 --rpc detokenize --tokens 100000 --concurrency 64 | tail -1 | sed 's/.*flight: //'
done
echo "rss at the end $(( $(awk '/VmRSS/ {print $2}' /proc/$SPID/status) / 1024 )) MiB, peak $(( $(cat /tmp/unary-rss-peak) / 1024 )) MiB"
kill -TERM $SPID; wait $SPID; rm -rf $DATA
