#!/usr/bin/env bash
# RSS of a broker holding a backlog of 64 KiB tasks that nobody consumes, against its
# sled cache, before and after a kill -9 and restart (issue 19, fault 3; BENCHMARKS.md).
#
# Usage: benches/backlog_rss.sh   Environment: MSGS (4096 tasks), CACHE (16MiB),
#        BIN (target/debug/squall, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${MSGS:-4096}
CACHE=${CACHE:-16MiB}
BIN=${BIN:-target/debug/squall}
[ -x "$BIN" ] || cargo build --quiet
WORK=$(mktemp -d)
PID=
SAMPLER=
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start() {
  "$BIN" serve --listen "127.0.0.1:$PORT" --http off --data-dir "$WORK/data" \
    --cache-bytes "$CACHE" >>"$WORK/log" 2>&1 &
  PID=$!
  until grep -q "listening on" "$WORK/log"; do
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/log" >&2; exit 1; }
    sleep 0.1
  done
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
start
echo "empty: rss_kib=$(rss)"
"$BIN" bench --server "127.0.0.1:$PORT" --consumers 0 --producers 2 --messages "$MSGS" \
  --size 65536 --batch 1 --window 8 >/dev/null 2>&1
echo "after $MSGS x 64 KiB: rss_kib=$(rss) data_mib=$(du -sm "$WORK/data" | cut -f1)"
sleep 5
echo "5 s later: rss_kib=$(rss)"
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
start
sleep 5
echo "after kill -9 and restart (+5 s): rss_kib=$(rss)"
