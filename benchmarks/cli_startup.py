#!/usr/bin/env python3
"""Start-up cost of the pcocc CLI next to a bare Python interpreter, in one run.

    python benchmarks/cli_startup.py [-n RUNS] [--pcocc PATH]

Runs `pcocc --help` and `python -c pass` RUNS times each, interleaved so both see the same
machine load, and prints both medians and their ratio. Target: ratio <= 3.
Also times `pcocc --version` (answered without importing click) and `pcocc template list`
on the example configuration (confs/), which loads six files: the first load parses and
validates them, later ones reuse the copies cached in a private XDG_CACHE_HOME.

Wall-clock and CPU time (user + system of the child) are both shown: on a shared machine the
CPU time is the steadier of the two. PYTHONDONTWRITEBYTECODE is dropped so that byte code is
cached as in an installed package. Note: in an editable install (helpers/setup) every Python
start, `python -c pass` included, pays for the editable-import finder (pathlib, re, ...),
which makes the ratio look better than in a regular install.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

TARGET_RATIO = 3.0


def _time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, argv)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=None, help="default 20, quick 5")
    parser.add_argument("--pcocc", default=None, help="pcocc executable (default: next to python)")
    benchlib.add_quick(parser)
    args = parser.parse_args()
    args.runs = args.runs or (5 if args.quick else 20)
    benchlib.baseline("`python -c pass` of the same interpreter, interleaved with pcocc's runs"
                      " (page cache and byte code warmed once for both)")

    pcocc = args.pcocc or str(Path(sys.executable).parent / "pcocc")
    if not os.path.exists(pcocc):
        pcocc = shutil.which("pcocc") or sys.exit("pcocc not found: pass --pcocc PATH")
    confs = Path(__file__).resolve().parent.parent / "confs"
    cache = tempfile.TemporaryDirectory(prefix="pcocc-bench-cache-")
    env = dict(
        os.environ,
        PCOCC_SYSTEM_CONF_DIR=str(confs),
        PCOCC_USER_CONF_DIR="/nonexistent",
        XDG_CACHE_HOME=cache.name,
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "pcocc --help": [pcocc, "--help"],
        "pcocc --version": [pcocc, "--version"],
        "pcocc template list": [pcocc, "template", "list"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for name, argv in cases.items():  # warm the page cache, byte code and config cache once
        _time_once(argv, env)
    for _ in range(args.runs):
        for name, argv in cases.items():
            wall, used = _time_once(argv, env)
            times[name].append(wall)
            cpu[name].append(used)
    cache.cleanup()

    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu.items()}
    base = medians["python -c pass"]
    cpu_base = cpu_medians["python -c pass"]
    print(f"{'command':<22} {'median':>10} {'ratio':>7} {'CPU':>10} {'ratio':>7}"
          f"   ({args.runs} runs each, load {os.getloadavg()[0]:.2f})")
    for name, med in medians.items():
        used = cpu_medians[name]
        print(f"{name:<22} {med * 1000:>8.1f}ms {med / base:>6.2f}x "
              f"{used * 1000:>8.1f}ms {used / cpu_base:>6.2f}x")
    ratio = medians["pcocc --help"] / base
    verdict = "ok" if ratio <= TARGET_RATIO else "TOO SLOW"
    print(f"pcocc --help / python -c pass = {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    for name, med in medians.items():
        benchlib.figure(f"{name} (median)", med * 1000, "ms")
    benchlib.figure("pcocc --help / python -c pass", ratio, "x", f"<= {TARGET_RATIO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
