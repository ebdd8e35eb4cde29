#!/usr/bin/env python3
"""Memory per idle client connection: slipway vs nginx vs HAProxy, same upstream, one worker each, same run.

Usage: python3 bench/router/memory.py [--conns 8000] [--rounds 3] [--no-build]

Each round starts fresh processes of all three, then for each proxy: the
resident set (VmRSS of every process of the proxy's session) after a warm-up,
after opening --conns silent connections (TCP connect, nothing sent: a
half-open client), and after --conns idle keep-alive ones on top (one GET
answered, then nothing, measured 2 s later, past slipway's 500 ms buffer
release); each step's growth divided by --conns. Medians
over rounds go to stdout as a markdown table; the fd limit of this shell bounds
--conns (each proxy holds a client and, for keep-alive, an upstream socket).
"""
import argparse, os, resource, shutil, signal, socket, statistics, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from run import ROOT, free_port, sh, spawn, wait_port  # noqa: E402


def ensure_tools(build):
    missing = [p for p, b in [("nginx-light", "nginx"), ("haproxy", "haproxy")] if not shutil.which(b)]
    if missing:
        sh("apt-get", "install", "-y", "-q", *missing, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if build:
        sh("cargo", "build", "--release", "-q", "-p", "slipway", "-p", "demo-app", cwd=ROOT)


def rss_kib(session):
    """Summed VmRSS of the processes whose session id is `session`."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != session:
                continue
            with open(f"/proc/{pid}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            pass
    return total


def open_conns(port, n, keep_alive):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if keep_alive:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got or not got.endswith(b"v1\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("closed before the answer")
                got += chunk
        socks.append(s)
    return socks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_tools(build=not a.no_build)
    res = {n: {"silent": [], "idle": []} for n in ("slipway", "nginx", "haproxy")}
    for r in range(a.rounds):
        # Fresh processes each round: freed memory stays resident in an allocator, so a second
        # measurement in the same process would see reuse, not what a connection costs.
        tmp = tempfile.mkdtemp(prefix="slipway-memory-")
        procs = []
        try:
            targets = start_all(tmp, a.conns, hard, procs)
            for name, (port, session) in targets.items():
                for s in open_conns(port, 200, True):  # one-off allocations out of the way
                    s.close()
                time.sleep(0.5)
                base = rss_kib(session)
                silent = open_conns(port, a.conns, False)
                time.sleep(2.0)
                mid = rss_kib(session)
                idle = open_conns(port, a.conns, True)
                time.sleep(2.0)  # past slipway's 500 ms buffer release
                top = rss_kib(session)
                for s in silent + idle:
                    s.close()
                res[name]["silent"].append((mid - base) * 1024 / a.conns)
                res[name]["idle"].append((top - mid) * 1024 / a.conns)
                print(f"round {r + 1} {name}: silent {res[name]['silent'][-1]:.0f} B, "
                      f"idle keep-alive {res[name]['idle'][-1]:.0f} B", file=sys.stderr, flush=True)
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
            shutil.rmtree(tmp, ignore_errors=True)
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in res.items()}
    print("| proxy | silent connection, bytes | vs nginx | idle keep-alive, bytes | vs nginx |")
    print("|---|---|---|---|---|")
    for n, m in med.items():
        print(f"| {n} | {m['silent']:.0f} | {m['silent'] / med['nginx']['silent']:.2f} "
              f"| {m['idle']:.0f} | {m['idle'] / med['nginx']['idle']:.2f} |")


def start_all(tmp, conns, hard, procs):
    """Starts the upstream and the three proxies; returns name -> (port, session id)."""
    up = free_port()
    demo = os.path.join(ROOT, "target/release/demo-app")
    procs.append(spawn(1, [demo], {"PORT": str(up), "SLIPWAY_RELEASE": "v1", "DEMO_THREADS": "1"}))
    sp, ng, ha = free_port(), free_port(), free_port()
    with open(f"{tmp}/routes.toml", "w") as f:
        f.write(f'[[release]]\nid = "v1"\nweight = 100\ninstance = [{{ id = "v1-0", addr = "127.0.0.1:{up}" }}]\n')
    with open(f"{tmp}/router.toml", "w") as f:
        f.write(f'state_dir = "state"\nworkers = 1\ninitial_routes = "routes.toml"\nadmin = {{ listen = "127.0.0.1:0" }}\n'
                f'health = {{ kind = "none" }}\n[[listener]]\nname = "web"\nkind = "http"\naddr = "127.0.0.1:{sp}"\n'
                f'max_connections = {2 * conns + 500}\n')
    procs.append(spawn(0, [os.path.join(ROOT, "target/release/slipway"), "router", "--config", f"{tmp}/router.toml"]))
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
worker_rlimit_nofile {hard};
events {{ worker_connections {3 * conns + 100}; }}
http {{ access_log off; keepalive_timeout 300s;
  upstream app {{ server 127.0.0.1:{up}; keepalive 256; }}
  server {{ listen 127.0.0.1:{ng};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}
""")
    procs.append(spawn(0, ["nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp]))
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn {2 * conns + 100}
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-request 300s
  timeout http-keep-alive 300s
frontend fe
  bind 127.0.0.1:{ha}
  default_backend be
backend be
  server s1 127.0.0.1:{up}
""")
    procs.append(spawn(0, ["haproxy", "-f", f"{tmp}/haproxy.cfg"], cwd=tmp))
    for p in (up, sp, ng, ha):
        wait_port(p)
    return {"slipway": (sp, procs[1].pid), "nginx": (ng, procs[2].pid), "haproxy": (ha, procs[3].pid)}


if __name__ == "__main__":
    main()
