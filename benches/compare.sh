#!/usr/bin/env bash
# Side-by-side comparison, in one run on one machine: probes the disk (serial fdatasync
# rate) and loopback (TCP round trip), then, for each of ROUNDS rounds (brokers in a
# rotated order each round), runs the identical workload against
#   - Squall --fsync always (`squall serve`, driven by `squall bench`),
#   - Redis, AOF with appendfsync always, and again with appendfsync everysec,
#   - beanstalkd -f 0 (binlog, fsync every write),
# each started here on 127.0.0.1 with a fresh data directory once per round (the
# saturation run, then the fixed-rate run against the same broker) and stopped by PID. The peers
# are driven by `squall-peers` (benches/peers: the `redis` crate, pipelined; a pipelined
# beanstalkd client) with the same load generator as `squall bench`. Each broker does a
# saturation run (msgs/s, and its CPU per message from /proc/PID/stat utime+stime over the
# run) and a fixed-rate run (end-to-end p50/p99/p99.9). Prints one table per round, then
# the median of the rounds, per broker and per column.
#
# Usage: benches/compare.sh            (from the repository root or anywhere)
# Environment: ROUNDS (3), MESSAGES (300000), BEANSTALKD_MESSAGES (10000), SIZE (256),
#              PRODUCERS (4), CONSUMERS (4), WINDOW (64), PREFETCH (64), RATE (1000),
#              RATE_MESSAGES (10000), OUT (dir for the JSON reports), PIN (0; 1: every
#              broker on CPU 0 and every load generator on CPU 1, with taskset, the same
#              for all brokers; the header says so).
# Needs: beanstalkd and redis-server (installed with apt-get when missing and root),
#        python3 (probes and tables).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-300000}
BEANSTALKD_MESSAGES=${BEANSTALKD_MESSAGES:-10000}
SIZE=${SIZE:-256}
PRODUCERS=${PRODUCERS:-4}
CONSUMERS=${CONSUMERS:-4}
WINDOW=${WINDOW:-64}
PREFETCH=${PREFETCH:-64}
RATE=${RATE:-1000}
RATE_MESSAGES=${RATE_MESSAGES:-10000}

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing $2 (Debian package)..." >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
      echo "error: $1 is missing: install the Debian package $2" >&2
      exit 1
    fi
  fi
}
need beanstalkd beanstalkd
need redis-server redis-server
need python3 python3

echo "building squall and squall-peers (release)..." >&2
cargo build --release --quiet -p squall -p squall-peers
SQUALL=target/release/squall
PEERS=target/release/squall-peers
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then
  BROKER_CPU=(taskset -c 0)
  LOAD_CPU=(taskset -c 1)
else
  BROKER_CPU=()
  LOAD_CPU=()
fi

WORK=$(mktemp -d)
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
  python3 - "$1" <<'PY'
import socket, sys, time
port = int(sys.argv[1])
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", port), 0.1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("port %d did not open" % port)
PY
}

echo "probing the disk and loopback..." >&2
PROBE=$(python3 - "$WORK" <<'PY'
import os, socket, statistics, sys, threading, time
d = sys.argv[1]
# Serial fdatasync rate: 4 KiB append + fdatasync, for 3 seconds, on the data disk.
fd = os.open(os.path.join(d, "probe"), os.O_WRONLY | os.O_CREAT, 0o600)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 3:
    os.write(fd, b"x" * 4096); os.fdatasync(fd); n += 1
rate = n / (time.perf_counter() - t0)
os.close(fd)
# Loopback TCP round trip: 2000 one-byte ping-pongs.
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def echo():
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(1)
        if not b: break
        c.sendall(b)
threading.Thread(target=echo, daemon=True).start()
cl = socket.create_connection(srv.getsockname()); cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(2000):
    t = time.perf_counter(); cl.sendall(b"x"); cl.recv(1); rtts.append(time.perf_counter() - t)
cl.close()
print(f"{rate:.0f} {statistics.median(rtts)*1e6:.0f}")
PY
)
FSYNC_RATE=${PROBE% *}
RTT_US=${PROBE#* }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# The saturation workload (messages per broker added below) and the fixed-rate one.
COMMON=(--producers "$PRODUCERS" --consumers "$CONSUMERS" --size "$SIZE"
        --window "$WINDOW" --prefetch "$PREFETCH" --json)
RATED=(--producers 1 --consumers 1 --messages "$RATE_MESSAGES" --size "$SIZE" --rate "$RATE"
       --prefetch "$PREFETCH" --json)

run_squall() { # $1 = round
  # Like each peer: one broker per round on a fresh data directory, the saturation run
  # and then the fixed-rate run against it.
  echo "round $1: squall (--fsync always)..." >&2
  local port dir pid
  port=$(free_port); dir="$WORK/squall-$1"; mkdir -p "$dir"
  RUST_LOG=warn "${BROKER_CPU[@]}" $SQUALL serve --listen "127.0.0.1:$port" --data-dir "$dir/data" --fsync always \
    --http off >"$dir.log" 2>&1 & pid=$!; PIDS+=("$pid")
  wait_port "$port"
  "${LOAD_CPU[@]}" $SQUALL bench --server "127.0.0.1:$port" --broker-pid "$pid" "${COMMON[@]}" \
    --messages "$MESSAGES" > "$OUT/$1-squall.json"
  "${LOAD_CPU[@]}" $SQUALL bench --server "127.0.0.1:$port" --broker-pid "$pid" "${RATED[@]}" \
    > "$OUT/$1-squall-rate.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_redis() { # $1 = round, $2 = appendfsync mode
  echo "round $1: redis (appendfsync $2)..." >&2
  local port dir pid
  port=$(free_port); dir="$WORK/redis-$1-$2"; mkdir -p "$dir"
  "${BROKER_CPU[@]}" redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
    --appendfsync "$2" --save '' --daemonize no >"$dir.log" 2>&1 & pid=$!; PIDS+=("$pid")
  wait_port "$port"
  "${LOAD_CPU[@]}" $PEERS --target redis --server "127.0.0.1:$port" --broker-pid "$pid" "${COMMON[@]}" \
    --messages "$MESSAGES" > "$OUT/$1-redis-$2.json"
  "${LOAD_CPU[@]}" $PEERS --target redis --server "127.0.0.1:$port" --broker-pid "$pid" "${RATED[@]}" \
    > "$OUT/$1-redis-$2-rate.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_beanstalkd() { # $1 = round
  echo "round $1: beanstalkd (-f 0)..." >&2
  local port dir pid
  port=$(free_port); dir="$WORK/beanstalkd-$1"; mkdir -p "$dir"
  "${BROKER_CPU[@]}" beanstalkd -l 127.0.0.1 -p "$port" -b "$dir" -f 0 & pid=$!; PIDS+=("$pid")
  wait_port "$port"
  "${LOAD_CPU[@]}" $PEERS --target beanstalkd --server "127.0.0.1:$port" --broker-pid "$pid" "${COMMON[@]}" \
    --messages "$BEANSTALKD_MESSAGES" > "$OUT/$1-beanstalkd.json"
  "${LOAD_CPU[@]}" $PEERS --target beanstalkd --server "127.0.0.1:$port" --broker-pid "$pid" "${RATED[@]}" \
    > "$OUT/$1-beanstalkd-rate.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

BROKERS=(squall "redis always" "redis everysec" beanstalkd)
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order, so that no broker always runs first or right after another.
  for k in 0 1 2 3; do
    b=${BROKERS[$(( (k + round - 1) % 4 ))]}
    case $b in
      squall) run_squall "$round" ;;
      "redis always") run_redis "$round" always ;;
      "redis everysec") run_redis "$round" everysec ;;
      beanstalkd) run_beanstalkd "$round" ;;
    esac
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

PIN=$PIN python3 - "$OUT" "$ROUNDS" "$FSYNC_RATE" "$RTT_US" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import json, os, platform, statistics, sys, datetime
out, rounds, fsync_rate, rtt, load_before, load_after = sys.argv[1:7]
rounds = int(rounds)
brokers = [("Squall (--fsync always)", "squall"), ("Redis (AOF always)", "redis-always"),
           ("Redis (AOF everysec)", "redis-everysec"), ("beanstalkd (-f 0)", "beanstalkd")]
def load(r, f): return json.load(open(os.path.join(out, f"{r}-{f}.json")))
ms = lambda us: f"{us/1000:.2f}"
def cpu_us(r): return r.get("broker_cpu_us_per_msg")
def cores(r): return r["broker_cpu_s"] / r["elapsed_s"] if r.get("broker_cpu_s") is not None else None
fmt = lambda v, f: "n/a" if v is None else format(v, f)

def sat_row(name, r):
    p, e = r["publish_confirm"], r["end_to_end"]
    return (f"| {name} | {r['msgs_per_s']:,.0f} | {fmt(cpu_us(r), '.1f')} | {fmt(cores(r), '.2f')} "
            f"| {ms(p['p50_us'])} / {ms(p['p99_us'])} | {ms(e['p50_us'])} / {ms(e['p99_us'])} "
            f"| {r['delivered']:,} | {r['lost']} | {r['duplicates']} |")
def rate_row(name, r):
    e = r["end_to_end"]
    return (f"| {name} | {ms(e['p50_us'])} | {ms(e['p99_us'])} | {ms(e['p999_us'])} | {ms(e['max_us'])} "
            f"| {fmt(cpu_us(r), '.1f')} | {r['lost']} |")
SAT_HEAD = ("| broker | msgs/s | broker CPU µs/msg | broker cores | publish p50 / p99 (ms) "
            "| end-to-end p50 / p99 (ms) | delivered | lost | dup |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
RATE_HEAD = ("| broker | end-to-end p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | broker CPU µs/msg | lost |\n"
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")

first = load(1, "squall")
print(f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
      f"({os.cpu_count()} cores, {platform.release()}); serial fdatasync {fsync_rate}/s, loopback round "
      f"trip {rtt} µs; load average (1/5/15 min) {load_before} before, {load_after} after."
      + (" Pinned (PIN=1): every broker on CPU 0, every load generator on CPU 1." if os.environ.get("PIN") == "1" else "")
      + "\n")
print(f"Saturation: {first['producers']} producers, {first['consumers']} consumers, {first['size_bytes']} B, "
      f"window {first['window']}, prefetch {first['prefetch']}, one ack per message; "
      f"{first['confirmed']:,} messages (beanstalkd: {load(1, 'beanstalkd')['confirmed']:,}). "
      f"Fixed rate: {first and load(1, 'squall-rate')['rate']} msgs/s, 1 producer, 1 consumer, "
      f"{load(1, 'squall-rate')['confirmed']:,} messages, latency from each message's scheduled send time.\n")
for rd in range(1, rounds + 1):
    print(f"Round {rd}, saturation:\n\n{SAT_HEAD}")
    for name, f in brokers:
        print(sat_row(name, load(rd, f)))
    print(f"\nRound {rd}, fixed rate:\n\n{RATE_HEAD}")
    for name, f in brokers:
        print(rate_row(name, load(rd, f + "-rate")))
    print()

med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None
print(f"Median of the {rounds} rounds (each column separately):\n")
print("| broker | msgs/s | broker CPU µs/msg | broker cores | fixed-rate e2e p50 (ms) | p99 (ms) | p99.9 (ms) | lost (all rounds) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
medians = {}
for name, f in brokers:
    sat = [load(rd, f) for rd in range(1, rounds + 1)]
    rate = [load(rd, f + "-rate") for rd in range(1, rounds + 1)]
    m = dict(rate=med([r["msgs_per_s"] for r in sat]), cpu=med([cpu_us(r) for r in sat]),
             cores=med([cores(r) for r in sat]),
             p50=med([r["end_to_end"]["p50_us"] for r in rate]),
             p99=med([r["end_to_end"]["p99_us"] for r in rate]),
             p999=med([r["end_to_end"]["p999_us"] for r in rate]),
             lost=sum(r["lost"] for r in sat + rate))
    medians[f] = m
    print(f"| {name} | {m['rate']:,.0f} | {fmt(m['cpu'], '.1f')} | {fmt(m['cores'], '.2f')} | {ms(m['p50'])} "
          f"| {ms(m['p99'])} | {ms(m['p999'])} | {m['lost']} |")
s = medians["squall"]["rate"]
print("\nSquall's median msgs/s over each peer's: " + ", ".join(
    f"{name} {s / medians[f]['rate']:.2f}×" for name, f in brokers[1:]))
PY
