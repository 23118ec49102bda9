# Sourced by the A/B scripts: one round on a fresh data directory.
#   ab_round LABEL BIN CONFIG RPC CONC [BATCH]
# starts BIN's dev server on CONFIG, measures health and then RPC at CONC in
# flight (5 s and 8 s), prints LABEL, both figures and the server's RSS, and
# stops the server.
ab_round() {
  local label=$1 bin=$2 config=$3 rpc=$4 conc=$5 batch=${6:-}
  local data=/tmp/ab-data addr=http://127.0.0.1:50063 spid health result
  rm -rf "$data"
  "$bin" serve --dev --config "$config" --data-dir "$data" --listen 127.0.0.1:50063 >/tmp/ab-ready.txt 2>/dev/null &
  spid=$!
  until grep -q "listening" /tmp/ab-ready.txt; do sleep 0.05; done
  TESSERA_API_KEY=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['processor']['api_key'])" "$data/dev-credentials.json")
  export TESSERA_API_KEY
  health=$("$bin" bench --addr "$addr" --duration 5 --rpc health --concurrency "$conc" | tail -1 | grep -o "[0-9]* calls/s")
  result=$("$bin" bench --addr "$addr" --duration 8 --rpc "$rpc" --concurrency "$conc" ${batch:+--batch "$batch"} | tail -1 | sed 's/.*in flight: //')
  echo "$label health $health | $result | rss $(($(awk '/VmRSS/ {print $2}' "/proc/$spid/status") / 1024)) MiB"
  kill -TERM "$spid"
  wait "$spid"
  rm -rf "$data"
}
