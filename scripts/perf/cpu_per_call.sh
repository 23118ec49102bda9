#!/usr/bin/env bash
# The server's and the load generator's CPU (cores, from /proc/PID/stat over
# 4 s of load) and, with PERF=1 (default), a perf profile of the server in
# /tmp/perf-NAME.data. Divide cores by the rate for CPU per call.
#   PERF=0 scripts/perf/cpu_per_call.sh deploy/bench-fjall.toml tok --rpc tokenize --concurrency 64
set -u
cd "$(dirname "$0")/../.."
CONFIG=$1; NAME=$2; shift 2
DATA=/tmp/prof-data; rm -rf $DATA
BIN=target/release/tessera
env ${SERVER_ENV:-X=1} $BIN serve --dev --config $CONFIG --data-dir $DATA --listen 127.0.0.1:50061 > /tmp/prof-ready.txt 2>/tmp/prof-server.log &
SPID=$!
until grep -q "listening" /tmp/prof-ready.txt; do sleep 0.05; done
export TESSERA_API_KEY=$(python3 -c "import json;print(json.load(open('$DATA/dev-credentials.json'))['processor']['api_key'])")
$BIN bench --addr http://127.0.0.1:50061 --duration 14 "$@" > /tmp/prof-$NAME.txt 2>&1 &
BPID=$!
sleep 7
s0=$(awk '{print $14+$15}' /proc/$SPID/stat); c0=$(awk '{print $14+$15}' /proc/$BPID/stat); t0=$(date +%s.%N)
if [ "${PERF:-1}" = 1 ]; then perf record -F 299 --call-graph dwarf,16384 -o /tmp/perf-$NAME.data -p $SPID -- sleep 4 2>/dev/null >/dev/null; else sleep 4; fi
s1=$(awk '{print $14+$15}' /proc/$SPID/stat); c1=$(awk '{print $14+$15}' /proc/$BPID/stat); t1=$(date +%s.%N)
echo "server cpu cores: $(echo "($s1-$s0)/100/($t1-$t0)" | bc -l | cut -c1-5)  client cpu cores: $(echo "($c1-$c0)/100/($t1-$t0)" | bc -l | cut -c1-5)" > /tmp/prof-$NAME.cpu
wait $BPID
echo "rss_kb $(awk "/VmRSS/ {print \$2}" /proc/$SPID/status)" >> /tmp/prof-$NAME.cpu; kill -TERM $SPID; wait $SPID 2>/dev/null
cat /tmp/prof-$NAME.cpu; tail -5 /tmp/prof-$NAME.txt
