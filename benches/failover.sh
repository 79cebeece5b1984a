#!/usr/bin/env bash
# Failover time of a 3-node cluster on loopback (issue 15): starts three brokers with
# cluster flags, waits for a leader, then KILLS times: kill -9 the leader, time until
# the two others agree on a new leader (`squall cluster status --json` on each, polled),
# restart the killed node with its data and wait until it follows. Prints each time,
# then the median and the maximum. Queues are not replicated yet, so this measures the
# election only, not "killed to first publish confirmed".
#
#   cargo build --release && benches/failover.sh            # KILLS=10 by default
#   SQUALL_BIN=target/debug/squall KILLS=5 benches/failover.sh
set -euo pipefail

BIN=${SQUALL_BIN:-target/release/squall}
KILLS=${KILLS:-10}
BASE=${BASE_PORT:-31600}
dir=$(mktemp -d)
declare -A pid

cleanup() {
    for i in 1 2 3; do
        [[ -n "${pid[$i]:-}" ]] && kill -9 "${pid[$i]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

cluster_addr() { echo "127.0.0.1:$((BASE + 100 + $1))"; }
peers="1@$(cluster_addr 1),2@$(cluster_addr 2),3@$(cluster_addr 3)"

start() {
    local i=$1
    "$BIN" serve --listen "127.0.0.1:$((BASE + $i))" --http off --data-dir "$dir/n$i" \
        --node-id "$i" --cluster-listen "$(cluster_addr "$i")" --peers "$peers" \
        >>"$dir/n$i.log" 2>&1 &
    pid[$i]=$!
}

# "leader term role" as node $1 sees it, or nothing.
view() {
    "$BIN" cluster status --json --node "$(cluster_addr "$1")" 2>/dev/null |
        jq -r --argjson me "$1" '"\(.leader // "none") \(.term) \(.nodes[] | select(.id == $me) | .role)"' 2>/dev/null || true
}

# Waits until every node in "$@" sees the same leader, one of them; prints it.
agreed() {
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        local first="" ok=1
        for i in "$@"; do
            local v
            v=$(view "$i")
            local leader=${v%% *}
            [[ -z "$v" || "$leader" == none ]] && { ok=0; break; }
            [[ -z "$first" ]] && first=$leader
            [[ "$leader" != "$first" ]] && { ok=0; break; }
        done
        if ((ok)) && [[ " $* " == *" $first "* ]]; then
            echo "$first"
            return 0
        fi
        sleep 0.02
    done
    echo "no agreed leader among $* within 30 s" >&2
    return 1
}

for i in 1 2 3; do start "$i"; done
leader=$(agreed 1 2 3)
echo "formed: leader $leader"
times=()
for ((k = 1; k <= KILLS; k++)); do
    survivors=()
    for i in 1 2 3; do [[ $i != "$leader" ]] && survivors+=("$i"); done
    t0=$(date +%s%N)
    kill -9 "${pid[$leader]}"
    wait "${pid[$leader]}" 2>/dev/null || true
    new=$(agreed "${survivors[@]}")
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    times+=("$ms")
    echo "kill $k: leader $leader killed, node $new leads after $ms ms"
    start "$leader"
    agreed 1 2 3 >/dev/null
    leader=$(agreed 1 2 3)
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')
max=$(echo "$sorted" | tail -1)
echo "failover (kill -9 of the leader to a new agreed leader), $KILLS kills: median $median ms, max $max ms"
