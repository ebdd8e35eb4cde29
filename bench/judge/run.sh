#!/usr/bin/env bash
# Judge evaluation: seeded simulation of 1,000 deploys per traffic cell, judged
# by slipway's judge and by Flagger-style and Kayenta-style reference judges.
# Writes bench/out/judge.json and prints a markdown table.
# Usage: bench/judge/run.sh [--deploys N] [--seconds S] [--threads T]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p judge --example sim
exec ./target/release/examples/sim --out bench/out/judge.json "$@"
