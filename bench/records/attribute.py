#!/usr/bin/env python3
"""Charges the servers' scheduling waits during a crawl to what ran meanwhile.

Reads DIR/pids.txt and DIR/perf.txt as bench/records/trace.sh leaves them.
Readers are the bench process's threads and PostgreSQL's client backends that
are not the crawler's ("slipway background"). For every wake-up of a reader
that waited over 0.3 ms before it ran, the tasks that ran on the CPU it was
woken onto in between are named; waits are summed per such set of tasks.
Also prints the WAL writer's wake-ups per waker.

    python3 bench/records/attribute.py DIR
"""
import bisect
import collections
import re
import sys

LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)$")


def labels(path):
    lines = open(path).read().splitlines()
    head = dict(kv.split("=") for kv in lines[0].split())
    bench, crawler = int(head["bench"]), int(head["crawler"])
    label = {}
    for line in lines[1:]:
        parts = line.split("|")
        if len(parts) == 3:  # pg_stat_activity: pid | application_name | backend_type
            pid, app, kind = int(parts[0]), parts[1], parts[2]
            if app == "slipway background":
                label[pid] = "crawler-backend"
            elif kind == "client backend":
                label[pid] = "reader-backend" if app != "psql" else "psql"
            else:
                label[pid] = "pg-" + kind.replace(" ", "-")
            continue
        fields = line.split()  # ps: pid tid ni comm
        if len(fields) >= 4 and fields[0].isdigit() and fields[1].isdigit():
            pid, tid = int(fields[0]), int(fields[1])
            if pid == bench:
                label[tid] = "reader-thread"
            elif pid == crawler:
                label[tid] = "crawler-thread"
    return label


def main(d):
    label = labels(d + "/pids.txt")
    name = lambda tid, comm: label.get(tid, comm.split("/")[0] if comm.startswith(("kworker", "ksoftirqd")) else comm)
    wal_writer = next((t for t, l in label.items() if l == "pg-walwriter"), None)
    runs = collections.defaultdict(list)  # cpu -> [(time, tid, comm)] switched in
    woken = {}  # tid -> (time, target cpu)
    waits = []  # (wait, woken at, ran at, cpu woken onto)
    wal_wakers = collections.Counter()
    for line in open(d + "/perf.txt"):
        m = LINE.match(line)
        if not m:
            continue
        comm, _pid, tid, cpu, t, event, trace = m.groups()
        t, cpu = float(t), int(cpu)
        if event == "sched_switch":
            nxt = re.search(r"next_comm=(.*) next_pid=(\d+)", trace)
            ntid, ncomm = int(nxt.group(2)), nxt.group(1)
            runs[cpu].append((t, ntid, ncomm))
            if ntid in woken:
                at, target = woken.pop(ntid)
                if label.get(ntid, "").startswith("reader"):
                    waits.append((t - at, at, t, target))
        elif event == "sched_wakeup":
            w = re.search(r"pid=(\d+) prio=\d+ target_cpu=(\d+)", trace)
            wtid = int(w.group(1))
            woken[wtid] = (t, int(w.group(2)))
            if wtid == wal_writer:
                wal_wakers[name(int(tid), comm)] += 1
    slow = [w for w in waits if w[0] > 0.0003]
    print(f"reader wake-ups: {len(waits)}; waited > 0.3 ms: {len(slow)}; > 1 ms: {sum(w[0] > 0.001 for w in waits)}")
    total, count = collections.Counter(), collections.Counter()
    for wait, at, ran, cpu in slow:
        seq = runs[cpu]
        i = max(bisect.bisect_right([s[0] for s in seq], at) - 1, 0)
        who = set()
        while i < len(seq) and seq[i][0] < ran:
            who.add(name(seq[i][1], seq[i][2]))
            i += 1
        key = f"cpu{cpu}: " + ", ".join(sorted(who - {"reader-thread", "reader-backend"}) or ["other readers only"])
        total[key] += wait
        count[key] += 1
    print("waits over 0.3 ms, summed per what ran on that CPU meanwhile (besides other readers):")
    for key, wait in total.most_common(20):
        print(f"  {wait * 1000:8.1f} ms  {count[key]:5d}  {key}")
    if wal_writer is not None:
        print(f"WAL writer wake-ups: {sum(wal_wakers.values())}, by: {dict(wal_wakers.most_common(6))}")


if __name__ == "__main__":
    main(sys.argv[1])
