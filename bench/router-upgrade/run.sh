#!/usr/bin/env bash
# The proxy replaces itself 10 times, 2 s apart, under constant load
# (HTTP/1.1 keep-alive and new connections, HTTP/2, 100 WebSockets):
# slipway's self-upgrade vs `nginx -s reload` vs HAProxy `-x sock -sf pid`
# (expose-fd listeners), same upstreams, same 5 s limit for long-lived
# connections. Prints failed requests and dropped WebSockets per proxy.
# Usage: bench/router-upgrade/run.sh [--runs 3] [--reloads 10] [--rate 600] [--websockets 100]
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
cargo build --release -q -p slipway -p demo-app --bins
cargo build --release -q -p slipway --example router_upgrade
exec ./target/release/examples/router_upgrade "$@"
