#!/usr/bin/env bash
# Chaos under load: N runs (default 10) per kind of kill -9 (control plane, agent, router, app instance) at a
# random moment of a rolling, canary or blue-green deploy, through the control plane's chaos tests
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
  cargo nextest run -p control --no-capture --no-fail-fast -E 'test(/^chaos::/)' 2>&1 | tee "$out" | grep '^chaos {' || true
echo "seed $seed, $runs runs per kind"
grep '^chaos {' "$out" | sed 's/^chaos //' | python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin]
print("| killed | runs | promoted | requests | failed | why | WebSockets dropped | recovery median / max (ms) |")
print("|---|---|---|---|---|---|---|---|")
for kind in ["control", "agent", "router", "instance"]:
    rs = [r for r in rows if r["kind"] == kind]
    if not rs:
        continue
    why = {}
    for r in rs:
        for k, v in r["errors"].items():
            why[k] = why.get(k, 0) + v
        for k, v in r["statuses"].items():
            if not k.startswith("2"):
                why["HTTP " + k] = why.get("HTTP " + k, 0) + v
    rec = [r["recovery_ms"] for r in rs]
    print(f"| {kind} | {len(rs)} | {sum(r[\"outcome\"] == \"promoted\" for r in rs)} | {sum(r[\"sent\"] for r in rs)} "
          f"| {sum(r[\"failed\"] for r in rs)} | {why or \"-\"} | {sum(r[\"ws_dropped\"] for r in rs)} "
          f"| {statistics.median(rec):.0f} / {max(rec)} |")
'
grep -E '^\s+(PASS|FAIL)' "$out" | sort | uniq -c
