#!/bin/sh
# Start-up time against the number of retained results (issue 19).
#
#   BIN=target/release/squall COUNTS="0 100000 1000000" benches/startup.sh
#
# For each count: a fresh data directory, a broker (fsync never), `$BIN bench` with
# that many messages published, delivered and acked (each ack keeps a succeeded
# record for the queue's result_ttl, 1 h by default), then two restarts: after a
# SIGTERM (clean: everything checkpointed) and after a kill -9 (the journal since the
# last checkpoint is replayed). Prints the seconds from exec to /readyz answering 200
# and the broker's own `startup_ms` (recovery) from its log.
set -eu
BIN=${BIN:-target/release/squall}
COUNTS=${COUNTS:-"0 100000 1000000"}
PORT=${PORT:-7680}
HTTP=$((PORT + 1))

serve() {
    "$BIN" serve --listen 127.0.0.1:$PORT --http 127.0.0.1:$HTTP --data-dir "$dir" \
        --fsync never 2>"$dir.log" &
    pid=$!
    start=$(date +%s.%N)
    until curl -sf "http://127.0.0.1:$HTTP/readyz" >/dev/null; do sleep 0.02; done
    ready=$(echo "$(date +%s.%N) - $start" | bc)
    ms=$(grep -o 'startup_ms=[0-9]*' "$dir.log" | tail -1 | cut -d= -f2)
}

for n in $COUNTS; do
    dir=$(mktemp -d)
    serve
    if [ "$n" -gt 0 ]; then
        "$BIN" bench --server 127.0.0.1:$PORT --messages "$n" --producers 4 \
            --consumers 4 --json >/dev/null
    fi
    kill -TERM $pid; wait $pid || true
    serve
    echo "retained=$n after SIGTERM: ready in ${ready}s (startup_ms=$ms), data $(du -sm "$dir" | cut -f1) MiB"
    kill -9 $pid; wait $pid 2>/dev/null || true
    serve
    echo "retained=$n after kill -9:  ready in ${ready}s (startup_ms=$ms)"
    kill -TERM $pid; wait $pid || true
    rm -rf "$dir" "$dir.log"
done
