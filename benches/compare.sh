#!/usr/bin/env bash
# Side-by-side comparison, in one run on one machine: probes the disk (serial fdatasync
# rate) and loopback (TCP round trip), then runs the identical workload against Squall
# (--fsync always), beanstalkd (binlog, -f 0: fsync every write) and Redis (AOF,
# appendfsync always, LPUSH + BLMOVE reliable queue), each started here on 127.0.0.1 and
# stopped by PID, and prints one markdown table. Then a fixed-rate latency run.
#
# Usage: benches/compare.sh            (from the repository root or anywhere)
# Environment: MESSAGES (50000), SIZE (256), PRODUCERS (4), CONSUMERS (4), WINDOW (64),
#              PREFETCH (64), RATE (1000), RATE_MESSAGES (10000), OUT (dir for JSON).
# Needs: beanstalkd and redis-server (installed with apt-get when missing and root),
#        python3 (probes and table).
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-50000}
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

echo "building squall (release)..." >&2
cargo build --release --quiet
SQUALL=target/release/squall

WORK=$(mktemp -d)
OUT=${OUT:-$WORK}
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

COMMON=(--producers "$PRODUCERS" --consumers "$CONSUMERS" --messages "$MESSAGES" --size "$SIZE"
        --window "$WINDOW" --prefetch "$PREFETCH" --json)
# The fixed-rate latency run, the same for every broker.
RATED=(--producers 1 --consumers 1 --messages "$RATE_MESSAGES" --size "$SIZE" --rate "$RATE"
       --prefetch "$PREFETCH" --json)

echo "squall (--fsync always)..." >&2
$SQUALL bench --spawn --fsync always "${COMMON[@]}" > "$OUT/squall.json"

echo "beanstalkd (-f 0)..." >&2
PORT=$(free_port); mkdir -p "$WORK/beanstalkd"
beanstalkd -l 127.0.0.1 -p "$PORT" -b "$WORK/beanstalkd" -f 0 & PIDS+=($!); BS=$!
wait_port "$PORT"
$SQUALL bench --target beanstalkd --server "127.0.0.1:$PORT" "${COMMON[@]}" > "$OUT/beanstalkd.json"
echo "beanstalkd latency at a fixed $RATE msgs/s..." >&2
$SQUALL bench --target beanstalkd --server "127.0.0.1:$PORT" "${RATED[@]}" > "$OUT/beanstalkd-rate.json"
kill "$BS"; wait "$BS" 2>/dev/null || true

echo "redis (appendfsync always)..." >&2
PORT=$(free_port); mkdir -p "$WORK/redis"
redis-server --port "$PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
  --appendfsync always --save '' --daemonize no >"$WORK/redis.log" 2>&1 & PIDS+=($!); RD=$!
wait_port "$PORT"
$SQUALL bench --target redis --server "127.0.0.1:$PORT" "${COMMON[@]}" > "$OUT/redis.json"
echo "redis latency at a fixed $RATE msgs/s..." >&2
$SQUALL bench --target redis --server "127.0.0.1:$PORT" "${RATED[@]}" > "$OUT/redis-rate.json"
kill "$RD"; wait "$RD" 2>/dev/null || true

echo "squall latency at a fixed $RATE msgs/s..." >&2
$SQUALL bench --spawn --fsync always "${RATED[@]}" > "$OUT/squall-rate.json"

python3 - "$OUT" "$FSYNC_RATE" "$RTT_US" <<'PY'
import json, os, platform, sys, datetime
out, fsync_rate, rtt = sys.argv[1], sys.argv[2], sys.argv[3]
def load(n): return json.load(open(os.path.join(out, n + ".json")))
rows = [("Squall (--fsync always)", load("squall")), ("beanstalkd (-f 0)", load("beanstalkd")),
        ("Redis (AOF always)", load("redis"))]
ms = lambda us: f"{us/1000:.2f}"
print(f"Measured {datetime.date.today()} on {platform.node()} ({os.cpu_count()} cores, {platform.release()}); "
      f"serial fdatasync {fsync_rate}/s, loopback round trip {rtt} µs.\n")
print(f"Workload: {rows[0][1]['producers']} producers, {rows[0][1]['consumers']} consumers, "
      f"{rows[0][1]['confirmed']} × {rows[0][1]['size_bytes']} B, window {rows[0][1]['window']}, "
      f"prefetch {rows[0][1]['prefetch']}, per-message ack.\n")
print("| broker | msgs/s | MiB/s | publish p50 / p99 (ms) | end-to-end p50 / p99 (ms) | lost | duplicates |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, r in rows:
    p, e = r["publish_confirm"], r["end_to_end"]
    print(f"| {name} | {r['msgs_per_s']:,.0f} | {r['mib_per_s']:.2f} | {ms(p['p50_us'])} / {ms(p['p99_us'])} "
          f"| {ms(e['p50_us'])} / {ms(e['p99_us'])} | {r['lost']} | {r['duplicates']} |")
best = max(r["msgs_per_s"] for n, r in rows[1:])
print(f"\nSquall / fastest peer: {rows[0][1]['msgs_per_s'] / best:.2f}×")
rated = [(n, load(f)) for n, f in (("Squall (--fsync always)", "squall-rate"),
                                   ("beanstalkd (-f 0)", "beanstalkd-rate"),
                                   ("Redis (AOF always)", "redis-rate"))]
r0 = rated[0][1]
print(f"\nAt a fixed {r0['rate']} msgs/s (1 producer, 1 consumer, {r0['confirmed']} × {r0['size_bytes']} B; "
      "latency counted from each message's scheduled send time):\n")
print("| broker | publish p50 / p99 (ms) | end-to-end p50 / p90 / p99 / p99.9 / max (ms) | lost |")
print("| --- | ---: | ---: | ---: |")
for name, r in rated:
    p, e = r["publish_confirm"], r["end_to_end"]
    print(f"| {name} | {ms(p['p50_us'])} / {ms(p['p99_us'])} | {ms(e['p50_us'])} / {ms(e['p90_us'])} / "
          f"{ms(e['p99_us'])} / {ms(e['p999_us'])} / {ms(e['max_us'])} | {r['lost']} |")
PY
