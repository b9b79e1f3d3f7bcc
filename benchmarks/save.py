#!/usr/bin/env python3
"""``pcocc save`` of a running VM whose disk holds 200 MiB of new data, against
``qemu-img convert`` of the same layer; prints the ratio (target: at most 1.5x).

Set-up: the test VM's disk image is imported into a private repository and grown to
256 MiB (``pcocc image resize``); one VM boots from it (``pcocc alloc``, local mode, TCG)
and QEMU writes 200 MiB of data into its disk (``qemu-io`` through ``pcocc monitor-cmd``),
so the VM's overlay (its top layer) holds 200 MiB. Inside that allocation, rounds alternate:

ours:      ``pcocc save -d benchN vm0`` (CLI start, cluster look-up, guest file systems
           frozen through the agent for a temporary QMP snapshot, the frozen top layer
           copied into the repository's staging area in one pass hashed as written, the
           snapshot merged back, fsync, the blob moved in and the metadata committed),
           until it returns;
baseline:  what a skilled user would run to copy that layer by hand:
           ``qemu-img convert -U -f qcow2 -O qcow2 -B PARENT -F qcow2 OVERLAY OUT`` (only the
           clusters of the top layer, as a qcow2 on the same parent) followed by an fsync of
           OUT: pcocc makes the blob durable before committing, so the target (1.5x) is
           checked against that; convert alone is printed for reference.

With ``$PCOCC_TIMING`` set for each save, the phases pcocc marks are printed: where the
time goes (start-up and cluster look-up, QMP and agent, freeze, snapshot and thaw, copy and
hash, merge, fsync and store, commit), as medians of each phase's own duration, next to
the baseline's (convert, fsync).

Medians over ``--rounds`` (default 5); the page cache is written back (``sync``) before each
timed run. Builds the test VM with helpers/build_testvm.py (cached in $PCOCC_TESTVM_DIR).

    python benchmarks/save.py [--rounds N] [--data-mib 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from alloc_ready import load_builder, pcocc_env  # noqa: E402

PCOCC = str(Path(sys.executable).parent / "pcocc")


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    res = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    run(argv, env)
    return time.perf_counter() - t0


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def inner(rounds: int, data_mib: int, out: Path) -> None:
    """Runs inside the allocation (the -E script): fill the disk, then time both sides."""
    run([PCOCC, "monitor-cmd", "vm0", f'qemu-io disk0 "write -P 0x5a 8M {data_mib}M"'])
    # QEMU keeps qcow2 metadata in memory: without a flush, the overlay file that the
    # baseline reads would not show the new clusters yet
    run([PCOCC, "monitor-cmd", "vm0", "qemu-io disk0 flush"])
    overlays = list(Path(os.environ["PCOCC_RUN_DIR"]).rglob("disk0.qcow2"))
    if len(overlays) != 1:
        raise SystemExit(f"expected one VM overlay under $PCOCC_RUN_DIR, found {overlays}")
    overlay = overlays[0]
    info = json.loads(run(["qemu-img", "info", "-U", "--output=json", str(overlay)]))
    parent = info["full-backing-filename"]
    ours, base, base_sync, marks = [], [], [], []
    for i in range(rounds):
        # a new file each round, kept (as pcocc keeps each saved blob): rewriting the blocks
        # of a deleted copy would be cheaper than the fresh blocks pcocc writes
        copy = out.parent / f"baseline-{i}.qcow2"
        argv = ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", "-B", parent,
                "-F", "qcow2", str(overlay), str(copy)]
        base.append(timed(argv))
        fsync_start = time.perf_counter()
        fsync_file(copy)
        base_sync.append(base[-1] + time.perf_counter() - fsync_start)
        marks_file = out.parent / f"timing-{i}"
        ours.append(timed([PCOCC, "-q", "save", "-d", f"bench{i}", "vm0"],
                          {**os.environ, "PCOCC_TIMING": str(marks_file)}))
        marks.append(benchlib.phases(marks_file, "save: process started"))
        print(f"round {i + 1}: qemu-img convert {base[-1]:.2f} s (+fsync {base_sync[-1]:.2f} s),"
              f" pcocc save {ours[-1]:.2f} s; load average {os.getloadavg()[0]:.2f}",
              flush=True)
    layer_mib = copy.stat().st_size / (1 << 20)
    out.write_text(json.dumps({"ours": ours, "base": base, "base_sync": base_sync,
                               "layer_mib": layer_mib, "marks": marks}))


#: the phases of a save, as pcocc marks their ends: (label, mark)
PHASES = [
    ("CLI start-up, configuration, cluster look-up", "save: cluster found"),
    ("QMP + agent connections, disk and image checks", "save: disk and guest agent checked"),
    ("guest file systems frozen", "fsfreeze: frozen"),
    ("snapshot taken, file systems thawed", "save: snapshot taken"),
    ("copy of the frozen layer, hashed as written", "save: layer written and hashed"),
    ("snapshot merged back", "save: snapshot merged back"),
    ("fsync of the blob, moved into the repository", "save: blob hashed, fsynced and stored"),
]


def print_breakdown(marks: list[dict[str, float]], ours: float, base: float,
                    base_sync: float) -> None:
    """The median duration of each phase of a save, beside the baseline's two steps."""
    rounds = [r for r in marks if all(m in r for _, m in PHASES)]
    if not rounds:
        return
    print("  breakdown (median seconds of each phase):")
    prev = [0.0] * len(rounds)
    for label, mark in PHASES:
        print(f"    {statistics.median(r[mark] - p for r, p in zip(rounds, prev)):6.3f}  {label}")
        prev = [r[mark] for r in rounds]
    print(f"    {ours - statistics.median(prev):6.3f}  metadata commit, process exit (and spawn, before its start mark)")
    print(f"  baseline: {base:.3f} qemu-img convert + {base_sync - base:.3f} fsync")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="[default: 5, quick: 2]")
    parser.add_argument("--data-mib", type=int, default=None, help="[default: 200, quick: 64]")
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    benchlib.add_quick(parser)
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.data_mib = args.data_mib or (64 if args.quick else 200)
    if args.inner:
        inner(args.rounds, args.data_mib, args.inner)
        return 0
    outdir = Path(os.environ.get("PCOCC_TESTVM_DIR") or tempfile.mkdtemp(prefix="testvm-"))
    vm = load_builder().build(outdir)
    try:
        with tempfile.TemporaryDirectory(prefix="save-bench-") as tmp:
            work = Path(tmp)
            env = pcocc_env(work, vm)
            (work / "home" / ".pcocc" / "repos.yaml").write_text(
                json.dumps({"repos": [{"name": "user", "path": str(work / "repo")}]}))
            templates = work / "etc" / "templates.yaml"
            config = yaml.safe_load(templates.read_text())
            config["templates"]["testvm"]["image"] = "user:disk"
            templates.write_text(yaml.safe_dump(config))
            run([PCOCC, "image", "import", vm["disk"], "user:disk"], env)
            run([PCOCC, "image", "resize", "user:disk", f"{args.data_mib + 56}M"], env)
            result = work / "result.json"
            script = (f"{sys.executable} {Path(__file__).resolve()} --rounds {args.rounds}"
                      f" --data-mib {args.data_mib} --inner {result}")
            proc = subprocess.run([PCOCC, "alloc", "-E", script, "testvm:1"], env=env,
                                  text=True, stderr=subprocess.PIPE, check=False)
            if proc.returncode != 0 or not result.exists():
                raise SystemExit(f"pcocc alloc failed ({proc.returncode}): {proc.stderr}")
            data = json.loads(result.read_text())
    finally:
        if "PCOCC_TESTVM_DIR" not in os.environ:
            shutil.rmtree(outdir, ignore_errors=True)
    o, b, bs = (statistics.median(data[k]) for k in ("ours", "base", "base_sync"))
    print(f"top layer of {data['layer_mib']:.0f} MiB ({args.data_mib} MiB written by the guest"
          f" disk); medians over {args.rounds} rounds:")
    print(f"  baseline qemu-img convert -B of the overlay: {b:.2f} s (with fsync {bs:.2f} s)")
    print(f"  pcocc save -d NAME vm0 (freeze, snapshot, copy + hash, store):   {o:.2f} s")
    benchlib.print_phases(data["marks"], "pcocc save")
    print(f"    {o:6.3f}  process ended (metadata committed)")
    print_breakdown(data["marks"], o, b, bs)
    verdict = "within" if o <= 1.5 * bs else "above"
    print(f"ratio {o / bs:.2f}x vs convert + fsync ({verdict} the 1.5x target); "
          f"for reference {o / b:.2f}x vs convert alone (no durability)")
    print("load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    benchlib.baseline("qemu-img convert -U -O qcow2 -B PARENT -F qcow2 of the running VM's "
                      "overlay (the layer as a qcow2 on its parent) into a new file kept to the"
                      " end (as pcocc keeps its blobs), followed by an fsync of it: the "
                      "durability pcocc pays before it commits; page cache synced before each "
                      "run; convert alone is shown for reference")
    benchlib.figure(f"save -d of {args.data_mib} MiB of new data / convert + fsync", o / bs, "x",
                    "<= 1.5")
    benchlib.figure(f"save -d of {args.data_mib} MiB of new data / convert alone", o / b, "x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
