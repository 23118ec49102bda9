#!/usr/bin/env bash
# A/B of two builds, BASE (default /tmp/tessera-base) and target/release,
# alternating twice: health, then RPC at CONC in flight.
#   cp target/release/tessera /tmp/tessera-base; <change>; cargo build --release
#   scripts/perf/ab_binaries.sh deploy/bench-fjall.toml tokenize 64 [BATCH]
cd "$(dirname "$0")/../.." || exit 1
. scripts/perf/ab_round.sh
for mode in base new base new; do
  if [ "$mode" = base ]; then bin=${BASE:-/tmp/tessera-base}; else bin=target/release/tessera; fi
  ab_round "$mode" "$bin" "$1" "$2" "$3" "${4:-}"
done
