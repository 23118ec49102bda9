#!/usr/bin/env bash
# SECONDS of batch tokenize (4 x 1,000 in flight, fjall), then 8 s of unary
# tokenize: the slowest call (a stalled batch shows as max) and the peak RSS.
# SERVER_ENV adds environment to the server; BIN picks the build.
#   scripts/perf/batch_stall.sh 60
cd "$(dirname "$0")/../.."
DATA=/tmp/stall-data; rm -rf $DATA
BIN=${BIN:-target/release/tessera}
env $SERVER_ENV $BIN serve --dev --config deploy/bench-fjall.toml --data-dir $DATA --listen 127.0.0.1:50066 > /tmp/stall-ready.txt 2>/tmp/stall-server.log &
SPID=$!
until grep -q "listening" /tmp/stall-ready.txt; do sleep 0.05; done
export TESSERA_API_KEY=$(python3 -c "import json;print(json.load(open('$DATA/dev-credentials.json'))['processor']['api_key'])")
( peak=0; while kill -0 $SPID 2>/dev/null; do r=$(awk '/VmRSS/ {print $2}' /proc/$SPID/status 2>/dev/null); [ -n "$r" ] && [ $r -gt $peak ] && peak=$r && echo $peak > /tmp/stall-peak; sleep 0.2; done ) &
$BIN bench --addr http://127.0.0.1:50066 --duration $1 --warmup 0 --rpc tokenize --batch 1000 --concurrency 4 | tail -1 | sed 's/.*flight: //'
$BIN bench --addr http://127.0.0.1:50066 --duration 8 --warmup 0 --rpc tokenize --concurrency 64 | tail -1 | sed 's/.*flight: //'
echo "peak rss $(( $(cat /tmp/stall-peak) / 1024 )) MiB"
kill -TERM $SPID; wait $SPID; rm -rf $DATA
