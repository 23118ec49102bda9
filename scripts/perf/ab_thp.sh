#!/usr/bin/env bash
# A/B of transparent huge pages (system-wide switch, root; restored to `always`
# after), alternating: health, RPC at CONC in flight, and the server's RSS.
# `serve` opts out of huge pages itself since commit 78fe75a, so point BIN at
# a build from before it to see the difference again.
#   BIN=/tmp/tessera-old scripts/perf/ab_thp.sh deploy/bench-fjall.toml tokenize 64
cd "$(dirname "$0")/../.." || exit 1
. scripts/perf/ab_round.sh
for mode in always never always never; do
  echo "$mode" >/sys/kernel/mm/transparent_hugepage/enabled
  ab_round "$mode" "${BIN:-target/release/tessera}" "$1" "$2" "$3" "${4:-}"
done
echo always >/sys/kernel/mm/transparent_hugepage/enabled
