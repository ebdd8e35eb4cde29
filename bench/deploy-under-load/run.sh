#!/usr/bin/env bash
# Deploys under constant open-loop load (default 1,000 requests/s, half on
# keep-alive, 20 WebSockets): rolling, canary with promotion, blue-green,
# abort, rollback; then nginx with its upstreams swapped by reloads.
# Usage: bench/deploy-under-load/run.sh [--rate N] [--websockets N]
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v nginx >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light
cargo build --release -q -p slipway -p demo-app --bins
cargo build --release -q -p slipway --example deploy_under_load
exec ./target/release/examples/deploy_under_load "$@"
