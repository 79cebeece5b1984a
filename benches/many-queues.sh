#!/bin/sh
# Publish and end-to-end latency, /metrics size and SIGTERM-to-exit time of a broker
# holding many idle queues (issue 19, fault 1).
#
#   QUEUES=100000 BIN=target/release/squall benches/many-queues.sh
#
# Starts `$BIN serve` (fsync never, grace 10 s) on a temporary directory, creates
# $QUEUES idle queues with one task each (benches/make-queues.py), waits 12 s so that
# the hub samples every queue's rates twice, runs `$BIN bench` against it (4 producers,
# 4 consumers, a fixed 2,000 msgs/s for 30 s), measures /metrics, then sends SIGTERM
# and times the exit.
set -eu
QUEUES=${QUEUES:-100000}
BIN=${BIN:-target/release/squall}
PORT=${PORT:-7660}
HTTP=$((PORT + 1))
here=$(dirname "$0")
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$BIN" serve --listen 127.0.0.1:$PORT --http 127.0.0.1:$HTTP --data-dir "$dir" \
    --fsync never --shutdown-grace 10s 2>"$dir.log" &
pid=$!
i=0
until curl -sf "http://127.0.0.1:$HTTP/readyz" >/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "broker did not start"; exit 1; }; sleep 0.1
done
start=$(date +%s.%N)
python3 "$here/make-queues.py" 127.0.0.1:$PORT "$QUEUES"
echo "created $QUEUES queues in $(echo "$(date +%s.%N) - $start" | bc) s"
sleep 12
"$BIN" bench --server 127.0.0.1:$PORT --producers 4 --consumers 4 --rate 2000 --duration 30s
bytes=$(curl -s "http://127.0.0.1:$HTTP/metrics" | wc -c)
echo "/metrics: $bytes bytes"
start=$(date +%s.%N)
kill -TERM "$pid"
wait "$pid" || true
echo "SIGTERM to exit: $(echo "$(date +%s.%N) - $start" | bc) s"
rm -f "$dir.log"
