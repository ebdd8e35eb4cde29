#!/usr/bin/env bash
# The dashboard's page weight, first paint and update latency with 1 and 20 open dashboards, in Debian's chromium
# against `slipway up` + demo-app. Usage: bench/dashboard/run.sh [ROUNDS]; writes bench/out/dashboard.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x /usr/bin/chromedriver ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi
cargo build -q -p slipway -p demo-app --bins
cargo run -q -p slipway --example dashboard_bench -- "${1:-10}"
