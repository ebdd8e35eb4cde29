#!/usr/bin/env python3
"""Router over HTTP/2 and other protocols: slipway vs nginx vs HAProxy, same upstream, one core each, interleaved.

Usage: python3 bench/router/protocols.py [--mode h2c ...] [--rounds 5] [--seconds 10] [--conns 16] [--streams 10]
                                        [--slipway NAME=BINARY ...] [--no-build] [--bin-dir DIR] [--smoke]

Modes (all closed loop, proxy CPU divided by what it served):
  h2c       h2load, --conns connections x --streams concurrent streams, HTTP/2 prior knowledge.
  h1        h2load --h1, 64 keep-alive connections.
  newconn   wrk with `Connection: close`, 16 connections: a new TCP connection for every request.
  tls-h1    h2load --h1 over TLS (ALPN http/1.1), 16 keep-alive connections.
  tls-h2    h2load over TLS (ALPN h2), --conns x --streams.
  tls-full  openssl s_time -new: a full TLS handshake per connection (CPU per handshake).
  tls-resumed  openssl s_time -reuse: resumed handshakes.
TLS uses one self-signed ECDSA P-256 certificate for every proxy.

Setup as bench/router/run.py: one demo-app upstream (one thread) and the load
generator on CPU 1, each proxy on CPU 0 with one worker (slipway `workers = 1`,
nginx `worker_processes 1` with upstream keep-alive, HAProxy `nbthread 1` with
`http-reuse always`), every request with a valid slipway session cookie. Each
proxy's CPU time (user + system of its processes) is divided by the requests
served; p99 comes from h2load's per-request log. Targets are interleaved round
by round; the summary (medians) goes to bench/out/router-protocols.json and a
markdown table with ratios to both peers to stdout. --smoke: one short round,
and it fails unless every target answered every request with a 2xx (no timing
is checked); the test suite runs this.
"""
import argparse, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from run import OUT, ROOT, free_port, session_cpu_seconds, sh, spawn, wait_port  # noqa: E402

PEERS = ("nginx", "haproxy")


def ensure_tools(build):
    missing = [p for p, b in [("nghttp2-client", "h2load"), ("nginx-light", "nginx"), ("haproxy", "haproxy")]
               if not shutil.which(b)]
    if missing:
        print("installing", missing, file=sys.stderr)
        sh("apt-get", "install", "-y", "-q", *missing, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if build:
        sh("cargo", "build", "--release", "-q", "-p", "slipway", "-p", "demo-app", cwd=ROOT)


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def h2load(url, seconds, conns, streams, headers, sid, tmp, warmup=1, h1=False):
    """One closed-loop h2load run: req/s, p50/p99 (ms), errors, proxy CPU µs per request."""
    log = f"{tmp}/h2load.log"
    args = ["taskset", "-c", "1", "h2load", "-t1", "-c", str(conns), "-m", str(streams)] + (["--h1"] if h1 else [])
    for h in headers:
        args += ["-H", h]
    if warmup:
        subprocess.run(args + ["-D", str(warmup), url], capture_output=True)
    args += ["-D", str(seconds), "--log-file", log]
    cpu0 = session_cpu_seconds(sid)
    t0 = time.time()
    out = subprocess.run(args + [url], capture_output=True, text=True).stdout
    wall = time.time() - t0
    cpu = session_cpu_seconds(sid) - cpu0
    lat, ok, bad = [], 0, 0
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            status, us = int(parts[1]), int(parts[2])
            if 200 <= status < 300:
                ok += 1
                lat.append(us / 1000)
            else:
                bad += 1
    os.remove(log)
    # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    req = {w: int(n) for n, w in re.findall(r"(\d+) (total|done|failed|errored|timeout)", _line(out, "requests:"))}
    done = req.get("done", ok + bad)
    rps = float(m.group(1)) if (m := re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)) else ok / seconds
    return {"rps": rps, "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99), "ok": ok,
            "errors": max(bad, req.get("failed", 0)),
            "cpu_us_per_req": cpu * 1e6 / done if done else 0, "wall_s": wall}


def wrk_close(url, seconds, conns, headers, sid, warmup=1):
    """wrk with `Connection: close`: every request on a new connection."""
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", "--latency", "-H", "Connection: close"]
    for h in headers:
        args += ["-H", h]
    if warmup:
        subprocess.run(args + [f"-d{warmup}s", url], capture_output=True)
    cpu0 = session_cpu_seconds(sid)
    out = subprocess.run(args + [f"-d{seconds}s", url], capture_output=True, text=True).stdout
    cpu = session_cpu_seconds(sid) - cpu0

    def dur(x):
        v, u = re.match(r"([\d.]+)(us|ms|s)", x).groups()
        return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[u]
    done = int(m.group(1)) if (m := re.search(r"(\d+) requests in", out)) else 0
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)) if "Socket errors" in out else 0
    p50 = dur(m.group(1)) if (m := re.search(r"\s50%\s+(\S+)", out)) else 0
    p99 = dur(m.group(1)) if (m := re.search(r"\s99%\s+(\S+)", out)) else 0
    rps = float(m.group(1)) if (m := re.search(r"Requests/sec:\s+([\d.]+)", out)) else 0
    # A close races the next request now and then; wrk counts those reads as errors: only non-2xx count here.
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "ok": done - non2xx, "errors": non2xx, "socket_errors": sock,
            "cpu_us_per_req": cpu * 1e6 / done if done else 0}


def s_time(port, seconds, reuse, sid):
    """openssl s_time: TLS handshakes per second (full, or resumed with `reuse`), proxy CPU µs per handshake."""
    args = ["taskset", "-c", "1", "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-time", str(seconds),
            "-reuse" if reuse else "-new"]
    cpu0 = session_cpu_seconds(sid)
    out = subprocess.run(args, capture_output=True, text=True).stdout
    cpu = session_cpu_seconds(sid) - cpu0
    m = re.search(r"(\d+) connections in ([\d.]+)s", out)
    n, secs = (int(m.group(1)), float(m.group(2))) if m else (0, seconds)
    return {"rps": n / seconds, "p50_ms": 0.0, "p99_ms": 0.0, "ok": n, "errors": 0 if n else 1,
            "cpu_us_per_req": cpu * 1e6 / n if n else 0, "client_cpu_s": secs}


def _line(out, prefix):
    return next((line for line in out.splitlines() if line.startswith(prefix)), "")


def write_configs(tmp, up, ports):
    """Configs for every target; `ports[name]` has its `h1`, `h2c` and `tls` ports (slipway serves h1 and h2c on
    one port, nginx and HAProxy need one each)."""
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
       "-subj", "/CN=localhost", "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem", capture_output=True)
    with open(f"{tmp}/both.pem", "w") as f:
        f.write(open(f"{tmp}/cert.pem").read() + open(f"{tmp}/key.pem").read())
    with open(f"{tmp}/routes.toml", "w") as f:
        f.write(f'[[release]]\nid = "v1"\nweight = 100\ninstance = [{{ id = "v1-0", addr = "127.0.0.1:{up}" }}]\n')
    key = os.urandom(32).hex()  # one cookie key, so the session cookie is valid on every slipway target
    for name, p in ports.items():
        if name in PEERS:
            continue
        state = f"{tmp}/state-{name}"
        os.makedirs(state, mode=0o700)
        fd = os.open(f"{state}/cookie.key", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, key.encode() + b"\n")
        os.close(fd)
        with open(f"{tmp}/{name}.toml", "w") as f:
            f.write(f'state_dir = "{state}"\nworkers = 1\ninitial_routes = "routes.toml"\n'
                    f'admin = {{ listen = "127.0.0.1:0" }}\nhealth = {{ kind = "none" }}\n'
                    f'[[listener]]\nname = "web"\nkind = "http"\naddr = "127.0.0.1:{p["h1"]}"\n'
                    f'[[listener]]\nname = "tls"\nkind = "http"\naddr = "127.0.0.1:{p["tls"]}"\n'
                    f'tls = {{ cert = "{tmp}/cert.pem", key = "{tmp}/key.pem" }}\n')
    ng, ha = ports["nginx"], ports["haproxy"]
    loc = """location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }"""
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 8192; }}
http {{ access_log off; http2_max_concurrent_streams 128; keepalive_requests 100000;
  ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;
  ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
  upstream app {{ server 127.0.0.1:{up}; keepalive 256; }}
  server {{ listen 127.0.0.1:{ng["h1"]}; {loc} }}
  server {{ listen 127.0.0.1:{ng["h2c"]} http2; {loc} }}
  server {{ listen 127.0.0.1:{ng["tls"]} ssl http2; {loc} }} }}
""")
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
  bind 127.0.0.1:{ha["h1"]}
  bind 127.0.0.1:{ha["h2c"]} proto h2
  bind 127.0.0.1:{ha["tls"]} ssl crt {tmp}/both.pem alpn h2,http/1.1
  default_backend be
backend be
  server s1 127.0.0.1:{up}
""")


MODES = ["h2c", "h1", "newconn", "tls-h1", "tls-h2", "tls-full", "tls-resumed"]


def measure(mode, a, p, headers, sid, tmp, warmup):
    """One run of `mode` against a target whose ports are `p`."""
    if mode == "h2c":
        return h2load(f"http://127.0.0.1:{p['h2c']}/", a.seconds, a.conns, a.streams, headers, sid, tmp, warmup)
    if mode == "h1":
        return h2load(f"http://127.0.0.1:{p['h1']}/", a.seconds, 64, 1, headers, sid, tmp, warmup, h1=True)
    if mode == "newconn":
        return wrk_close(f"http://127.0.0.1:{p['h1']}/", a.seconds, 16, headers, sid, warmup)
    if mode == "tls-h1":
        return h2load(f"https://127.0.0.1:{p['tls']}/", a.seconds, 16, 1, headers, sid, tmp, warmup, h1=True)
    if mode == "tls-h2":
        return h2load(f"https://127.0.0.1:{p['tls']}/", a.seconds, a.conns, a.streams, headers, sid, tmp, warmup)
    return s_time(p["tls"], a.seconds, mode == "tls-resumed", sid)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", action="append", choices=MODES, help="protocols to measure (default: all)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams per HTTP/2 connection")
    ap.add_argument("--slipway", action="append", default=[], metavar="NAME=BINARY",
                    help="another slipway binary to measure as target NAME")
    ap.add_argument("--no-build", action="store_true", help="do not build; serve target/release as it is")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"),
                    help="where slipway and demo-app are (implies --no-build unless it is target/release)")
    ap.add_argument("--smoke", action="store_true", help="one short round; fail unless every request got a 2xx")
    ap.add_argument("--out", default=os.path.join(OUT, "router-protocols.json"))
    a = ap.parse_args()
    if a.smoke:
        a.rounds, a.seconds = 1, 1
    modes = a.mode or MODES
    ensure_tools(build=not a.no_build and os.path.abspath(a.bin_dir) == os.path.join(ROOT, "target/release"))
    tmp = tempfile.mkdtemp(prefix="slipway-bench-proto-")
    procs = {}
    try:
        up = free_port()
        names = ["slipway"] + [s.split("=", 1)[0] for s in a.slipway] + list(PEERS)
        ports = {}
        for n in names:
            h1 = free_port()
            ports[n] = {"h1": h1, "h2c": h1 if n not in PEERS else free_port(), "tls": free_port()}
        write_configs(tmp, up, ports)
        release = os.path.abspath(a.bin_dir)
        procs["upstream"] = spawn(1, [f"{release}/demo-app"], {"PORT": str(up), "SLIPWAY_RELEASE": "v1",
                                                               "DEMO_THREADS": "1"})
        procs["slipway"] = spawn(0, [f"{release}/slipway", "router", "--config", f"{tmp}/slipway.toml"])
        for spec in a.slipway:
            name, binary = spec.split("=", 1)
            procs[name] = spawn(0, [os.path.abspath(binary), "router", "--config", f"{tmp}/{name}.toml"])
        procs["nginx"] = spawn(0, ["nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp])
        procs["haproxy"] = spawn(0, ["haproxy", "-f", f"{tmp}/haproxy.cfg"])
        for p in [up] + [x for n in names for x in ports[n].values()]:
            wait_port(p)
        cookie = urllib.request.urlopen(f"http://127.0.0.1:{ports['slipway']['h1']}/").headers["set-cookie"].split(";")[0]
        headers = [f"Cookie: {cookie}"]
        rows = {m: {n: [] for n in names} for m in modes}
        load = []
        for r in range(a.rounds):
            load.append(os.getloadavg()[0])
            order = names[r % len(names):] + names[:r % len(names)]
            for mode in modes:
                for name in order:
                    row = measure(mode, a, ports[name], headers, procs[name].pid, tmp, 0 if a.smoke else 1)
                    rows[mode][name].append(row)
                    print(f"round {r + 1} {mode} {name}: {row}", file=sys.stderr)
        summary = summarize(a, modes, names, rows, load)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(summary | {"raw": rows}, f, indent=1)
        print_table(summary)
        if a.smoke:
            bad = [(m, n) for m in modes for n in names if any(x["errors"] or not x["ok"] for x in rows[m][n])]
            if bad:
                sys.exit(f"requests failed or none served: {bad}")
    finally:
        for p in procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(a, modes, names, rows, load):
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    res = {"machine": f"{os.cpu_count()} cores, {os.uname().release}", "date": time.strftime("%Y-%m-%d %H:%M UTC",
           time.gmtime()), "load_avg_1m": load, "rounds": a.rounds, "seconds": a.seconds, "conns": a.conns,
           "streams": a.streams, "modes": {}}
    for m in modes:
        t = {n: {k: med(rows[m][n], k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
             | {"errors": sum(x["errors"] for x in rows[m][n])} for n in names}
        for n in names:
            for p in PEERS:
                for k in ("cpu_us_per_req", "p99_ms", "rps"):
                    t[n][f"{k}_vs_{p}"] = t[n][k] / t[p][k] if t[p][k] else None
        res["modes"][m] = t
    return res


def print_table(res):
    print(f"load average (1 min) at each round: {', '.join(f'{x:.1f}' for x in res['load_avg_1m'])}")
    for m, t in res["modes"].items():
        print(f"\n{m}:\n")
        print("| target | req/s | p50 ms | p99 ms | p99 vs HAProxy | p99 vs nginx | CPU µs/req | CPU vs HAProxy "
              "| CPU vs nginx | errors |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for n, v in t.items():
            r = lambda k, p: f"{v[f'{k}_vs_{p}']:.2f}" if v[f"{k}_vs_{p}"] is not None else "-"
            print(f"| {n} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {r('p99_ms', 'haproxy')} "
                  f"| {r('p99_ms', 'nginx')} | {v['cpu_us_per_req']:.1f} | {r('cpu_us_per_req', 'haproxy')} "
                  f"| {r('cpu_us_per_req', 'nginx')} | {v['errors']} |")


if __name__ == "__main__":
    main()
