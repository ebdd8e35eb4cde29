#!/usr/bin/env bash
# Chaos under load: N runs (default 10) per kind of kill -9 (control plane, agent, router, app instance, and the
# router of a control plane that was itself killed and started again) at a
# random moment of a whole rolling, canary or blue-green deploy (uniform over the span an unkilled rehearsal of the
# strategy took), through the control plane's chaos tests
# (crates/control/tests/it/chaos.rs); then a summary per kind: deploys promoted, requests failed and why,
# WebSockets dropped, time until the killed part was back.
# Usage: bench/chaos/run.sh [RUNS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-10}"
seed="${2:-$(date +%s)}"
out="$(mktemp)"
cargo build -q -p slipway -p demo-app --bins
SLIPWAY_CHAOS_RUNS="$runs" SLIPWAY_CHAOS_SEED="$seed" \
  cargo nextest run -p control --profile chaos --no-capture --no-fail-fast -E 'test(/^chaos::/)' 2>&1 | tee "$out" | grep '^chaos {' || true
echo "seed $seed, $runs runs per kind"
python3 bench/chaos/summarize.py < "$out"
grep -E '^\s+(PASS|FAIL)' "$out" | sort | uniq -c
