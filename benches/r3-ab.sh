#!/usr/bin/env bash
# Two builds of the broker as a 3-member cluster (R3), alternating run by run on a
# fresh cluster each time: one saturating 4 producers x 4 consumers `squall bench`
# (each build's own), then each member's CPU from /proc/PID/stat. For comparing
# replication changes where a whole `benches/cluster.sh` run per build would take too
# long; the machine's drift over minutes is larger than most single changes, so only
# pairs taken next to each other mean anything. Prints one line per run.
#
# Usage: benches/r3-ab.sh OLD_BINARY NEW_BINARY
# Environment: ROUNDS (3), MESSAGES (100000), WINDOW (64), BASE_PORT (33600); OLD_ARGS and
# NEW_ARGS: more `squall serve` flags for every member of the old / new runs (the same
# binary twice compares two settings, e.g. NEW_ARGS="--queue-result-ttl 0").
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 64; }
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
BASE=${BASE_PORT:-33600}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
PEERS="1@127.0.0.1:$((BASE + 101)),2@127.0.0.1:$((BASE + 102)),3@127.0.0.1:$((BASE + 103))"

run() { # LABEL BINARY EXTRA_FLAGS
  local bin=$2
  local -a extra
  read -r -a extra <<<"$3"
  rm -rf "$WORK"/*
  PIDS=()
  for i in 1 2 3; do
    RUST_LOG=warn "$bin" serve --data-dir "$WORK/d$i" --listen "127.0.0.1:$((BASE + i))" \
      --http off --fsync always --node-id "$i" --cluster-listen "127.0.0.1:$((BASE + 100 + i))" \
      --peers "$PEERS" "${extra[@]}" >"$WORK/log$i" 2>&1 &
    PIDS+=($!)
  done
  local leader=""
  for _ in $(seq 200); do
    leader=$("$bin" cluster status --json --node "127.0.0.1:$((BASE + 101))" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader") or "")' 2>/dev/null || true)
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "$1: no leader elected" >&2; exit 1; }
  "$bin" bench --server "127.0.0.1:$((BASE + leader))" --producers 4 --consumers 4 \
    --messages "$MESSAGES" --size 256 --window "${WINDOW:-64}" --prefetch 64 --json >"$WORK/out.json"
  python3 - "$1" "$WORK/out.json" "$MESSAGES" "$leader" "${PIDS[@]}" <<'PY'
import json, sys
label, out, n, leader = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cpu = []
for pid in sys.argv[5:]:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu.append((int(fields[11]) + int(fields[12])) / 100)
us = [c / n * 1e6 for c in cpu]
followers = [u for i, u in enumerate(us, 1) if i != leader]
rate = json.load(open(out))["msgs_per_s"]
print(f"{label}: {rate:,.0f} msgs/s, CPU per message {sum(us):.1f} us "
      f"(leader {us[leader - 1]:.1f}, followers {followers[0]:.1f} / {followers[1]:.1f})")
PY
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

for round in $(seq "$ROUNDS"); do
  run "round $round old" "$1" "${OLD_ARGS:-}"
  run "round $round new" "$2" "${NEW_ARGS:-}"
done
