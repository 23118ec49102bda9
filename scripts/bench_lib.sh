# Sourced by the bench scripts: `serve CONFIG PORT DATA` starts a fresh
# `tessera serve --dev` from $BIN (any TESSERA__… variables in the
# environment apply), waits until it answers, and exports the dev
# processor's key as TESSERA_API_KEY; the server's pid is in SERVER.
serve() { # CONFIG PORT DATA
    rm -rf "$3"
    "$BIN" serve --dev --config "$1" --data-dir "$3" --listen "127.0.0.1:$2" >"$3.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do
        [ -s "$3/dev-credentials.json" ] && "$BIN" bench --rpc health --addr "http://127.0.0.1:$2" \
            --duration 1 --warmup 0 --concurrency 1 >/dev/null 2>&1 && break
        sleep 0.1
    done
    TESSERA_API_KEY=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['processor']['api_key'])" "$3/dev-credentials.json")
    export TESSERA_API_KEY
}
