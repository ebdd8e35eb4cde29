#!/usr/bin/env bash
# Judge evaluation: seeded simulation of 1,000 deploys per case, fed to slipway's
# judge through its real windowing (judge::Tracker) and to Flagger-style and
# Kayenta-style reference judges on the same traffic.
# Writes bench/out/judge.json and prints a markdown table.
# Usage: bench/judge/run.sh [--deploys N] [--threads T] [--only FAMILY]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p judge --features sim --example sim
exec ./target/release/examples/sim --out bench/out/judge.json "$@"
