#!/usr/bin/env bash
# A replicated 3-node cluster (R3) beside one node (R1), side by side in one run
# (issue 15's figures): both at `--fsync always`, on loopback, driven by this checkout's
# `squall bench` with the same workloads as benches/ab.sh — a saturating 4 producers x
# 4 consumers run and a fixed-rate run (1 producer, 1 consumer) — alternating R1 and R3
# round after round. The cluster's clients are given one member and follow the leader.
# Broker CPU is the sum over the members. The saturating run is repeated for each
# producer window in WINDOWS (publishes in flight per producer), R1 and R3 alike.
# Prints one markdown table, the medians, and each round's R3/R1 ratio (a round's R1
# and R3 run within a minute of each other, so their ratio is less moved by the
# machine's drift than the ratio of medians).
#
# Usage: cargo build --release --bin squall && benches/cluster.sh
# Environment: ROUNDS (3), MESSAGES (50000), WINDOWS ("64"), RATE (1000),
#              RATE_MESSAGES (10000), SQUALL_BIN (target/release/squall),
#              BASE_PORT (32600).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-50000}
WINDOWS=${WINDOWS:-64}
RATE=${RATE:-1000}
RATE_MESSAGES=${RATE_MESSAGES:-10000}
BIN=${SQUALL_BIN:-target/release/squall}
BASE=${BASE_PORT:-32600}
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release --bin squall" >&2; exit 64; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

client_addr() { echo "127.0.0.1:$((BASE + $1))"; }
cluster_addr() { echo "127.0.0.1:$((BASE + 100 + $1))"; }
PEERS="1@$(cluster_addr 1),2@$(cluster_addr 2),3@$(cluster_addr 3)"

wait_listening() { # LOG
  for _ in $(seq 400); do
    grep -qs 'listening on' "$1" && return 0
    sleep 0.05
  done
  echo "a broker did not start:" >&2; cat "$1" >&2; exit 1
}

# Starts R1 (one node) or R3 (three members, waits for a leader); sets PIDS and ADDR.
start() {
  # The logs go too: a backgrounded broker truncates its log only once it runs, and
  # the previous run's "listening on" must not be taken for this one's.
  rm -rf "$WORK/d"* "$WORK/log"*
  PIDS=()
  if [ "$1" = R1 ]; then
    "$BIN" serve --data-dir "$WORK/d0" --listen "$(client_addr 0)" --http off \
      --fsync always >"$WORK/log0" 2>&1 &
    PIDS+=($!)
    wait_listening "$WORK/log0"
    ADDR=$(client_addr 0)
    return
  fi
  for i in 1 2 3; do
    RUST_LOG=info,openraft=warn "$BIN" serve --data-dir "$WORK/d$i" --listen "$(client_addr "$i")" \
      --http off --fsync always --node-id "$i" --cluster-listen "$(cluster_addr "$i")" \
      --peers "$PEERS" >"$WORK/log$i" 2>&1 &
    PIDS+=($!)
  done
  for i in 1 2 3; do wait_listening "$WORK/log$i"; done
  for _ in $(seq 200); do
    if "$BIN" cluster status --json --node "$(cluster_addr 1)" 2>/dev/null \
        | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("leader") else 1)'; then
      ADDR=$(client_addr 1)
      return
    fi
    sleep 0.1
  done
  echo "the cluster elected no leader" >&2; exit 1
}
# CPU seconds (user + system) of every broker process so far.
cpu() {
  local total=0
  for p in "${PIDS[@]}"; do
    total=$(awk -v t="$total" '{printf "%.2f", t + ($14 + $15) / 100}' "/proc/$p/stat")
  done
  echo "$total"
}
stop() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

for round in $(seq "$ROUNDS"); do
  for kind in R1 R3; do
    for w in $WINDOWS; do
      echo "round $round: $kind throughput, window $w..." >&2
      start "$kind"
      "$BIN" bench --server "$ADDR" --producers 4 --consumers 4 --messages "$MESSAGES" \
        --size 256 --window "$w" --prefetch 64 --json > "$WORK/r$round-$kind-w$w-tp.json"
      cpu > "$WORK/r$round-$kind-w$w-tp.cpu"
      stop
    done
    echo "round $round: $kind at $RATE msgs/s..." >&2
    start "$kind"
    "$BIN" bench --server "$ADDR" --producers 1 --consumers 1 --messages "$RATE_MESSAGES" \
      --size 256 --rate "$RATE" --prefetch 64 --json > "$WORK/r$round-$kind-rate.json"
    stop
  done
done

python3 - "$WORK" "$ROUNDS" "$WINDOWS" "$MESSAGES" <<'PY'
import json, os, sys, datetime, platform, statistics
work, rounds, windows, messages = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4])
ms = lambda us: f"{us/1000:.2f}"
load = os.getloadavg()[0]
print(f"Measured {datetime.date.today()} on {platform.node()} ({os.cpu_count()} cores, "
      f"load average {load:.1f} at the end); {rounds} rounds, R1 and R3 alternating; "
      f"`--fsync always`; load generator: `squall bench`.\n")
window_col = "" if windows == ["64"] else " window |"
print(f"| setup | round |{window_col} 4×4, {messages // 1000:,}k × 256 B: msgs/s "
      "| broker CPU per message (all members) "
      "| e2e p50 / p99 (ms) | fixed rate: e2e p50 / p99 / p99.9 (ms) | lost |")
print("| --- | ---: |" + (" ---: |" if window_col else "") + " ---: | ---: | ---: | ---: | ---: |")
tps = {(k, w): [] for k in ("R1", "R3") for w in windows}
for kind in ("R1", "R3"):
    for r in range(1, rounds + 1):
        rate = json.load(open(f"{work}/r{r}-{kind}-rate.json"))
        f = rate["end_to_end"]
        for i, w in enumerate(windows):
            tp = json.load(open(f"{work}/r{r}-{kind}-w{w}-tp.json"))
            cpu = float(open(f"{work}/r{r}-{kind}-w{w}-tp.cpu").read())
            e = tp["end_to_end"]
            tps[(kind, w)].append(tp["msgs_per_s"])
            fixed = f"{ms(f['p50_us'])} / {ms(f['p99_us'])} / {ms(f['p999_us'])}" if i == 0 else ""
            lost = tp["lost"] + (rate["lost"] if i == 0 else 0)
            print(f"| {kind if r == 1 and i == 0 else ''} | {r if i == 0 else ''} |"
                  + (f" {w} |" if window_col else "")
                  + f" {tp['msgs_per_s']:,.0f} "
                  f"| {cpu / tp['confirmed'] * 1e6:.0f} µs | {ms(e['p50_us'])} / {ms(e['p99_us'])} "
                  f"| {fixed} | {lost} |")
print()
for w in windows:
    r1, r3 = statistics.median(tps[("R1", w)]), statistics.median(tps[("R3", w)])
    label = "" if not window_col else f" at window {w}"
    print(f"Median throughput{label}: R1 {r1:,.0f} msgs/s, R3 {r3:,.0f} msgs/s: R3 = {r3 / r1:.0%} of R1.")
    # Each round's R1 and R3 ran within a minute of each other: their ratio is less
    # moved by the machine's drift than the medians, which mix rounds minutes apart.
    pairs = [b / a for a, b in zip(tps[("R1", w)], tps[("R3", w)])]
    print(f"  Round by round{label}: R3 = " + ", ".join(f"{p:.0%}" for p in pairs)
          + f" of R1 (median {statistics.median(pairs):.0%}, lowest {min(pairs):.0%}).")
PY
