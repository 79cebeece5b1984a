#!/usr/bin/env bash
# Failover time of a 3-node cluster on loopback (issue 15's figure): starts three
# brokers with cluster flags, waits for a leader, then KILLS times: kill -9 the leader
# and time until the first publish confirmed by the new leader. The publishes are
# `squall publish` runs, one after the other, each given one survivor in turn (a
# follower answers NOT_LEADER naming the leader and the client follows it); an attempt
# fails while no leader serves. The time includes the one successful `squall publish`
# process (a few ms). The killed node is restarted with its data and the next kill
# waits until all three agree on a leader again and hold the same log (the restarted
# one caught up). Prints each time, then p50, p99 and
# the maximum (nearest rank: with 10 kills p99 is the maximum).
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

client_addr() { echo "127.0.0.1:$((BASE + $1))"; }
cluster_addr() { echo "127.0.0.1:$((BASE + 100 + $1))"; }
peers="1@$(cluster_addr 1),2@$(cluster_addr 2),3@$(cluster_addr 3)"

start() {
    local i=$1
    "$BIN" serve --listen "$(client_addr "$i")" --http off --data-dir "$dir/n$i" \
        --node-id "$i" --cluster-listen "$(cluster_addr "$i")" --peers "$peers" \
        >>"$dir/n$i.log" 2>&1 &
    pid[$i]=$!
    # Not a job of this shell: bash would print a "Killed" line for each kill -9.
    disown "${pid[$i]}"
}

# "leader term last-log-index" as node $1 sees it (the index its own), or nothing.
view() {
    "$BIN" cluster status --json --node "$(cluster_addr "$1")" 2>/dev/null |
        jq -r --argjson me "$1" '"\(.leader // "none") \(.term) \(.nodes[] | select(.id == $me) | .last_log_index)"' 2>/dev/null || true
}

# Waits until every node in "$@" sees the same leader, one of them, in the same term,
# with the same last log index (a restarted member has caught up: a kill while one
# member lags measures an election among a member that cannot win); prints it.
agreed() {
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        local first="" ok=1
        for i in "$@"; do
            local v
            v=$(view "$i")
            local leader=${v%% *}
            [[ -z "$v" || "$leader" == none ]] && { ok=0; break; }
            [[ -z "$first" ]] && first=$v
            [[ "$v" != "$first" ]] && { ok=0; break; }
        done
        first=${first%% *}
        if ((ok)) && [[ " $* " == *" $first "* ]]; then
            echo "$first"
            return 0
        fi
        sleep 0.02
    done
    echo "no agreed leader among $* within 30 s" >&2
    return 1
}

# Publishes through the members "$@" in turn until one publish is confirmed; prints
# the number of attempts.
first_confirmed() {
    local deadline=$((SECONDS + 30)) n=0 nodes=("$@")
    while ((SECONDS < deadline)); do
        local via=${nodes[$((n % ${#nodes[@]}))]}
        n=$((n + 1))
        if timeout 2 "$BIN" publish --server "$(client_addr "$via")" failover "kill" \
            >/dev/null 2>&1; then
            echo "$n"
            return 0
        fi
        sleep 0.02 # a probe every ~20 ms: hundreds of processes a second would slow the election
    done
    echo "no publish confirmed within 30 s" >&2
    return 1
}

for i in 1 2 3; do start "$i"; done
leader=$(agreed 1 2 3)
echo "formed: leader $leader"
# One confirmed publish before the first kill: the queue exists, the path is warm.
first_confirmed 1 2 3 >/dev/null
times=()
for ((k = 1; k <= KILLS; k++)); do
    survivors=()
    for i in 1 2 3; do [[ $i != "$leader" ]] && survivors+=("$i"); done
    t0=$(date +%s%N)
    kill -9 "${pid[$leader]}"
    attempts=$(first_confirmed "${survivors[@]}")
    t1=$(date +%s%N)
    while kill -0 "${pid[$leader]}" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/${pid[$leader]}/status" 2>/dev/null; do
        sleep 0.01
    done
    ms=$(((t1 - t0) / 1000000))
    times+=("$ms")
    new=$(agreed "${survivors[@]}")
    echo "kill $k: leader $leader killed, first publish confirmed (by node $new) after $ms ms ($attempts attempts)"
    start "$leader"
    leader=$(agreed 1 2 3)
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
rank() { echo "$sorted" | awk -v p="$1" '{a[NR]=$1} END {r=int((p * NR + 99) / 100); if (r < 1) r = 1; print a[r]}'; }
echo "failover (kill -9 of the leader to the first publish confirmed by the new leader), $KILLS kills: p50 $(rank 50) ms, p99 $(rank 99) ms, max $(rank 100) ms"
