#!/usr/bin/env bash
# The long power-loss run: N seeded power cuts under load (default 20), see README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SQUALL_POWER_CUTS="${1:-20}" cargo test --test power_loss with_fsync_always -- --nocapture
