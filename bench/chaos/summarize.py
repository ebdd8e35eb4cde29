"""Sums up the `chaos {json}` lines of the control plane's chaos tests (stdin): one Markdown row per kind of kill."""
import json
import statistics
import sys

rows = [json.loads(line.split(" ", 1)[1]) for line in sys.stdin if line.startswith("chaos {")]
print("| killed | runs | strategies | killed at (share of the deploy's span) min / median / max | phases hit | promoted "
      "| requests | failed | why | WebSockets dropped | recovery median / max (ms) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for kind in ["control", "agent", "router", "router after control", "instance"]:
    rs = [r for r in rows if r["kind"] == kind]
    if not rs:
        continue
    why = {}
    for r in rs:
        for k, v in r["errors"].items():
            why[k] = why.get(k, 0) + v
        for k, v in r["statuses"].items():
            if not k.startswith("2"):
                why["HTTP " + k] = why.get("HTTP " + k, 0) + v
    strategies = {}
    for r in rs:
        strategies[r["strategy"]] = strategies.get(r["strategy"], 0) + 1
    rec = [r["recovery_ms"] for r in rs]
    share = sorted(r["at_ms"] / r["span_ms"] for r in rs)
    phases = {}
    for r in rs:
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    promoted = sum(r["outcome"] == "promoted" for r in rs)
    cells = [
        kind,
        len(rs),
        ", ".join(f"{k} {v}" for k, v in sorted(strategies.items())),
        f"{share[0]:.2f} / {statistics.median(share):.2f} / {share[-1]:.2f}",
        ", ".join(f"{k} {v}" for k, v in sorted(phases.items())),
        promoted,
        sum(r["sent"] for r in rs),
        sum(r["failed"] for r in rs),
        ", ".join(f"{k}: {v}" for k, v in why.items()) or "-",
        sum(r["ws_dropped"] for r in rs),
        f"{statistics.median(rec):.0f} / {max(rec)}",
    ]
    print("| " + " | ".join(str(c) for c in cells) + " |")
