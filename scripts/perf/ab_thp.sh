#!/usr/bin/env bash
# A/B of transparent huge pages (system-wide switch, root; restored to `always`
# after), alternating: health, RPC at CONC in flight, and the server's RSS.
#   scripts/perf/ab_thp.sh deploy/bench-fjall.toml tokenize 64
cd "$(dirname "$0")/../.."
BIN=target/release/tessera
for mode in always never always never; do
  echo $mode > /sys/kernel/mm/transparent_hugepage/enabled
  DATA=/tmp/ab-data; rm -rf $DATA
  $BIN serve --dev --config $1 --data-dir $DATA --listen 127.0.0.1:50063 > /tmp/ab-ready.txt 2>/dev/null &
  SPID=$!
  until grep -q "listening" /tmp/ab-ready.txt; do sleep 0.05; done
  export TESSERA_API_KEY=$(python3 -c "import json;print(json.load(open('$DATA/dev-credentials.json'))['processor']['api_key'])")
  h=$($BIN bench --addr http://127.0.0.1:50063 --duration 5 --rpc health --concurrency $3 | tail -1 | grep -o "[0-9]* calls/s")
  r=$($BIN bench --addr http://127.0.0.1:50063 --duration 8 --rpc $2 --concurrency $3 ${4:+--batch $4} | tail -1 | sed 's/.*in flight: //')
  echo "$mode health $h | $r | rss $(( $(awk '/VmRSS/ {print $2}' /proc/$SPID/status) / 1024 )) MiB"
  kill -TERM $SPID; wait $SPID
done
echo always > /sys/kernel/mm/transparent_hugepage/enabled
rm -rf /tmp/ab-data
