#!/usr/bin/env bash
# Memory, disk and recovery with a large backlog: fills a fresh broker with TASKS queued
# tasks of SIZE bytes (nobody consumes), then reports the broker's RSS, the data
# directory's size against the payload bytes, and the time from start to ready when the
# broker restarts on that data (the recovery scan).
#
# Usage: benches/capacity.sh     Environment: TASKS (1000000), SIZE (256).
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-1000000}
SIZE=${SIZE:-256}

cargo build --release --quiet
SQUALL=$PWD/target/release/squall
WORK=$(mktemp -d)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT

# Starts the broker; sets PID; writes milliseconds from exec to its "listening" line
# to $WORK/ready_ms.
start() {
  local t0 t1
  t0=$(date +%s%N)
  "$SQUALL" serve --listen "$ADDR" --http off --data-dir "$WORK/data" >"$WORK/log" 2>&1 &
  PID=$!
  until grep -q "listening on" "$WORK/log" 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/log" >&2; exit 1; }
    sleep 0.01
  done
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000000 )) >"$WORK/ready_ms"
}
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }

start
EMPTY_RSS=$(rss_kib)
echo "filling $TASKS × $SIZE B..." >&2
"$SQUALL" bench --server "$ADDR" --consumers 0 --producers 2 --messages "$TASKS" \
  --size "$SIZE" --batch 500 --window 8 --json >"$WORK/fill.json"
FILLED_RSS=$(rss_kib)
stop
DATA_BYTES=$(du -sb "$WORK/data" | cut -f1)
start
READY_MS=$(cat "$WORK/ready_ms")
RECOVERED_RSS=$(rss_kib)
RECOVERY_LOG=$(grep -o 'recovered_tasks=[0-9]*' "$WORK/log" | head -1)
stop

python3 - "$TASKS" "$SIZE" "$EMPTY_RSS" "$FILLED_RSS" "$RECOVERED_RSS" "$DATA_BYTES" "$READY_MS" "$RECOVERY_LOG" "$WORK/fill.json" <<'PY'
import json, sys
tasks, size, empty, filled, recovered, data, ready, rec, fill = sys.argv[1:]
tasks, size = int(tasks), int(size)
empty, filled, recovered, data, ready = (int(x) for x in (empty, filled, recovered, data, ready))
payload = tasks * size
f = json.load(open(fill))
print(f"| measure | value |")
print(f"| --- | ---: |")
print(f"| tasks queued ({size} B each) | {tasks:,} (filled at {f['msgs_per_s']:,.0f} msgs/s) |")
print(f"| broker RSS, empty | {empty/1024:.1f} MiB |")
print(f"| broker RSS after the fill | {filled/1024:.1f} MiB ({(filled-empty)*1024/tasks:.0f} B per task over empty) |")
print(f"| broker RSS after restart (index rebuilt, cold cache) | {recovered/1024:.1f} MiB ({(recovered-empty)*1024/tasks:.0f} B per task over empty) |")
print(f"| data directory | {data/2**20:.1f} MiB = {data/payload:.2f}× the payload bytes |")
print(f"| start to ready with {tasks:,} tasks stored ({rec}) | {ready/1000:.2f} s |")
PY
