#!/usr/bin/env bash
# bench/records: N realistic (~2 KB) player records on SQLite and on a
# throwaway PostgreSQL. Per backend and run: stop-the-world rewrite (the
# seed's way: service down, read-upgrade-write everything) vs the crawler
# alone and under read load; upgrade-on-read cost; read p99 idle vs during
# the crawl. Prints one RESULT line per run and the medians.
#
#   bench/records/run.sh [--records 1000000] [--runs 3] [--backends "sqlite postgres"] [--crawl-rate R]
#
# The crawler under read load runs as its own process (as `slipway records
# crawl` runs beside the servers); --crawl-rate limits it (records/s).
# PostgreSQL runs as deployed: its own durability defaults (fsync,
# synchronous_commit and full_page_writes on, which the test suite's
# throwaway server turns off for speed), shared_buffers = 4GB and
# max_wal_size = 4GB (sized for a 2 GB table); the same server serves both
# contenders.
set -euo pipefail
cd "$(dirname "$0")/../.."
records=1000000; runs=3; backends="sqlite postgres"; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --records) records="$2"; shift 2;;
    --runs) runs="$2"; shift 2;;
    --backends) backends="$2"; shift 2;;
    --crawl-rate) extra=(--crawl-rate "$2"); shift 2;;
    *) echo "usage: $0 [--records N] [--runs N] [--backends 'sqlite postgres'] [--crawl-rate R]" >&2; exit 64;;
  esac
done
cargo build --release -q -p records --example records_bench
bin=target/release/examples/records_bench
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -sr)"
for backend in $backends; do
  out=$(mktemp)
  for run in $(seq "$runs"); do
    tmp=$(mktemp -d /tmp/slipway-bench-records.XXXXXX)
    if [ "$backend" = postgres ]; then
      read -r url pgdir < <(PG_THROWAWAY_OPTS="-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=4GB -c max_wal_size=4GB" scripts/pg-throwaway)
    else
      url="sqlite:$tmp/records.db"; pgdir=""
    fi
    echo "== $backend run $run ($records records)"
    "$bin" --db "$url" --records "$records" "${extra[@]}" | tee -a "$out"
    [ -n "$pgdir" ] && scripts/pg-throwaway stop "$pgdir"
    rm -rf "$tmp"
  done
  echo "== $backend medians of $runs runs"
  grep '^RESULT' "$out" | python3 -c '
import sys, statistics
rows = [dict(kv.split("=") for kv in line.split()[1:]) for line in sys.stdin]
for k in rows[0]:
    print(f"  {k}: {statistics.median(float(r[k]) for r in rows):g}")
stw = statistics.median(float(r["stw_s"]) for r in rows)
cr = statistics.median(float(r["crawl_s"]) for r in rows)
p = statistics.median(float(r["crawl_p99_ms"]) / float(r["idle_p99_ms"]) for r in rows)
print(f"  crawler/stop-the-world time: {cr/stw:.2f} (bar <= 1.00); read p99 during/idle: {p:.2f} (bar <= 2.00)")
'
  rm -f "$out"
done
