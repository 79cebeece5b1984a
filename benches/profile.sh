#!/usr/bin/env bash
# Where a message's CPU goes: runs one broker binary under a profiler while this
# checkout's `squall bench` drives it (4 producers, 4 consumers, 256 B, window 64,
# prefetch 64, one ack per message), then stops it with SIGTERM.
#   perf       `perf record -e cpu-clock -g` on the broker for 4 s of the run (hardware
#              counters are not available on this VM; cpu-clock works); prints msgs/s
#              and the broker's CPU per message from /proc/PID/stat. Read with
#              `perf report -i OUT.perf --no-children --sort comm,sym -g none`.
#   callgrind  the whole broker under `valgrind --tool=callgrind` (instruction counts:
#              repeatable on a shared machine, where CPU times are not). The run
#              includes start-up and the final checkpoint at shutdown. Read with
#              `callgrind_annotate --inclusive=yes OUT.cg`.
#
# Usage: benches/profile.sh perf|callgrind BROKER_BINARY OUT [MESSAGES]
#        (MESSAGES: 300000 for perf, 20000 for callgrind by default)
# Needs: perf or valgrind; a release build of this checkout (the load generator).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 perf|callgrind BROKER_BINARY OUT [MESSAGES]" >&2; exit 64; }
MODE=$1
BIN=$(realpath "$2")
OUT=$3
case "$MODE" in
  perf) N=${4:-300000} ;;
  callgrind) N=${4:-20000} ;;
  *) echo "unknown mode $MODE" >&2; exit 64 ;;
esac
cargo build --release -q --bin squall
BENCH=$(pwd)/target/release/squall
WORK=$(mktemp -d)
BROKER=""
cleanup() {
  [ -n "$BROKER" ] && kill "$BROKER" 2>/dev/null && wait "$BROKER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

SERVE=("$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --http off)
if [ "$MODE" = callgrind ]; then
  valgrind --tool=callgrind --callgrind-out-file="$OUT.cg" "${SERVE[@]}" >"$WORK/log" 2>&1 &
else
  "${SERVE[@]}" >"$WORK/log" 2>&1 &
fi
BROKER=$!
ADDR=""
for _ in $(seq 1200); do
  ADDR=$(grep -o 'listening on [0-9.:]*' "$WORK/log" | head -1 | cut -d' ' -f3 || true)
  [ -n "$ADDR" ] && break
  sleep 0.05
done
[ -n "$ADDR" ] || { echo "the broker did not start:" >&2; cat "$WORK/log" >&2; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$BROKER/stat"; }
before=$(cpu)
"$BENCH" bench --server "$ADDR" --producers 4 --consumers 4 --messages "$N" --size 256 \
  --window 64 --prefetch 64 --json >"$OUT.json" &
LOADGEN=$!
if [ "$MODE" = perf ]; then
  sleep 0.5
  perf record -e cpu-clock -F 1999 -g -p "$BROKER" -o "$OUT.perf" -- sleep 4 >/dev/null 2>&1 || true
fi
wait "$LOADGEN"
after=$(cpu)
kill -TERM "$BROKER"
wait "$BROKER" 2>/dev/null || true
BROKER=""
python3 - "$OUT.json" "$before" "$after" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
ticks = float(sys.argv[3]) - float(sys.argv[2])
print(f"{run['msgs_per_s']:,.0f} msgs/s, broker CPU {ticks / 100 / run['confirmed'] * 1e6:.1f} µs "
      f"per message, lost {run['lost']}; load average {open('/proc/loadavg').read().split()[0]}")
PY
