#!/usr/bin/env bash
# A rebuilt binary with a one-line code change: SQLite's amalgamation (shipped in the
# libsqlite3-sys crate that rusqlite's bundled build fetches) compiled as libsqlite3.so, then the
# same with one line of C changed (an error message). Usage: sqlite.sh OUT_DIR
set -euo pipefail
out=$1
src=$(ls -d ~/.cargo/registry/src/*/libsqlite3-sys-*/sqlite3 2>/dev/null | sort -V | tail -1)
[ -n "$src" ] || { (cd "$(dirname "$0")/../.." && cargo fetch -q); src=$(ls -d ~/.cargo/registry/src/*/libsqlite3-sys-*/sqlite3 | sort -V | tail -1); }
mkdir -p "$out/src" "$out/v1/lib" "$out/v1/include" "$out/v2/lib" "$out/v2/include"
cp "$src/sqlite3.c" "$src/sqlite3.h" "$out/src/"
build() {
  gcc -O2 -fPIC -shared -DSQLITE_THREADSAFE=1 -o "$out/$1/lib/libsqlite3.so" "$out/src/sqlite3.c" -lpthread -lm
  cp "$out/src/sqlite3.h" "$out/$1/include/"
}
build v1
# The one-line change.
grep -q '"database disk image is malformed"' "$out/src/sqlite3.c"
sed -i '0,/"database disk image is malformed"/s//"the database disk image is malformed"/' "$out/src/sqlite3.c"
build v2
ls -l "$out/v1/lib" "$out/v2/lib"
