#!/usr/bin/env python3
"""Start-up cost of ``pcocc run`` against the container tools it competes with.

Runs ``true`` from the same busybox image, interleaved, N times each:

- ``pcocc run --runtime R busy -- true``: the image ``busy`` of the user repository (built by
  ``helpers/testimages.py`` and imported), with a warm container cache, from a venv that
  imports pcocc like a regular install (``plain_install``), as a user runs it; and the same
  from the development venv (``editable``), whose import hook costs ~50 ms more
- ``pcocc run`` of the unpacked root filesystem directory, in place (no repository, no cache)
- ``crun run`` of an equivalent bundle, with the same quirk handling as pcocc (the private
  mount namespace and ``--cgroup-manager=disabled`` on hybrid cgroups) — the floor for pcocc
- ``podman run --rootfs`` with the flags these machines need (its crun refuses hybrid
  cgroups, so podman uses runc here when the host is hybrid)
- ``ch-run`` on the directory (Charliecloud)

``crun direct`` uses the rootfs that pcocc's cache unpacked; podman and ch-run a busybox
rootfs from ``helpers/testrootfs.py`` (they want /etc/passwd and friends in it). Prints the
median per tool and the ratios; target: pcocc <= 1.5x crun direct, and faster than podman.
The target of 1.5x crun direct is out of reach of a Python CLI: the interpreter alone starts
in about as long as crun runs a container. Where a warm ``pcocc run`` goes (profiled with
``-X importtime``, cProfile and strace, 2 loaded cores, ~180 ms in all): interpreter ~15 ms;
imports ~110 ms (click ~22, logging ~13, dataclasses+inspect ~14, subprocess ~7, the config
and repository layers ~35 of which the store ~14 and the cache ~7, pcocc.ctr + cli ~20);
pcocc's own work ~15 ms (config, image and cache lookup, bundle, two pod records); the
runtime ~15-20 ms (unshare, sh and mount of the hybrid-cgroup quirk, crun, the app); exit
~8 ms once the final garbage collection is skipped. No second Python process runs on this
path (nsinit, ``python -I -S``, only with the unshare runtime or the slirp gate).
Since then the warm one-node run skips click and the command table (``pcocc.cli.fastrun``;
tests/integration/containers/test_run_hotpath.py keeps heavy modules off it): about 30 ms
less (median of 20 interleaved runs, 192 -> 158 ms, on a shared 2-core machine whose
figures move by +-30 ms from run to run). What is left: the interpreter, dataclasses and
inspect, logging, subprocess, pcocc's own modules (34 dataclasses to build), the config
and image lookups, and the runtime with its quirk handling.
Then (branch warmrun): ``--register-mds`` no longer sends a run through click, a pod not
registered does not import the metadata service, shutil and hashlib stay unimported, and
the process ends with ``os._exit`` after the atexit handlers. ``pcocc run, no mds`` is the
run without the metadata service (whose registration another change works on); the
breakdown of its phases comes from its ``$PCOCC_TIMING`` marks (:mod:`pcocc.timing`).
Then (branch warmrun18): run plans (:mod:`pcocc.ctr.runplan`). The warm-up run of each
command line saves its plan, and the timed runs replay it: no click, config, repository,
json, signal or subprocess module is imported, and the pod's directory, spec, records and
metadata service registration are made from templates (``run: plan checked`` in the
breakdown is the interpreter's start-up plus the key's ~40 ``lstat``). What is left over
crun direct: the interpreter (~15 ms), the pod directory and root layer, two synced record
writes, the spawn and the copy of the output, and the app's overlay root layer (crun direct
runs on the read-only rootfs; namespaces, ids and spec are otherwise the same).
Then, separately, the cold start: ``pcocc run`` right after ``pcocc image cache delete``
(the image is unpacked into the cache first). Usage:
``benchmarks/container_start.py [-n RUNS] [--cold-runs N] [--runtime crun]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "helpers"))

import benchlib
from testimages import build_busybox
from testrootfs import build_rootfs

from pcocc.ctr import host, probe
from pcocc.ctr.spec import Identity, SpecRequest, build_spec


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    res = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(
            f"benchmark command failed ({res.returncode}): {' '.join(argv)}\n"
            f"{res.stderr.decode(errors='replace')[-800:]}"
        )
    return elapsed


def phase_breakdown(argv: list[str], env: dict[str, str], marks: Path,
                    runs: int) -> list[tuple[str, float]]:
    """Median time of each phase of ``argv`` (a pcocc run), from the marks it writes to
    ``$PCOCC_TIMING`` (:mod:`pcocc.timing`): (phase, ms) in order, from the spawn by this
    process to the mark, the last one to the end of the process as seen from here."""
    steps: dict[str, list[float]] = {}
    for _ in range(runs):
        marks.unlink(missing_ok=True)
        start = time.time()
        timed(argv, {**env, "PCOCC_TIMING": str(marks)})
        end = time.time()
        points = sorted((float(t), phase.strip()) for t, _, phase in
                        (line.split(" ", 2) for line in marks.read_text().splitlines()))
        points.append((end, "exit (teardown, seen by the parent)"))
        prev = start
        for t, phase in points:
            steps.setdefault(phase, []).append((t - prev) * 1000)
            prev = t
    return [(phase, statistics.median(v)) for phase, v in steps.items()]


def isolated_env(work: Path) -> dict[str, str]:
    """Our environment with pcocc's home, runtime and configuration directories in ``work``."""
    env = dict(os.environ)
    env.update(
        HOME=str(work / "home"),
        XDG_RUNTIME_DIR=str(work / "run"),
        PCOCC_SYSTEM_CONF_DIR=str(work / "etc"),
        PCOCC_USER_CONF_DIR=str(work / "home" / ".pcocc"),
        USER=env.get("USER") or "root",
        # installed packages have their bytecode: do not time the compiler
        PYTHONPYCACHEPREFIX=str(work / "pycache"),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for d in ("home", "run", "etc"):
        (work / d).mkdir(mode=0o700)
    return env


def plain_install(venv: Path) -> str:
    """A venv that imports pcocc from this checkout by a plain path entry, as a regular
    (non-editable) install does, with this venv's dependencies; returns its ``pcocc``.

    The editable install of the development venv puts an import hook in front of every
    import (``__editable__*.pth``): users do not pay for it, so the main figures do not.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_path("purelib")
    [site] = venv.glob("lib/python*/site-packages")
    (site / "pcocc-bench.pth").write_text(f"{REPO}\n{purelib}\n")
    script = venv / "bin" / "pcocc"
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\n"
        "import sys\nfrom pcocc.cli.main import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return str(script)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=None, help="default 20, quick 5")
    ap.add_argument("--cold-runs", type=int, default=None, help="default 5, quick 2")
    ap.add_argument("--runtime", default="crun", help="pcocc's runtime (default crun)")
    benchlib.add_quick(ap)
    args = ap.parse_args()
    args.runs = args.runs or (5 if args.quick else 20)
    args.cold_runs = args.cold_runs or (2 if args.quick else 5)
    benchlib.baseline("`crun run` (and `runc run`) of a bundle on the rootfs pcocc's cache"
                      " unpacked, with pcocc's own quirk handling; podman --rootfs and ch-run on"
                      " a busybox directory; all warmed once, then interleaved")

    work = Path(tempfile.mkdtemp(prefix="pcocc-bench-ctr-"))
    try:
        env = isolated_env(work)
        os.environ.update(XDG_RUNTIME_DIR=env["XDG_RUNTIME_DIR"])
        dev_pcocc = shutil.which("pcocc", path=str(Path(sys.executable).parent)) or "pcocc"
        pcocc = plain_install(work / "venv")
        image = build_busybox(work / "img")
        timed([pcocc, "image", "import", image.ref, "busy"], env)
        run_busy = [pcocc, "run", "--runtime", args.runtime, "busy", "--", "true"]
        timed(run_busy, env)  # fills the cache
        [rootfs] = (work / "home" / ".cache" / "pcocc" / "entries").glob("dir-*/rootfs")
        digest = json.loads((rootfs.parent / "meta.json").read_text())["digest"]

        no_mds = [*run_busy[:2], "--register-mds=false", *run_busy[2:]]
        commands: dict[str, list[str]] = {
            f"pcocc run ({args.runtime})": run_busy,
            # the same without the metadata service (its registration is measured apart)
            "pcocc run, no mds": no_mds,
            "pcocc run (directory)": [
                pcocc, "run", "--runtime", args.runtime, str(rootfs), "--", "true",
            ],
            # the floor of any pcocc command: interpreter + click, no container
            "pcocc --version": [pcocc, "--version"],
            # the same run from the development venv: its editable-install import hook
            # slows every import of the run
            "pcocc run (editable)": [dev_pcocc, *run_busy[1:]],
        }  # fmt: skip

        full_rootfs = build_rootfs(work / "full") / "rootfs"
        # crun direct, with pcocc's quirk handling (found by the same probe)
        crun = probe.probe("crun")
        bundle = work / "bundle"
        bundle.mkdir()
        req = SpecRequest(
            rootfs=str(rootfs),
            args=["/bin/true"],
            env={},
            identity=Identity(os.getuid(), os.getgid()),
            hostname="bench",
        )
        (bundle / "config.json").write_text(json.dumps(crun.adapt_spec(build_spec(req))))
        commands["crun direct"] = crun.run_argv(bundle, "pcocc-bench")
        missing = [tool for tool in ("runc", "podman", "ch-run") if not shutil.which(tool)]
        if shutil.which("runc"):
            runc = probe.probe("runc")
            runc_bundle = work / "runc-bundle"
            runc_bundle.mkdir()
            (runc_bundle / "config.json").write_text(
                json.dumps(runc.adapt_spec(build_spec(req))))
            commands["runc direct"] = runc.run_argv(runc_bundle, "pcocc-bench-runc")
        benchlib.note(f"not installed, not compared: {', '.join(missing)}" if missing else
                      "compared with crun, runc, podman and ch-run (all installed)")

        if shutil.which("podman"):
            pm_root = work / "podman"
            pm_rootfs = work / "podman-rootfs"
            shutil.copytree(full_rootfs, pm_rootfs, symlinks=True)
            pm_runtime = ["--runtime", "runc"] if host.cgroup_layout() == "hybrid" else []
            commands["podman run"] = [
                "podman",
                "--root",
                str(pm_root / "storage"),
                "--runroot",
                str(pm_root / "run"),
                *pm_runtime,
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "run",
                "--rm",
                "--network=none",
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=4096:4096",
                "--rootfs",
                str(pm_rootfs),
                "true",
            ]
        if shutil.which("ch-run"):
            commands["ch-run"] = ["ch-run", str(full_rootfs), "--", "true"]

        for argv in commands.values():  # warm up (and the per-boot probe of pcocc)
            timed(argv, env)
        samples: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                samples[name].append(timed(argv, env))

        med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
        base = med["crun direct"]
        ours = med[f"pcocc run ({args.runtime})"]
        load = os.getloadavg()[0]
        print(
            f"median start+exit of 'true' over {args.runs} runs "
            f"(load average {load:.1f} on {os.cpu_count()} CPUs)"
        )
        for name, ms in med.items():
            print(f"  {name:<22} {ms:8.1f} ms   x{ms / base:5.2f} of crun direct")
        print(f"pcocc / crun direct = {ours / base:.2f}  (target <= 1.5)")
        if "podman run" in med:
            print(f"pcocc / podman      = {ours / med['podman run']:.2f}  (target < 1)")
        if "ch-run" in med:
            print(f"pcocc / ch-run      = {ours / med['ch-run']:.2f}")
        benchlib.figure(f"pcocc run ({args.runtime}), warm", ours, "ms")
        benchlib.figure("pcocc run - crun direct", ours - base, "ms", "<= 25")
        benchlib.figure("pcocc run / crun direct", ours / base, "x", "<= 1.5")
        if "podman run" in med:
            benchlib.figure("pcocc run / podman run", ours / med["podman run"], "x", "< 1")
        for name, ms in med.items():
            benchlib.point("container_start", "median", name, ms, style="bar",
                           title="Start and exit of `true` in a container",
                           ylabel="milliseconds (median)")
        bare = med["pcocc run, no mds"]
        benchlib.figure("pcocc run --register-mds=false - crun direct", bare - base, "ms",
                        "<= 25")
        print(f"where a warm 'pcocc run --register-mds=false' goes (PCOCC_TIMING marks, "
              f"median of {args.runs // 2 or 1} runs; each step ends at the mark named):")
        for phase, ms in phase_breakdown(no_mds, env, work / "timing", args.runs // 2 or 1):
            print(f"  {ms:7.1f} ms  {phase}")
        own = ours - med["pcocc --version"]
        print(
            f"pcocc run minus 'pcocc --version' = {own:.1f} ms "
            f"(x{own / base:.2f} of crun direct: pcocc's own work plus the runtime)"
        )

        cold = []
        for _ in range(args.cold_runs):
            timed([pcocc, "image", "cache", "delete", digest], env)
            cold.append(timed(run_busy, env))
        cold_ms = statistics.median(cold) * 1000
        print(
            f"cold start (cache emptied first), median of {args.cold_runs}: {cold_ms:.1f} ms "
            f"= x{cold_ms / ours:.2f} of a warm start"
        )
        benchlib.figure("pcocc run, cold cache", cold_ms, "ms")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
