#!/usr/bin/env python3
"""Start-up cost of the ``vm`` container runtime against a bare boot of the same kernel.

    benchmarks/ctr_vm_start.py [-n RUNS]

Runs, interleaved, RUNS times each:

- ``pcocc run --runtime vm IMAGE -- true`` on the busybox test image (pack the rootfs,
  write the initramfs, boot, run, power off);
- a bare QEMU boot of the same cloud kernel with the same accelerator, memory and kernel
  options but no initramfs: it stops at the "cannot mount root" panic (``panic=-1`` and
  ``-no-reboot`` end QEMU) -- the floor of any VM-based runtime.

Prints both medians and their ratio (target: <= 2). Honours PCOCC_ACCEL (default: tcg).
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "helpers"))

import benchlib
from testrootfs import build_rootfs

from pcocc.vm import stage1
from pcocc.vm.initramfs import find_kernel
from pcocc.vm.qemu import default_cpu_model

TARGET_RATIO = 2.0


def timed(argv: list[str], env: dict[str, str], *, ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    res = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if res.returncode not in ok:
        raise SystemExit(f"benchmark command failed ({res.returncode}): {' '.join(argv)}\n"
                         f"{res.stderr.decode(errors='replace')[-800:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=None, help="default 3, quick 1")
    benchlib.add_quick(ap)
    args = ap.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    benchlib.baseline("QEMU booting the same kernel with the same accelerator, memory and kernel"
                      " options but no initramfs, until its 'cannot mount root' panic ends it:"
                      " the floor of any VM-based runtime (no rootfs packing, no guest work)")
    accel = os.environ.get("PCOCC_ACCEL") or "tcg"
    work = Path(tempfile.mkdtemp(prefix="pcocc-bench-ctr-vm-"))
    try:
        env = dict(os.environ, PCOCC_ACCEL=accel, HOME=str(work / "home"),
                   XDG_RUNTIME_DIR=str(work / "run"), PCOCC_SYSTEM_CONF_DIR=str(work / "etc"),
                   PCOCC_USER_CONF_DIR=str(work / "home" / ".pcocc"))
        for d in ("home", "run", "etc"):
            (work / d).mkdir(mode=0o700)
        image = build_rootfs(work / "img")
        pcocc = shutil.which("pcocc", path=str(Path(sys.executable).parent)) or "pcocc"
        kernel, _ = find_kernel()
        bare_append = " ".join(w for w in stage1.kernel_cmdline().split()
                               if not w.startswith("rdinit="))
        commands = {
            "pcocc run --runtime vm": [pcocc, "run", "--runtime", "vm", str(image), "--", "true"],
            "bare kernel boot": ["qemu-system-x86_64", "-accel", accel, "-cpu",
                                 default_cpu_model(accel), "-m", "256", "-display", "none",
                                 "-nodefaults", "-no-user-config", "-no-reboot",
                                 "-kernel", str(kernel), "-append", bare_append],
        }
        samples: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                samples[name].append(timed(argv, env))
        med = {k: statistics.median(v) for k, v in samples.items()}
        base = med["bare kernel boot"]
        print(f"median over {args.runs} runs, accel {accel} "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        for name, s in med.items():
            print(f"  {name:<24} {s:7.2f} s   x{s / base:5.2f} of the bare boot")
        ratio = med["pcocc run --runtime vm"] / base
        print(f"vm runtime / bare boot = {ratio:.2f}  (target <= {TARGET_RATIO:g})")
        benchlib.figure("pcocc run --runtime vm -- true", med["pcocc run --runtime vm"], "s")
        benchlib.figure("bare kernel boot to panic", base, "s")
        benchlib.figure("vm runtime / bare boot", ratio, "x", f"<= {TARGET_RATIO:g}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
