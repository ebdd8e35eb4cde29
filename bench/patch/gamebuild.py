#!/usr/bin/env python3
"""Writes two synthetic game builds made of real bytes (files of this machine: libraries,
documentation, toolchains) packed as assets into one big pack file, like an engine's .pak:
a header with an offset table, then the assets back to back.

v2 changes a few assets and moves everything after them: three assets get a region rewritten,
two grow, one is removed and a new one is inserted in the middle, so every later offset in the
header changes. Usage: gamebuild.py OUT_DIR SIZE_MIB [SEED]
"""
import os
import random
import struct
import sys

ROOTS = ["/usr/lib", "/usr/share", "/usr/bin", os.path.expanduser("~/.rustup")]


def real_files(limit):
    """Yields (path, bytes) of real files, sorted, until `limit` bytes."""
    total = 0
    for root in ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    if os.path.islink(p) or not os.path.isfile(p):
                        continue
                    size = os.path.getsize(p)
                    if size < 64 << 10 or size > 64 << 20:
                        continue
                    with open(p, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                yield p, data
                total += len(data)
                if total >= limit:
                    return


def pack(assets):
    """The .pak: magic, count, (offset, length, name) per asset, then the data."""
    header = bytearray(b"GPAK" + struct.pack("<I", len(assets)))
    table_len = len(assets) * (16 + 64)
    offset = len(header) + table_len
    table = bytearray()
    for name, data in assets:
        table += struct.pack("<QQ", offset, len(data)) + name.encode()[:64].ljust(64, b"\0")
        offset += len(data)
    return bytes(header + table) + b"".join(d for _, d in assets)


def main():
    out, size_mib = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    files = list(real_files(size_mib << 20))
    assets = [(f"asset{i:05d}", data) for i, (_, data) in enumerate(files)]
    spare = [d for _, d in files[-8:]]
    assets = assets[:-8]
    exe = next(open(os.path.join("/usr/bin", n), "rb").read() for n in sorted(os.listdir("/usr/bin"))
               if os.path.isfile(os.path.join("/usr/bin", n)) and os.path.getsize(os.path.join("/usr/bin", n)) > 1 << 20)
    v2 = list(assets)
    picks = rng.sample(range(len(v2) // 10, len(v2)), 6)
    for k, i in enumerate(picks):
        name, data = v2[i]
        if k < 3:  # rewrite a tenth of the asset with other real bytes
            a = rng.randrange(0, max(1, len(data) - len(data) // 10))
            src = spare[k]
            n = min(len(data) // 10, len(src))
            v2[i] = (name, data[:a] + src[:n] + data[a + n:])
        elif k < 5:  # grow by 100 KiB
            a = rng.randrange(0, len(data))
            v2[i] = (name, data[:a] + spare[k][: 100 << 10] + data[a:])
        else:  # removed, and a new asset inserted in the middle
            del v2[i]
            v2.insert(len(v2) // 2, ("asset-new", spare[5]))
    for tag, build in (("v1", assets), ("v2", v2)):
        d = os.path.join(out, tag)
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        os.makedirs(os.path.join(d, "bin"), exist_ok=True)
        with open(os.path.join(d, "data", "assets.pak"), "wb") as f:
            f.write(pack(build))
        with open(os.path.join(d, "bin", "game"), "wb") as f:
            f.write(exe)
        os.chmod(os.path.join(d, "bin", "game"), 0o755)
        with open(os.path.join(d, "config.ini"), "w") as f:
            f.write(f"[game]\nbuild = {tag}\nassets = {len(build)}\n")


if __name__ == "__main__":
    main()
