#!/usr/bin/env bash
# A/B of two builds, BASE (default /tmp/tessera-base) and target/release,
# alternating twice: health, then RPC at CONC in flight.
#   cp target/release/tessera /tmp/tessera-base; <change>; cargo build --release
#   scripts/perf/ab_binaries.sh deploy/bench-fjall.toml tokenize 64 [BATCH]
cd "$(dirname "$0")/../.."
for mode in base new base new; do
  if [ $mode = base ]; then BIN=${BASE:-/tmp/tessera-base}; else BIN=target/release/tessera; fi
  DATA=/tmp/ab-data; rm -rf $DATA
  $BIN serve --dev --config $1 --data-dir $DATA --listen 127.0.0.1:50063 > /tmp/ab-ready.txt 2>/dev/null &
  SPID=$!
  until grep -q "listening" /tmp/ab-ready.txt; do sleep 0.05; done
  export TESSERA_API_KEY=$(python3 -c "import json;print(json.load(open('$DATA/dev-credentials.json'))['processor']['api_key'])")
  h=$($BIN bench --addr http://127.0.0.1:50063 --duration 5 --rpc health --concurrency $3 | tail -1 | grep -o "[0-9]* calls/s")
  r=$($BIN bench --addr http://127.0.0.1:50063 --duration 8 --rpc $2 --concurrency $3 ${4:+--batch $4} | tail -1 | sed 's/.*in flight: //')
  echo "$mode health $h | $r"
  kill -TERM $SPID; wait $SPID
done
rm -rf /tmp/ab-data
