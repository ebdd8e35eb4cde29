#!/usr/bin/env python3
"""Router throughput and latency: direct vs slipway vs nginx vs HAProxy, same upstream, same load, one worker each.

Usage: python3 bench/router/run.py [--rounds 5] [--seconds 10] [--rate 20000] [--conns 64]
                                  [--slipway NAME=BINARY ...] [--no-build]

Installs wrk, nginx and haproxy from Debian and oha from crates.io if missing,
builds slipway and demo-app in release mode, pins every proxy (and a second
upstream used for the direct baseline) to CPU 0 and the load generator plus
the proxies' upstream to CPU 1, then interleaves the targets round by round.
--slipway adds another slipway binary as a target of the same run (say, the
build before a change), and --no-build serves target/release as it is.
Results (medians over rounds) go to bench/out/router.json and a markdown table
on stdout.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "bench", "out")


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_tools(build=True):
    missing = [p for p, b in [("wrk", "wrk"), ("nginx-light", "nginx"), ("haproxy", "haproxy")] if not shutil.which(b)]
    if missing:
        print("installing", missing, file=sys.stderr)
        sh("apt-get", "install", "-y", "-q", *missing, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("oha"):
        print("installing oha from crates.io (a few minutes)", file=sys.stderr)
        sh("cargo", "install", "oha", "--locked")
    if build:
        sh("cargo", "build", "--release", "-q", "-p", "slipway", "-p", "demo-app", cwd=ROOT)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, limit=10):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def spawn(cpu, args, env=None, **kw):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + args, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)


def wrk(port, seconds, conns, headers):
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    def dur(s):
        v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
        return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[u]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = dur(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = dur(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)) if "Socket errors" in out else 0
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": non2xx + sock}


def session_cpu_seconds(sid):
    """CPU time (user + system) of every process in session `sid`."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # session id
            total += int(fields[11]) + int(fields[12])
    return total / tick


def oha(port, seconds, conns, rate, headers, sid=None):
    args = ["taskset", "-c", "1", "oha", "-z", f"{seconds}s", "-c", str(conns), "-q", str(rate),
            "--latency-correction", "--no-tui", "--output-format", "json"]
    for h in headers:
        args += ["-H", h]
    cpu0 = session_cpu_seconds(sid) if sid else 0
    d = json.loads(subprocess.run(args + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout)
    cpu = session_cpu_seconds(sid) - cpu0 if sid else 0
    codes = d.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    # oha cancels requests still in flight when the time is up; those are not failures.
    errs = {k: v for k, v in d.get("errorDistribution", {}).items() if "aborted due to deadline" not in k}
    errors = sum(v for k, v in codes.items() if k != "200") + sum(errs.values())
    p = d["latencyPercentiles"]
    done = ok + errors
    return {"rps": d["summary"]["requestsPerSec"], "p50_ms": p["p50"] * 1e3, "p99_ms": p["p99"] * 1e3, "ok": ok, "errors": errors,
            "cpu_us_per_req": cpu * 1e6 / done if done else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--rate", type=int, default=20000, help="open-loop request rate")
    ap.add_argument("--slipway", action="append", default=[], metavar="NAME=BINARY",
                    help="another slipway binary to measure as target NAME")
    ap.add_argument("--no-build", action="store_true", help="do not build; serve target/release as it is")
    a = ap.parse_args()
    ensure_tools(build=not a.no_build)
    tmp = tempfile.mkdtemp(prefix="slipway-bench-")
    procs = []
    try:
        up, direct = free_port(), free_port()
        demo = os.path.join(ROOT, "target/release/demo-app")
        procs.append(spawn(1, [demo], {"PORT": str(up), "SLIPWAY_RELEASE": "v1", "DEMO_THREADS": "1"}))
        procs.append(spawn(0, [demo], {"PORT": str(direct), "SLIPWAY_RELEASE": "v1", "DEMO_THREADS": "1"}))
        sp, ng, ha = free_port(), free_port(), free_port()
        with open(f"{tmp}/routes.toml", "w") as f:
            f.write(f'[[release]]\nid = "v1"\nweight = 100\ninstance = [{{ id = "v1-0", addr = "127.0.0.1:{up}" }}]\n')
        with open(f"{tmp}/router.toml", "w") as f:
            f.write(f'state_dir = "state"\nworkers = 1\ninitial_routes = "routes.toml"\nadmin = {{ listen = "127.0.0.1:0" }}\n'
                    f'health = {{ kind = "none" }}\n[[listener]]\nname = "web"\nkind = "http"\naddr = "127.0.0.1:{sp}"\n')
        key = os.urandom(32).hex()  # one cookie key, so the session cookie is valid on every slipway target
        for state in ["state"] + [f"state-{s.split('=', 1)[0]}" for s in a.slipway]:
            os.makedirs(f"{tmp}/{state}", mode=0o700)
            fd = os.open(f"{tmp}/{state}/cookie.key", os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, key.encode() + b"\n")
            os.close(fd)
        procs.append(spawn(0, [os.path.join(ROOT, "target/release/slipway"), "router", "--config", f"{tmp}/router.toml"]))
        extra = {}
        for spec in a.slipway:
            name, binary = spec.split("=", 1)
            port = free_port()
            with open(f"{tmp}/{name}.toml", "w") as f:
                f.write(f'state_dir = "state-{name}"\nworkers = 1\ninitial_routes = "routes.toml"\n'
                        f'admin = {{ listen = "127.0.0.1:0" }}\nhealth = {{ kind = "none" }}\n'
                        f'[[listener]]\nname = "web"\nkind = "http"\naddr = "127.0.0.1:{port}"\n')
            extra[name] = (port, spawn(0, [os.path.abspath(binary), "router", "--config", f"{tmp}/{name}.toml"]))
        with open(f"{tmp}/nginx.conf", "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 8192; }}
http {{ access_log off;
  upstream app {{ server 127.0.0.1:{up}; keepalive 256; }}
  server {{ listen 127.0.0.1:{ng};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}
""")
        procs.append(spawn(0, ["nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp]))
        with open(f"{tmp}/haproxy.cfg", "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:{ha}
  default_backend be
backend be
  server s1 127.0.0.1:{up}
""")
        procs.append(spawn(0, ["haproxy", "-f", f"{tmp}/haproxy.cfg"]))
        procs.extend(p for _, p in extra.values())
        for p in (up, direct, sp, ng, ha, *(port for port, _ in extra.values())):
            wait_port(p)
        # A real session: the same valid cookie goes to every target.
        cookie = urllib.request.urlopen(f"http://127.0.0.1:{sp}/").headers["set-cookie"].split(";")[0]
        headers = [f"Cookie: {cookie}"]
        targets = {"direct": direct, "slipway": sp, "nginx": ng, "haproxy": ha}
        sessions = {"direct": procs[1].pid, "slipway": procs[2].pid, "nginx": procs[3].pid, "haproxy": procs[4].pid}
        for name, (port, proc) in extra.items():
            targets[name], sessions[name] = port, proc.pid
        closed = {k: [] for k in targets}
        opened = {k: [] for k in targets}
        names = list(targets)
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                wrk(targets[name], 2, a.conns, headers)  # warm-up
                closed[name].append(wrk(targets[name], a.seconds, a.conns, headers))
                opened[name].append(oha(targets[name], a.seconds, a.conns, a.rate, headers, sessions[name]))
                print(f"round {r+1} {name}: closed {closed[name][-1]} open {opened[name][-1]}", file=sys.stderr)
        med = lambda rows, k: statistics.median(x[k] for x in rows)
        res = {"machine": f"{os.cpu_count()} cores, {os.uname().release}", "rounds": a.rounds, "seconds": a.seconds,
               "conns": a.conns, "rate": a.rate, "targets": {}}
        for n in names:
            res["targets"][n] = {
                "closed": {k: med(closed[n], k) for k in ("rps", "p50_ms", "p99_ms")} | {"errors": sum(x["errors"] for x in closed[n])},
                "open": {k: med(opened[n], k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")} | {"errors": sum(x["errors"] for x in opened[n])},
            }
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "router.json"), "w") as f:
            json.dump(res | {"raw": {"closed": closed, "open": opened}}, f, indent=1)
        t = res["targets"]
        print(f"| target | closed-loop req/s | vs direct | vs nginx | p50 ms | p99 ms | open-loop {a.rate}/s p50 ms | p99 ms | p99 vs nginx | CPU µs/req | CPU vs nginx | errors |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in names:
            c, o = t[n]["closed"], t[n]["open"]
            print(f"| {n} | {c['rps']:.0f} | {c['rps']/t['direct']['closed']['rps']:.2f} | {c['rps']/t['nginx']['closed']['rps']:.2f} "
                  f"| {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {o['p50_ms']:.2f} | {o['p99_ms']:.2f} "
                  f"| {o['p99_ms']/t['nginx']['open']['p99_ms']:.2f} | {o['cpu_us_per_req']:.1f} "
                  f"| {o['cpu_us_per_req']/t['nginx']['open']['cpu_us_per_req']:.2f} | {c['errors'] + o['errors']} |")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
