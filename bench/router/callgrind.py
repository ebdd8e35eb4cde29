#!/usr/bin/env python3
"""Router user-space instructions per proxied request, counted by callgrind (deterministic, unlike CPU time).

Usage: python3 bench/router/callgrind.py [--binary target/release/slipway ...] [--requests 20000] [--base 2000] [--h2c]

Runs each binary as `slipway router` (one worker, the bench/router setup) under
`valgrind --tool=callgrind`, sends --base requests in one run and --requests in
another (oha, 16 connections, a valid session cookie), and prints
(Ir(requests) - Ir(base)) / (requests - base): the start-up and shutdown cost
cancels out. --h2c sends the requests with h2load over HTTP/2 prior knowledge
instead (16 connections x 10 streams, the bench/router/protocols.py load).
Installs valgrind from Debian and oha from crates.io if missing;
builds slipway and demo-app in release mode when no --binary is given.
"""
import argparse, glob, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from run import ROOT, free_port, sh, spawn, wait_port  # noqa: E402


def ensure_tools(build, h2c):
    if not shutil.which("valgrind"):
        sh("apt-get", "install", "-y", "-q", "valgrind", env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if h2c and not shutil.which("h2load"):
        sh("apt-get", "install", "-y", "-q", "nghttp2-client", env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not h2c and not shutil.which("oha"):
        sh("cargo", "install", "oha", "--locked")
    if build:
        sh("cargo", "build", "--release", "-q", "-p", "slipway", "-p", "demo-app", cwd=ROOT)


def instructions(binary, up, requests, tmp, h2c=False):
    """Total Ir of one router run that serves `requests` requests."""
    sp = free_port()
    with open(f"{tmp}/routes.toml", "w") as f:
        f.write(f'[[release]]\nid = "v1"\nweight = 100\ninstance = [{{ id = "v1-0", addr = "127.0.0.1:{up}" }}]\n')
    state = tempfile.mkdtemp(dir=tmp)
    with open(f"{tmp}/router.toml", "w") as f:
        f.write(f'state_dir = "{state}"\nworkers = 1\ninitial_routes = "routes.toml"\nadmin = {{ listen = "127.0.0.1:0" }}\n'
                f'health = {{ kind = "none" }}\n[[listener]]\nname = "web"\nkind = "http"\naddr = "127.0.0.1:{sp}"\n')
    out = f"{tmp}/callgrind.out.{requests}"
    router = spawn(0, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
                       "router", "--config", f"{tmp}/router.toml"])
    try:
        wait_port(sp, limit=60)
        cookie = urllib.request.urlopen(f"http://127.0.0.1:{sp}/").headers["set-cookie"].split(";")[0]
        if h2c:
            sh("taskset", "-c", "1", "h2load", "-n", str(requests - 1), "-c", "16", "-m", "10", "-H",
               f"Cookie: {cookie}", f"http://127.0.0.1:{sp}/", stdout=subprocess.DEVNULL)
        else:
            sh("taskset", "-c", "1", "oha", "-n", str(requests - 1), "-c", "16", "--no-tui", "-H", f"Cookie: {cookie}",
               f"http://127.0.0.1:{sp}/", stdout=subprocess.DEVNULL)
    finally:
        os.killpg(router.pid, signal.SIGTERM)
        router.wait(timeout=120)
    with open(out) as f:
        total = next(int(m.group(1)) for line in f if (m := re.match(r"(?:totals|summary): (\d+)", line)))
    for p in glob.glob(out + "*"):
        os.remove(p)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", action="append", help="slipway binaries to compare (default: the release build)")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--base", type=int, default=2000)
    ap.add_argument("--h2c", action="store_true", help="HTTP/2 prior knowledge with h2load instead of HTTP/1.1 with oha")
    a = ap.parse_args()
    ensure_tools(build=not a.binary, h2c=a.h2c)
    binaries = a.binary or [os.path.join(ROOT, "target/release/slipway")]
    tmp = tempfile.mkdtemp(prefix="slipway-callgrind-")
    up = free_port()
    demo = spawn(1, [os.path.join(ROOT, "target/release/demo-app")], {"PORT": str(up), "SLIPWAY_RELEASE": "v1",
                                                                     "DEMO_THREADS": "1"})
    try:
        wait_port(up)
        print("| binary | instructions / request |")
        print("|---|---|")
        for b in binaries:
            big, small = instructions(b, up, a.requests, tmp, a.h2c), instructions(b, up, a.base, tmp, a.h2c)
            print(f"| {b} | {(big - small) / (a.requests - a.base):,.0f} |", flush=True)
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        time.sleep(0.3)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
