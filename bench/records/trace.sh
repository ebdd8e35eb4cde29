#!/usr/bin/env bash
# bench/records/trace.sh: who makes the servers' reads wait during a crawl.
# Runs records_bench against a throwaway PostgreSQL (the same settings as
# run.sh) and, TRACE_DELAY seconds (default 3) into the crawl under reads,
# records the scheduler's switch and wake-up tracepoints on every CPU for
# 10 s with `perf`; then attribute.py charges every reader wake-up that
# waited over 0.3 ms to what ran on that CPU meanwhile.
#
#   bench/records/trace.sh [--records 300000] [records_bench options...]
#
# Needs root (or perf_event_paranoid <= -1) for system-wide tracepoints.
set -euo pipefail
cd "$(dirname "$0")/../.."
records=300000
if [ "${1:-}" = "--records" ]; then records="$2"; shift 2; fi
cargo build --release -q -p records --example records_bench
bin=target/release/examples/records_bench
out=$(mktemp -d /tmp/slipway-trace.XXXXXX)
read -r url pgdir < <(PG_THROWAWAY_OPTS="-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=4GB -c max_wal_size=4GB" scripts/pg-throwaway)
trap 'scripts/pg-throwaway stop "$pgdir"' EXIT
RECORDS_BENCH_SLOW_LOG=1 "$bin" --db "$url" --records "$records" "$@" > "$out/bench.txt" 2>&1 &
bench=$!
# The crawl under reads runs as a child process with --crawl-to.
until pgrep -f -- "--crawl-to" >/dev/null; do
  kill -0 "$bench" 2>/dev/null || { cat "$out/bench.txt" >&2; exit 1; }
  sleep 0.5
done
sleep "${TRACE_DELAY:-3}"
crawler=$(pgrep -f -- "--crawl-to" | head -1)
{
  echo "bench=$bench crawler=$crawler"
  psql -XAtq "$url" -c "select pid, coalesce(application_name, ''), backend_type from pg_stat_activity"
  ps -eLo pid,tid,ni,comm
} > "$out/pids.txt"
perf record -q -o "$out/perf.data" -e sched:sched_switch -e sched:sched_wakeup -a -- sleep 10 2>/dev/null
wait "$bench"
perf script -i "$out/perf.data" -F comm,pid,tid,cpu,time,event,trace > "$out/perf.txt" 2>/dev/null
grep -v '^SLOW' "$out/bench.txt"
python3 bench/records/attribute.py "$out"
echo "(raw data in $out)"
