#!/usr/bin/env bash
# The patch benchmark: real data sets, slipway against the tools people use, in the same run.
#   numpy  three consecutive numpy wheels from PyPI (2.2.4, 2.2.5, 2.2.6), unpacked
#   sqlite libsqlite3.so rebuilt with one line of C changed
#   game   a synthetic game build of real bytes in one big pack file (GAME_MIB, default 2048)
#   scale  a 5 GiB build (SCALE_MIB) published at zstd level 3: apply throughput and client memory
# Writes bench/out/patch/<set>-<round>.json and prints the summary (bench/patch/summarize.py).
# Usage: bench/patch/run.sh [ROUNDS] [SETS...]     e.g. bench/patch/run.sh 3 numpy sqlite
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
shift || true
sets=${*:-numpy sqlite game scale}
out=bench/out/patch
mkdir -p "$out"

need=()
for t in zstd bsdiff xdelta3; do command -v "$t" >/dev/null || need+=("$t"); done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
cargo build --release -q -p slipway --bin slipway
cargo build --release -q -p patch --example bench
bench=target/release/examples/bench
slipway=$PWD/target/release/slipway

for s in $sets; do
  case $s in
    numpy)
      for v in 2.2.4 2.2.5 2.2.6; do
        if [ ! -d "$out/numpy-$v" ]; then
          pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
            "numpy==$v" -d "$out/wheels"
          python3 -m zipfile -e "$out"/wheels/numpy-$v-*.whl "$out/numpy-$v"
        fi
      done
      args=(--level 19 --paths 1-2,2-3,1-3 "$out/numpy-2.2.4" "$out/numpy-2.2.5" "$out/numpy-2.2.6") ;;
    sqlite)
      [ -d "$out/sqlite/v2" ] || bench/patch/sqlite.sh "$out/sqlite" >/dev/null
      args=(--level 19 --paths 1-2 "$out/sqlite/v1" "$out/sqlite/v2") ;;
    game)
      [ -d "$out/game/v2" ] || python3 bench/patch/gamebuild.py "$out/game" "${GAME_MIB:-2048}"
      args=(--level 19 --paths 1-2 "$out/game/v1" "$out/game/v2") ;;
    scale)
      [ -d "$out/scale/v1" ] || python3 bench/patch/gamebuild.py "$out/scale" "${SCALE_MIB:-5120}"
      args=(--level 3 "$out/scale/v1") ;;
    *) echo "unknown set $s" >&2; exit 64 ;;
  esac
  for r in $(seq 1 "$rounds"); do
    echo "bench/patch: $s round $r" >&2
    "$bench" --work "/tmp/slipway-bench-patch-$s" --slipway "$slipway" --json "$out/$s-$r.json" "${args[@]}" \
      >/dev/null 2>"$out/$s-$r.log"
  done
  rm -rf "/tmp/slipway-bench-patch-$s"
done
python3 bench/patch/summarize.py "$out"
