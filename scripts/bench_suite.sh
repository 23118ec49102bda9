#!/usr/bin/env bash
# Runs every end-to-end figure of BENCHMARKS.md against fresh release-build
# servers on this machine and writes one `tessera bench --json` report per
# load into OUT (default bench-results/), plus plot.svg.
#
#   cargo build --release && scripts/bench_suite.sh [OUT]
#   CONFIG=deploy/bench-fjall.toml SLOW_CONFIG=deploy/bench-fjall-slow-disk.toml \
#       scripts/bench_suite.sh OUT        # the same on the fjall backend
#
# Each server is `serve --dev` (sled by default, dev KMS, audit on,
# plaintext loopback) with deploy/bench.toml's load-test limits; the
# slow-disk run adds 1.5 ms to every commit's flush.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-results}
BIN=target/release/tessera
SECONDS_PER_LEVEL=${SECONDS_PER_LEVEL:-10}
CONFIG=${CONFIG:-deploy/bench.toml}   # deploy/bench-fjall.toml for the fjall backend
SLOW_CONFIG=${SLOW_CONFIG:-deploy/bench-slow-disk.toml}   # deploy/bench-fjall-slow-disk.toml for fjall
mkdir -p "$OUT"

# shellcheck source=scripts/bench_lib.sh
. scripts/bench_lib.sh

bench() { # NAME PORT ARGS...
    local name=$1 port=$2
    shift 2
    echo "== $name: tessera bench $*" >&2
    "$BIN" bench --addr "http://127.0.0.1:$port" --duration "$SECONDS_PER_LEVEL" --json "$@" >"$OUT/$name.json"
}

serve "$CONFIG" 50061 /tmp/tessera-bench
bench tokenize 50061 --rpc tokenize --concurrency 1,8,64,256 --ceiling
bench detokenize 50061 --rpc detokenize --concurrency 1,8,64,256 --ceiling
bench mixed 50061 --rpc mixed --read-percent 80 --concurrency 64 --ceiling
bench tokenize-batch 50061 --rpc tokenize --batch 1000 --concurrency 4 --ceiling
bench detokenize-batch 50061 --rpc detokenize --batch 1000 --concurrency 4 --ceiling
kill "$SERVER"; wait "$SERVER" || true

serve "$SLOW_CONFIG" 50062 /tmp/tessera-bench-slow
bench slow-disk-tokenize 50062 --rpc tokenize --concurrency 64 --ceiling
bench slow-disk-detokenize 50062 --rpc detokenize --concurrency 64 --ceiling
kill "$SERVER"; wait "$SERVER" || true

python3 scripts/bench_plot.py "$OUT/plot.svg" "$OUT/tokenize.json" "$OUT/detokenize.json"
echo "reports and plot.svg in $OUT" >&2
