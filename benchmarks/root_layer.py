#!/usr/bin/env python3
"""What the writable root layer (pcocc/ctr/rootlayer.py) adds to a warm ``pcocc run``.

Runs ``pcocc run --runtime R busy -- true`` (warm container cache, same image, same
environment) interleaved N times with the code of two checkouts: ``--before`` (default
/work/main, read-only root on the cache entry: the baseline, exactly what pcocc did before)
and ``--after`` (this checkout: an overlay per app over the cache entry). Prints the medians,
the difference and the ratio per runtime, and the load average.

    benchmarks/root_layer.py [-n 20] [--runtime crun,runc,unshare]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

HERE = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--runtime", default="crun,runc,unshare")
    ap.add_argument("--before", default="/work/main")
    ap.add_argument("--after", default=str(HERE))
    benchlib.add_quick(ap)
    args = ap.parse_args()
    if args.quick:
        args.n = 5
    sys.path.insert(0, str(HERE))
    from helpers import testimages

    pcocc = str(Path(sys.executable).parent / "pcocc")
    with tempfile.TemporaryDirectory(prefix="pcocc-bench-layer-") as tmp:
        t = Path(tmp)
        img = testimages.build_busybox(t / "img")
        # one private environment per checkout: pod records, metadata service, cache (a
        # service started by one version would otherwise serve the other's pods)
        envs = {}
        for label, checkout in (("before", args.before), ("after", args.after)):
            root = t / label
            # a compiled copy of each package: a checkout without .pyc files (as with
            # PYTHONDONTWRITEBYTECODE) would pay ~80 ms of compilation per run
            src = root / "src"
            shutil.copytree(Path(checkout) / "pcocc", src / "pcocc",
                            ignore=shutil.ignore_patterns("__pycache__"))
            compileall.compile_dir(src, quiet=1)
            envs[label] = dict(os.environ, HOME=str(root / "home"), PYTHONPATH=str(src),
                               PCOCC_SYSTEM_CONF_DIR=str(root / "etc"),
                               PCOCC_USER_CONF_DIR=str(root / "home/.pcocc"),
                               XDG_RUNTIME_DIR=str(root / "xdg"))
            for d in ("home/.pcocc", "etc", "xdg"):
                (root / d).mkdir(parents=True, mode=0o700)
            subprocess.run([pcocc, "image", "import", img.ref, "busy"], env=envs[label],
                           check=True, capture_output=True)
        print(f"load average before: {os.getloadavg()}")
        benchlib.baseline("the same warm 'pcocc run' with the code of --before (read-only root "
                          "on the cache entry), interleaved with ours: same image, own env")
        for rt in args.runtime.split(","):
            times: dict[str, list[float]] = {"before": [], "after": []}
            for i in range(args.n + 2):  # the first two of each warm up
                order = ("before", "after") if i % 2 else ("after", "before")
                for label in order:
                    t0 = time.perf_counter()
                    subprocess.run([pcocc, "run", "--runtime", rt, "busy", "--", "true"],
                                   env=envs[label], check=True, capture_output=True)
                    times[label].append(time.perf_counter() - t0)
            b = statistics.median(times["before"][2:]) * 1000
            a = statistics.median(times["after"][2:]) * 1000
            print(f"{rt:8s} before {b:6.1f} ms  after {a:6.1f} ms  diff {a - b:+5.1f} ms  "
                  f"ratio {a / b:.3f}  (median of {args.n})")
            benchlib.figure(f"warm run, {rt}: with root layer - without", a - b, "ms",
                            "<= 5", note=f"medians {b:.1f} -> {a:.1f} ms")
        print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
