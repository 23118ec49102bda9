#!/usr/bin/env bash
# Per thread name: time running and time waiting for a core (schedstat, over
# 4 s of load, server and load generator together); NICE renices the
# committer thread when it has its own thread (0: leave it).
#   scripts/perf/sched.sh deploy/bench-fjall.toml 0 --rpc detokenize --concurrency 64
cd "$(dirname "$0")/../.."
CONFIG=$1; NICE=$2; shift 2
DATA=/tmp/sched-data; rm -rf $DATA
BIN=target/release/tessera
$BIN serve --dev --config $CONFIG --data-dir $DATA --listen 127.0.0.1:50065 > /tmp/sched-ready.txt 2>/dev/null &
SPID=$!
until grep -q "listening" /tmp/sched-ready.txt; do sleep 0.05; done
export TESSERA_API_KEY=$(python3 -c "import json;print(json.load(open('$DATA/dev-credentials.json'))['processor']['api_key'])")
$BIN bench --addr http://127.0.0.1:50065 --duration 12 "$@" > /tmp/sched-bench.txt 2>&1 &
BPID=$!
sleep 2
for t in /proc/$SPID/task/*; do
  if [ "$(cat $t/comm)" = tessera-commit ] && [ "$NICE" != 0 ]; then renice -n $NICE -p $(basename $t) >/dev/null; fi
done
sleep 3
snap() { for t in /proc/$SPID/task/* /proc/$BPID/task/*; do echo "$(basename $t) $(cat $t/comm | tr ' ' _) $(cat $t/schedstat)"; done; }
snap > /tmp/s0; sleep 4; snap > /tmp/s1
wait $BPID; tail -1 /tmp/sched-bench.txt
kill -TERM $SPID; wait $SPID; rm -rf $DATA
python3 - <<'P'
a={l.split()[0]:l.split() for l in open('/tmp/s0')}
agg={}
for l in open('/tmp/s1'):
    f=l.split()
    if f[0] not in a: continue
    g=a[f[0]]
    run=(int(f[2])-int(g[2]))/4e9; wait=(int(f[3])-int(g[3]))/4e9; sl=int(f[4])-int(g[4])
    k=f[1]
    r=agg.setdefault(k,[0,0,0,0]); r[0]+=run; r[1]+=wait; r[2]+=sl; r[3]+=1
for k,(run,wait,sl,n) in sorted(agg.items(), key=lambda x:-x[1][0]):
    if run>0.005: print(f"{k:18s} threads {n:2d}  running {run:5.3f}  waiting-for-cpu {wait:5.3f}  slices/s {sl/4:8.0f}")
P
