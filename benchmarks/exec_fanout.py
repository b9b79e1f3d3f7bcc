#!/usr/bin/env python3
"""Running a command in 4 VMs: ``pcocc exec`` (guest agents) against ``pcocc ssh`` per VM.

On one cluster of 4 test VMs (TCG) on the Slurm development cluster (helpers/devcluster.py,
started and stopped by this script), each round times:

ours:      ``pcocc exec -i 0-3 true`` (the 4 VMs in parallel through their guest agents)
baseline:  ``for i in 0 1 2 3; do pcocc ssh vm$i true; done``, the loop a user writes; the
           ssh keys and known_hosts are in place (pcocc ssh writes them on first use, which
           the warm-up round pays), so each ssh is a plain key login to dropbear
also shown: the 4 ``pcocc ssh`` started at once in the background (``&`` then ``wait``),
           what a skilled user does next

Prints the medians and the ratio baseline/ours (target: exec at least 2x faster).

    python benchmarks/exec_fanout.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parent.parent


def _alloc_ready():
    """benchmarks/alloc_ready.py: the test VM builder, pcocc's env, the Slurm dev cluster."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import alloc_ready

    return alloc_ready


def _timed(argv: list[str], env: dict[str, str], *, shell: bool = False) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv if not shell else ["sh", "-c", argv[0]], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{argv} failed ({res.returncode}): {res.stderr.strip()}")
    return elapsed


def _wait_running(env: dict[str, str], alloc: subprocess.Popen, n: int) -> None:
    import json

    pcocc = str(Path(sys.executable).parent / "pcocc")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if alloc.poll() is not None:
            raise SystemExit(f"pcocc alloc ended ({alloc.returncode}): {alloc.stderr.read()}")
        res = subprocess.run([pcocc, "ps", "--json"], env=env, capture_output=True, text=True,
                             check=False)
        if res.returncode == 0:
            clusters = json.loads(res.stdout)
            if len(clusters) == 1 and clusters[0]["running"] == n:
                return
        time.sleep(0.5)
    raise SystemExit("the 4 VMs did not run within 600 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="[default: 5, quick: 2]")
    benchlib.add_quick(parser)
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    bench = _alloc_ready()
    outdir = Path(os.environ.get("PCOCC_TESTVM_DIR") or tempfile.mkdtemp(prefix="testvm-"))
    vm = bench.load_builder().build(outdir)
    pcocc = str(Path(sys.executable).parent / "pcocc")
    ours, loop, parallel = [], [], []
    try:
        with tempfile.TemporaryDirectory(prefix="exec-fanout-") as tmp, \
                bench.slurm_devcluster() as (batch, slurm_env):
            env = {**bench.pcocc_env(Path(tmp), vm, batch), **slurm_env}
            alloc = subprocess.Popen([pcocc, "alloc", "-E", "sleep 3600", "testvm:4"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
            try:
                _wait_running(env, alloc, 4)
                ssh_loop = f"for i in 0 1 2 3; do {pcocc} ssh vm$i true || exit 1; done"
                ssh_bg = (" ".join(f"{pcocc} ssh vm{i} true & p{i}=$!;" for i in range(4))
                          + " " + " && ".join(f"wait $p{i}" for i in range(4)))
                exec_argv = [pcocc, "exec", "-i", "0-3", "true"]
                # warm-up: ssh files written, caches filled
                _timed([ssh_loop], env, shell=True)
                _timed(exec_argv, env)
                for i in range(args.rounds):
                    loop.append(_timed([ssh_loop], env, shell=True))
                    parallel.append(_timed([ssh_bg], env, shell=True))
                    ours.append(_timed(exec_argv, env))
                    print(f"round {i + 1}: exec {ours[-1]:.2f} s, ssh loop {loop[-1]:.2f} s,"
                          f" ssh in parallel {parallel[-1]:.2f} s", flush=True)
            finally:
                if alloc.poll() is None:
                    os.killpg(alloc.pid, signal.SIGINT)
                alloc.wait(timeout=300)
    finally:
        if "PCOCC_TESTVM_DIR" not in os.environ:
            shutil.rmtree(outdir, ignore_errors=True)
    o, b, p = (statistics.median(x) for x in (ours, loop, parallel))
    print(f"median: pcocc exec -i 0-3 true {o:.2f} s; 4x pcocc ssh in a loop {b:.2f} s;"
          f" 4x pcocc ssh in parallel {p:.2f} s")
    verdict = "meets" if b / o >= 2 else "misses"
    print(f"ratio ssh loop / exec: {b / o:.2f}x ({verdict} the 2x target);"
          f" ssh in parallel / exec: {p / o:.2f}x")
    benchlib.baseline("'for i in 0 1 2 3; do pcocc ssh vm$i true; done' on the same cluster,"
                      " keys and known_hosts already written (warm-up round not counted)")
    benchlib.figure("exec -i 0-3 true: speed-up over 4 pcocc ssh in a loop", b / o, "x", ">= 2")
    benchlib.figure("exec -i 0-3 true: speed-up over 4 pcocc ssh in parallel", p / o, "x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
