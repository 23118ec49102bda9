#!/bin/sh
# Tokenize and detokenize at 1 and 64 in flight, and batches of 1,000, on
# the PostgreSQL backend: `serve --dev --config deploy/bench.toml` with
# TESSERA__STORE__URL (default: a local cluster on port 55432 with the
# database `vault`, fsync on). Start PostgreSQL first, e.g. as the postgres
# user: initdb -D /tmp/pgb/data -A trust && pg_ctl -D /tmp/pgb/data -o
# "-p 55432 -c listen_addresses=127.0.0.1" start && createdb -h 127.0.0.1
# -p 55432 vault. The database must be empty or migrated.
set -eu
BIN=${BIN:-./target/release/tessera}
PORT=${PORT:-50072}
DATA=${DATA:-/tmp/tessera-pgbench}
TESSERA__STORE__URL=${TESSERA__STORE__URL:-"host=127.0.0.1 port=55432 user=postgres dbname=vault"}
export TESSERA__STORE__URL TESSERA__STORE__BACKEND=postgres TESSERA__STORE__MIGRATE=true
cd "$(dirname "$0")/.."
. scripts/bench_lib.sh
serve deploy/bench.toml "$PORT" "$DATA"
for rpc in tokenize detokenize; do
    "$BIN" bench --addr "http://127.0.0.1:$PORT" --rpc "$rpc" --concurrency 1,64 --duration 10 --ceiling
done
"$BIN" bench --addr "http://127.0.0.1:$PORT" --rpc tokenize --batch 1000 --concurrency 4 --duration 10
kill "$SERVER"
wait "$SERVER" || true
