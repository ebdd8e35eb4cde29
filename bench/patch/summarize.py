#!/usr/bin/env python3
"""Summarizes bench/out/patch/<set>-<round>.json: sizes per upgrade path with ratios to the best
per-file delta tool and to chunks alone, and medians of publish and apply times."""
import glob
import json
import os
import statistics
import sys


def mib(n):
    return "n/a" if n is None else f"{n / 1048576:.2f}"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/out/patch"
    sets = {}
    for p in sorted(glob.glob(os.path.join(out, "*-*.json"))):
        name = os.path.basename(p).rsplit("-", 1)[0]
        sets.setdefault(name, []).append(json.load(open(p)))
    print("| set | path | full MiB | fresh MiB | slipway MiB (chunks + deltas) | chunks alone | rsync 64 KiB | zstd | bsdiff | xdelta3 | vs best delta tool | vs chunks alone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in sets.items():
        for row in runs[0]["paths"]:
            tools = {t: row[t] for t in ("zstd", "bsdiff", "xdelta3") if row[t] is not None}
            best = min(tools, key=tools.get)
            print(f"| {name} | {row['path']} | {mib(row['content'])} | {mib(row['fresh'])} | "
                  f"{mib(row['slipway'])} ({mib(row['slipway_chunks'])} + {mib(row['slipway_deltas'])}) | "
                  f"{mib(row['chunks_alone'])} | {mib(row['rsync64'])} | {mib(row['zstd'])} | {mib(row['bsdiff'])} | "
                  f"{mib(row['xdelta3'])} | {row['slipway'] / tools[best]:.2f} ({best}) | "
                  f"{row['slipway'] / row['chunks_alone']:.2f} |")
    print()
    print("| set | runs | publish s (per release, median) | stored MiB per release | fresh apply MB/s (median) | cp -a + sync MB/s (median) | apply / cp per round | fresh peak RSS MiB (max) | upgrade apply s | upgrade peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in sets.items():
        n = len(runs[0]["publishes"])
        pub = [statistics.median(r["publishes"][i]["secs"] for r in runs) for i in range(n)]
        stored = [runs[0]["publishes"][i]["stored"] for i in range(n)]
        mbps = statistics.median(r["apply"]["fresh_mb_per_s"] for r in runs)
        copies = [r["apply"].get("copy_mb_per_s") for r in runs]
        cp = f"{statistics.median(copies):.0f}" if None not in copies else "-"
        ratios = " / ".join(f"{r['apply']['fresh_mb_per_s'] / c:.2f}" for r, c in zip(runs, copies) if c)
        peak = max(r["apply"]["fresh_peak_kib"] for r in runs) / 1024
        ups = [r["apply"]["upgrade"] for r in runs if r["apply"]["upgrade"]]
        up_s = f"{statistics.median(u['secs'] for u in ups):.2f}" if ups else "-"
        up_m = f"{max(u['peak_kib'] for u in ups) / 1024:.0f}" if ups else "-"
        print(f"| {name} | {len(runs)} | {' / '.join(f'{s:.1f}' for s in pub)} | {' / '.join(mib(s) for s in stored)} | "
              f"{mbps:.0f} | {cp} | {ratios or '-'} | {peak:.0f} | {up_s} | {up_m} |")


if __name__ == "__main__":
    main()
