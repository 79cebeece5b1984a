#!/usr/bin/env bash
# Runs Squall's fuzz targets for a bounded time: fuzz/run.sh [seconds-per-target]
#
# Targets (see fuzz/src/lib.rs for the properties they check):
#   frames   arbitrary bytes through split_frame (small limits) and Request decoding
#   request  arbitrary bytes as one Request body: round trip and the queue-name rule
#
# With a nightly toolchain this runs cargo-fuzz (libFuzzer + AddressSanitizer),
# installing cargo-fuzz from crates.io if it is missing. Without nightly (and when it
# cannot be installed), or with SQUALL_FUZZ_FALLBACK=1, it runs the same harnesses as
# a plain stable binary over generated inputs (src/bin/random.rs): no coverage
# feedback, but the same properties. CI does not run this script.
#
# Corpora go to fuzz/corpus/<target>, crashes to fuzz/artifacts/<target> (both ignored
# by git). Reproduce a crash with: cargo +nightly fuzz run <target> <artifact-file>
set -euo pipefail

secs="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

fallback() {
    echo "fuzz: $1" >&2
    echo "fuzz: running the stable fallback (fuzz/src/bin/random.rs) for $((secs * 2)) s" >&2
    cd "$root/fuzz"
    exec cargo run --release --no-default-features --bin random -- "$((secs * 2))"
}

if [[ "${SQUALL_FUZZ_FALLBACK:-0}" == 1 ]]; then
    fallback "SQUALL_FUZZ_FALLBACK=1"
fi

if ! command -v rustup >/dev/null; then
    fallback "rustup not found: cargo-fuzz needs a nightly toolchain"
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: no nightly toolchain; trying 'rustup toolchain install nightly'" >&2
    if ! rustup toolchain install nightly --profile minimal; then
        fallback "no nightly toolchain available and none could be installed"
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    if ! cargo install cargo-fuzz --locked; then
        fallback "cargo-fuzz could not be installed"
    fi
fi

status=0
for target in frames request; do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzz: cargo +nightly fuzz run $target for $secs s" >&2
    if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -max_len=4096 -print_final_stats=1; then
        echo "fuzz: $target FAILED; the crashing input is under fuzz/artifacts/$target" >&2
        status=1
    fi
done
exit "$status"
