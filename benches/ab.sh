#!/usr/bin/env bash
# What a change gained, measured side by side in one run: builds the broker at each
# given git revision (in temporary worktrees, sharing one target directory), then drives
# each build with the same load generator (this checkout's `squall bench`) through the
# same workloads, alternating builds round after round so that a noisy moment of the
# machine does not land on one build only. Prints one markdown table.
#
# Usage: benches/ab.sh REV [REV...]       e.g. benches/ab.sh HEAD~3 HEAD
# Environment: ROUNDS (2), MESSAGES (50000), RATE (1000), RATE_MESSAGES (10000),
#              AB_DIR (where builds and worktrees go; default target/ab).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 REV [REV...]" >&2; exit 64; }
ROUNDS=${ROUNDS:-2}
MESSAGES=${MESSAGES:-50000}
RATE=${RATE:-1000}
RATE_MESSAGES=${RATE_MESSAGES:-10000}
ROOT=$(pwd)
AB_DIR=${AB_DIR:-$ROOT/target/ab}
mkdir -p "$AB_DIR"
WORK=$(mktemp -d)
BROKER=""
cleanup() {
  [ -n "$BROKER" ] && kill "$BROKER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building the load generator (this checkout, release)..." >&2
cargo build --release -q --bin squall
BENCH=$ROOT/target/release/squall

REVS=()
for rev in "$@"; do
  sha=$(git rev-parse --short "$rev")
  REVS+=("$sha")
  if [ ! -x "$AB_DIR/squall-$sha" ]; then
    echo "building $rev ($sha)..." >&2
    git worktree add -f -q --detach "$AB_DIR/wt-$sha" "$sha"
    (cd "$AB_DIR/wt-$sha" && CARGO_TARGET_DIR="$AB_DIR/target" cargo build --release -q --bin squall)
    cp "$AB_DIR/target/release/squall" "$AB_DIR/squall-$sha"
    git worktree remove --force "$AB_DIR/wt-$sha"
  fi
done

# Starts build $1 on a fresh directory; sets BROKER and ADDR.
start() {
  rm -rf "$WORK/data"
  "$AB_DIR/squall-$1" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --http off \
    >"$WORK/log" 2>&1 &
  BROKER=$!
  for _ in $(seq 200); do
    ADDR=$(grep -o 'listening on [0-9.:]*' "$WORK/log" | head -1 | cut -d' ' -f3 || true)
    [ -n "$ADDR" ] && return 0
    sleep 0.05
  done
  echo "build $1 did not start:" >&2; cat "$WORK/log" >&2; exit 1
}
# CPU seconds (user + system) of the broker so far.
cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$BROKER/stat"; }
stop() { kill -TERM "$BROKER"; wait "$BROKER" 2>/dev/null || true; BROKER=""; }

for round in $(seq "$ROUNDS"); do
  for sha in "${REVS[@]}"; do
    echo "round $round: $sha throughput..." >&2
    start "$sha"
    "$BENCH" bench --server "$ADDR" --producers 4 --consumers 4 --messages "$MESSAGES" \
      --size 256 --window 64 --prefetch 64 --json > "$WORK/r$round-$sha-tp.json"
    cpu > "$WORK/r$round-$sha-tp.cpu"
    stop
    echo "round $round: $sha at $RATE msgs/s..." >&2
    start "$sha"
    "$BENCH" bench --server "$ADDR" --producers 1 --consumers 1 --messages "$RATE_MESSAGES" \
      --size 256 --rate "$RATE" --prefetch 64 --json > "$WORK/r$round-$sha-rate.json"
    stop
  done
done

python3 - "$WORK" "$ROUNDS" "${REVS[@]}" <<'PY'
import json, os, sys, subprocess, datetime, platform
work, rounds, revs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ms = lambda us: f"{us/1000:.2f}"
print(f"Measured {datetime.date.today()} on {platform.node()} ({os.cpu_count()} cores); "
      f"{rounds} rounds, builds alternating; load generator: this checkout's `squall bench`.\n")
print("| build | round | 4×4, 50k × 256 B: msgs/s | broker CPU per message | e2e p50 / p99 (ms) "
      "| fixed rate: e2e p50 / p90 / p99 / p99.9 (ms) | lost |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for sha in revs:
    subject = subprocess.run(["git", "log", "-1", "--format=%s", sha], capture_output=True,
                             text=True).stdout.strip()[:60]
    for r in range(1, rounds + 1):
        tp = json.load(open(f"{work}/r{r}-{sha}-tp.json"))
        rate = json.load(open(f"{work}/r{r}-{sha}-rate.json"))
        cpu = float(open(f"{work}/r{r}-{sha}-tp.cpu").read())
        e, f = tp["end_to_end"], rate["end_to_end"]
        name = f"`{sha}` {subject}" if r == 1 else ""
        print(f"| {name} | {r} | {tp['msgs_per_s']:,.0f} | {cpu / tp['confirmed'] * 1e6:.0f} µs "
              f"| {ms(e['p50_us'])} / {ms(e['p99_us'])} | {ms(f['p50_us'])} / {ms(f['p90_us'])} / "
              f"{ms(f['p99_us'])} / {ms(f['p999_us'])} | {tp['lost'] + rate['lost']} |")
PY
