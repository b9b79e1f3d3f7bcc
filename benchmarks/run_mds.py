#!/usr/bin/env python3
"""What the metadata service costs a warm ``pcocc run IMAGE -- true``.

Every ``pcocc run`` registers its pod with the user's metadata service (``--register-mds``,
on by default) and, when the service does not run, starts it. Times, interleaved, N times
each (busybox image ``busy`` imported in the user repository, warm container cache, from a
venv that imports pcocc like a regular install):

- ``run --annotation bench=1 busy -- true``: registers (the service is started when it is
  not running: runs more than its idle time apart each start it)
- ``run --register-mds=false --annotation bench=1 busy -- true``: the baseline, no
  registration; both go through click (``--annotation`` and ``--register-mds`` are not on
  the click-free fast path), so that the difference is the registration alone
- ``run busy -- true``: the fast path (registers), for reference

Prints the medians, their difference and the load average. Measured on a shared 2-core
machine (load 1-2.5): when ``run`` waited for the service's answer (and, with no service,
for the service to start), registration cost +17 ms with the service up and +157 ms with a
4 s gap (the service had exited); since the sockets are bound by ``run`` and handed over
without waiting, -4 ms and +1.5 ms (noise: figures move by several ms from run to run). Usage:
``benchmarks/run_mds.py [-n RUNS] [--gap S]`` (``--gap``: pause between rounds; above the
service's idle time every run finds no service running).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "helpers"))

import benchlib
from container_start import isolated_env, plain_install, timed
from testimages import build_busybox


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=None, help="default 20, quick 5")
    ap.add_argument("--gap", type=float, default=0.0,
                    help="seconds between rounds (default 0: the service stays up)")
    ap.add_argument("--runtime", default="crun")
    benchlib.add_quick(ap)
    args = ap.parse_args()
    args.runs = args.runs or (5 if args.quick else 20)
    benchlib.baseline("the same `pcocc run` with --register-mds=false (no registration, no "
                      "service), both through click, interleaved")
    work = Path(tempfile.mkdtemp(prefix="pcocc-bench-mds-"))
    try:
        env = isolated_env(work)
        pcocc = plain_install(work / "venv")
        image = build_busybox(work / "img")
        timed([pcocc, "image", "import", image.ref, "busy"], env)
        base = [pcocc, "run", "--runtime", args.runtime]
        commands = {
            "registers": [*base, "--annotation", "bench=1", "busy", "--", "true"],
            "--register-mds=false": [*base, "--register-mds=false", "--annotation",
                                     "bench=1", "busy", "--", "true"],
            "fast path (registers)": [*base, "busy", "--", "true"],
        }
        for argv in commands.values():
            timed(argv, env)
        samples: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                if args.gap:
                    time.sleep(args.gap)
                samples[name].append(timed(argv, env))
        med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
        load = os.getloadavg()
        print(f"median of {args.runs} warm runs of 'true' (gap {args.gap:g} s; load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs)")
        for name, ms in med.items():
            print(f"  {name:<24} {ms:8.1f} ms")
        cost = med["registers"] - med["--register-mds=false"]
        print(f"registration costs {cost:+.1f} ms "
              f"(x{med['registers'] / med['--register-mds=false']:.2f})")
        gap = "idle service" if args.gap else "service up"
        benchlib.figure(f"metadata service registration ({gap})", cost, "ms", "<= 5")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
