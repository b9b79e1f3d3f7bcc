#!/usr/bin/env python3
"""Start-up cost of the pcocc CLI next to a bare Python interpreter, in one run.

    python benchmarks/cli_startup.py [-n RUNS] [--pcocc PATH]

Runs `pcocc --help` and `python -c pass` RUNS times each, interleaved so both see the same
machine load, and prints both medians and their ratio. Target: ratio <= 3.
Also times `pcocc template list` on the example configuration (confs/), which loads and
validates six files, to watch the cost of yaml + jsonschema.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_RATIO = 3.0


def _time_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--pcocc", default=None, help="pcocc executable (default: next to python)")
    args = parser.parse_args()

    pcocc = args.pcocc or str(Path(sys.executable).parent / "pcocc")
    if not os.path.exists(pcocc):
        pcocc = shutil.which("pcocc") or sys.exit("pcocc not found: pass --pcocc PATH")
    confs = Path(__file__).resolve().parent.parent / "confs"
    env = dict(os.environ, PCOCC_SYSTEM_CONF_DIR=str(confs), PCOCC_USER_CONF_DIR="/nonexistent")

    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "pcocc --help": [pcocc, "--help"],
        "pcocc template list": [pcocc, "template", "list"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name, argv in cases.items():  # warm the page cache once
        _time_once(argv, env)
    for _ in range(args.runs):
        for name, argv in cases.items():
            times[name].append(_time_once(argv, env))

    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["python -c pass"]
    print(f"{'command':<22} {'median':>10} {'ratio':>7}   ({args.runs} runs each)")
    for name, med in medians.items():
        print(f"{name:<22} {med * 1000:>8.1f}ms {med / base:>6.2f}x")
    ratio = medians["pcocc --help"] / base
    verdict = "ok" if ratio <= TARGET_RATIO else "TOO SLOW"
    print(f"pcocc --help / python -c pass = {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
