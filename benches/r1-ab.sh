#!/usr/bin/env bash
# Two or more broker binaries as a single node (R1), alternating run by run on a fresh
# data directory each time, all driven by one load generator (this checkout's
# `squall bench`, 4 producers x 4 consumers, 256 B, window 64, prefetch 64), then the
# broker's CPU from /proc/PID/stat. The single-node twin of benches/r3-ab.sh: quicker
# than benches/ab.sh (no builds of revisions) when the binaries are at hand. Only lines
# taken next to each other compare. Prints one line per run.
#
# Usage: benches/r1-ab.sh BINARY BINARY [BINARY...]
# Environment: ROUNDS (3), MESSAGES (300000), PORT (36701); ARGS: more `squall serve`
# flags for every run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 BINARY BINARY [BINARY...]" >&2; exit 64; }
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-300000}
PORT=${PORT:-36701}
cargo build --release -q --bin squall
LOADGEN=$(pwd)/target/release/squall
WORK=$(mktemp -d)
BROKER=""
cleanup() {
  [ -n "$BROKER" ] && kill -9 "$BROKER" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    rm -rf "$WORK"/*
    read -r -a extra <<<"${ARGS:-}"
    "$bin" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --http off \
      "${extra[@]}" >"$WORK/log" 2>&1 &
    BROKER=$!
    for _ in $(seq 200); do
      grep -q 'listening on' "$WORK/log" && break
      sleep 0.05
    done
    "$LOADGEN" bench --server "127.0.0.1:$PORT" --producers 4 --consumers 4 \
      --messages "$MESSAGES" --size 256 --window 64 --prefetch 64 --json >"$WORK/out.json"
    python3 - "$round" "$bin" "$WORK/out.json" "$MESSAGES" "$BROKER" <<'PY'
import json, sys
rnd, binary, out, n, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
cpu = (int(fields[11]) + int(fields[12])) / 100
d = json.load(open(out))
print(f"round {rnd} {binary}: {d['msgs_per_s']:,.0f} msgs/s, CPU per message "
      f"{cpu / n * 1e6:.1f} us, e2e p99 {d['end_to_end']['p99_us'] / 1000:.2f} ms, lost {d['lost']}")
PY
    kill -TERM "$BROKER" 2>/dev/null || true
    wait "$BROKER" 2>/dev/null || true
    BROKER=""
  done
done
