#!/usr/bin/env python3
"""Image store timings, ours next to a baseline in the same run; prints ratios.

VM part:
  1. ``pcocc image import`` of raw images of several sizes (a quarter data) vs
     ``qemu-img convert -O qcow2`` followed by an fsync of its result (``sync FILE``): pcocc
     makes the blob durable before committing, so that is the floor (target: <= 1.3x at the
     largest size). convert alone and convert + ``sync -f`` are printed and plotted too.
  2. ``pcocc image list`` on repositories of 10, 100 and 1,000 images vs ``pcocc --help``
     (target: <= 3x at the largest).
Container part (see ``container_part``): import, re-import and export of a docker-archive
vs skopeo.

Usage: benchmarks/image_import.py [--size-mib N] [--images N] [--repeat N]
                                  [--layers N] [--layer-mib N] [--parts vm,ctr]
Runs in a private temporary directory with its own configuration; removes it at the end.
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

import yaml

import benchlib

HERE = Path(__file__).resolve().parent


def pcocc_bin() -> str:
    exe = Path(sys.executable).parent / "pcocc"
    return str(exe) if exe.exists() else shutil.which("pcocc") or "pcocc"


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def flush_all() -> None:
    """Write back everything dirty, so that no run pays for the previous one's writeback."""
    subprocess.run(["sync"], check=True)


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def make_disk(path: Path, size_mib: int) -> None:
    """A raw disk like a real one: a quarter random data in chunks, the rest zeros."""
    chunk = 4 << 20
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
        for off in range(0, size_mib << 20, 4 * chunk):
            f.seek(off)
            f.write(os.urandom(chunk))


def mark_disk(path: Path) -> None:
    """Change the first block so that the next import stores a new blob, as a first import
    does (re-importing identical content only deduplicates)."""
    with open(path, "r+b") as f:
        f.write(os.urandom(4096))


def report(name: str, ours: list[float], base: list[float], target: float) -> bool:
    o, b = statistics.median(ours), statistics.median(base)
    ratio = o / b
    verdict = "ok" if ratio <= target else "OVER TARGET"
    print(f"{name}: pcocc {o:.3f} s, baseline {b:.3f} s, ratio {ratio:.2f}x "
          f"(target <= {target}x) {verdict}")
    benchlib.figure(f"{name}: pcocc", o, "s")
    benchlib.figure(f"{name}: ratio", ratio, "x", f"<= {target}")
    return ratio <= target


def warm_up(work: Path, env: dict[str, str]) -> None:
    """One untimed run of each command, so that Python byte-compiles pcocc as an installed
    package has (PYTHONDONTWRITEBYTECODE is dropped from ``env`` for that reason)."""
    tiny = work / "tiny.raw"
    tiny.write_bytes(os.urandom(1 << 20))
    subprocess.run([pcocc_bin(), "image", "import", "-t", "raw", str(tiny), "warm-up"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    tiny.unlink()
    for argv in (["image", "list"], ["--help"]):
        subprocess.run([pcocc_bin(), *argv], check=True, env=env, stdout=subprocess.DEVNULL)


def vm_import(work: Path, env: dict[str, str], size_mib: int, repeat: int,
              main: bool = True) -> bool:
    """Each repetition converts one new disk with all contenders, in a rotating order, after
    a full ``sync``: they see the same load and page cache, and none pays another's
    writeback. Medians are reported.

    Every contender writes a new file that stays until the end, as pcocc keeps each blob: a
    baseline that deleted its output before the next run would write into the blocks just
    freed, which costs a fraction of fresh ones on a thin-provisioned disk (measured on
    the 2-core CI VM: ``qemu-img convert`` + ``sync FILE`` of 256 MiB, 0.25-0.34 s into the
    blocks of a deleted file, 0.75-1.2 s into fresh ones)."""
    raw = work / "disk.raw"
    make_disk(raw, size_mib)
    outs = work / "baseline-outputs"
    outs.mkdir(exist_ok=True)
    times: dict[str, list[float]] = {"convert": [], "fsync": [], "syncfs": [], "pcocc": []}
    marks: list[dict[str, float]] = []

    def run(kind: str, i: int) -> None:
        flush_all()
        t0 = time.perf_counter()
        if kind == "pcocc":
            stamps = work / f"timing-{size_mib}-{i}"
            subprocess.run([pcocc_bin(), "image", "import", "-t", "raw", str(raw), f"bench{size_mib}-{i}"],
                           check=True, env={**env, "PCOCC_TIMING": str(stamps)},
                           stdout=subprocess.DEVNULL)
            marks.append(benchlib.phases(stamps, "import: process started"))
        else:
            out = outs / f"{kind}-{size_mib}-{i}.qcow2"
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                            str(out)], check=True)
            if kind == "fsync":  # sync FILE: fsync of the result, the durability pcocc pays
                subprocess.run(["sync", str(out)], check=True)
            elif kind == "syncfs":  # sync -f: flush the whole file system holding it
                subprocess.run(["sync", "-f", str(out)], check=True)
        times[kind].append(time.perf_counter() - t0)

    print(f"VM import, {repeat} repetitions ({load()} before)")
    kinds = list(times)
    for i in range(repeat):
        mark_disk(raw)
        for k in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
            run(k, i)
    raw.unlink()
    shutil.rmtree(outs)
    ours = statistics.median(times["pcocc"])
    for kind, what in (("fsync", "qemu-img convert + fsync of the result (sync FILE)"),
                       ("syncfs", "qemu-img convert + sync -f (whole file system)")):
        b = statistics.median(times[kind])
        print(f"  for reference: {what}: {b:.3f} s, pcocc/this {ours / b:.2f}x")
    print("  all runs (s): " + "; ".join(
        f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items()))
    # The CI VM's disk is bimodal: 256 MiB written and fsynced take ~0.25 s for a while
    # (~750 MiB, seemingly into blocks that deleted files, anyone's, freed), then 1-1.4 s.
    # A contender may get the fast mode alone: the ratio within each round (rotating
    # order) is steadier than the ratio of the medians.
    paired = [p / b for p, b in zip(times["pcocc"], times["fsync"])]
    print("  pcocc / (convert + fsync) round by round: "
          + " ".join(f"{r:.2f}" for r in paired) + f", median {statistics.median(paired):.2f}x")
    for kind, series in (("pcocc", "pcocc image import"), ("convert", "qemu-img convert"),
                         ("fsync", "qemu-img convert + fsync")):
        benchlib.point("import_vs_size", series, size_mib, statistics.median(times[kind]),
                       title="VM image import (raw, a quarter data)", xlabel="image size (MiB)",
                       ylabel="seconds (median)")
    benchlib.print_phases(marks, "pcocc image import")
    print(f"  vs qemu-img convert alone (no durability): "
          f"{ours / statistics.median(times['convert']):.2f}x")
    ok = True
    if main:  # the durable floor: pcocc fsyncs the blob before it commits
        ok = report(f"VM import of a {size_mib} MiB raw image vs qemu-img convert + fsync",
                    times["pcocc"], times["fsync"], 1.3)
    print(f"  ({load()} after)")
    return ok


def vm_list(env: dict[str, str], n_images: int, repeat: int, main: bool = True) -> bool:
    sys.path.insert(0, str(HERE.parent))
    from pcocc.config import load_config
    from pcocc.repo import ops
    from pcocc.repo.reposet import RepoSet

    repos = RepoSet(load_config(env["PCOCC_SYSTEM_CONF_DIR"], env["PCOCC_USER_CONF_DIR"]).repos)
    first = repos.images()[0].name
    existing = len(repos.images())
    for i in range(existing, n_images):
        ops.copy_image(repos, first, f"img{i:05d}")
    assert len(repos.images()) >= n_images
    ours, base = [], []
    for _ in range(repeat):  # interleaved: both see the same load
        ours.append(timed([pcocc_bin(), "image", "list"], env))
        base.append(timed([pcocc_bin(), "--help"], env))
    benchlib.point("list_vs_images", "pcocc image list", n_images, statistics.median(ours),
                   title="`pcocc image list` time vs number of images",
                   xlabel="images in the repository", ylabel="seconds (median)")
    benchlib.point("list_vs_images", "pcocc --help", n_images, statistics.median(base))
    ok = True
    if main:
        ok = report(f"image list of {n_images} images vs pcocc --help", ours, base, 3.0)
    print(f"  ({load()})")
    return ok


def container_part(work: Path, env: dict[str, str], repeat: int, layers: int = 4,
                   layer_mib: int = 32) -> bool:
    """Container images through ``pcocc image``, next to skopeo doing the same copy.

    3. import of a docker-archive vs ``skopeo copy docker-archive: oci:`` (same layer
       options as ours; target <= 1.3x);
    4. re-import of that archive under another name vs the first import (stored blobs are
       linked, not copied or hashed again; target: >= 5x faster);
    5. export to docker-archive vs ``skopeo copy oci: docker-archive:`` from a layout of
       the same image (target <= 1.3x).
    """
    if shutil.which("skopeo") is None or shutil.which("umoci") is None:
        print("container part skipped: skopeo or umoci is not installed")
        return True
    sys.path.insert(0, str(HERE.parent))
    from helpers import testimages

    img = testimages.build_multilayer(work / "ctr-build", extra_layers=layers,
                                      layer_size_bytes=layer_mib << 20)
    archive = work / "ctr-image.tar"
    testimages.convert(img, "docker-archive", str(archive))
    print(f"container image: {archive.stat().st_size / 2**20:.0f} MiB docker-archive, "
          f"{3 + layers} layers")
    skopeo = ["skopeo", "--insecure-policy", "copy", "--quiet"]
    base, durable, first, again, exp, exp_base, start = [], [], [], [], [], [], []
    for i in range(repeat):  # interleaved: both sides see the same machine load
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        base.append(timed([*skopeo, "--dest-oci-accept-uncompressed-layers",
                           f"docker-archive:{archive}", f"oci:{work / f'ctr-base{i}'}:img"]))
        blobs = sorted((work / f"ctr-base{i}" / "blobs" / "sha256").iterdir())
        subprocess.run(["sync", *map(str, blobs)], check=True)  # what pcocc also pays: fsync
        durable.append(time.perf_counter() - t0)
        subprocess.run(["sync"], check=True)
        first.append(timed([pcocc_bin(), "image", "import", f"docker-archive:{archive}",
                            f"ctr{i}"], env))
        again.append(timed([pcocc_bin(), "image", "import", f"docker-archive:{archive}",
                            f"ctr{i}-again"], env))
        start.append(timed([pcocc_bin(), "--help"], env))
        exp_base.append(timed([*skopeo, f"oci:{work / f'ctr-base{i}'}:img",
                               f"docker-archive:{work / f'ctr-base{i}.tar'}"]))
        exp.append(timed([pcocc_bin(), "image", "export", f"ctr{i}",
                          f"docker-archive:{work / f'ctr-out{i}.tar'}"], env))
        for p in (work / f"ctr-base{i}", work / f"ctr-base{i}.tar", work / f"ctr-out{i}.tar"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        if i + 1 < repeat:  # the next first import must find an empty store
            subprocess.run([pcocc_bin(), "image", "delete", f"ctr{i}"], env=env, check=True,
                           stderr=subprocess.DEVNULL)
            subprocess.run([pcocc_bin(), "image", "delete", f"ctr{i}-again"], env=env,
                           check=True, stderr=subprocess.DEVNULL)
            subprocess.run([pcocc_bin(), "image", "repo", "gc", "--grace-period", "0"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"  for reference: skopeo copy alone (no fsync) takes "
          f"{statistics.median(base):.3f} s, ratio "
          f"{statistics.median(first) / statistics.median(base):.2f}x")
    ok = report("container import of a docker-archive vs skopeo copy + fsync", first, durable,
                1.3)
    f, a = statistics.median(first), statistics.median(again)
    speedup = f / a
    print(f"container re-import: {a:.3f} s vs first import {f:.3f} s, {speedup:.1f}x faster "
          f"(target >= 5x) {'ok' if speedup >= 5 else 'UNDER TARGET'}")
    st = statistics.median(start)
    if a > st:
        print(f"  for reference: pcocc start-up ('pcocc --help') takes {st:.3f} s; without it "
              f"the re-import is {(f - st) / (a - st):.1f}x faster than the first import")
    benchlib.figure("container re-import speed-up over the first import", speedup, "x",
                    ">= 5")
    ok &= speedup >= 5
    ok &= report("container export to docker-archive vs skopeo copy", exp, exp_base, 1.3)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", default=None,
                    help="comma-separated sizes; the last one is checked against the target"
                         " (default 256,512,1024; quick 64,256)")
    ap.add_argument("--images", default=None,
                    help="comma-separated repository sizes (default 10,100,1000; quick 10,100)")
    ap.add_argument("--repeat", type=int, default=None, help="default 5, quick 1")
    ap.add_argument("--layers", type=int, default=4, help="bulk container layers")
    ap.add_argument("--layer-mib", type=int, default=None,
                    help="size of each bulk layer (default 32, quick 8)")
    ap.add_argument("--parts", default="vm,ctr", help="what to run: vm, ctr or both")
    benchlib.add_quick(ap)
    args = ap.parse_args()
    sizes = [int(x) for x in (args.size_mib or ("64,256" if args.quick else
                                                "256,512,1024")).split(",")]
    counts = [int(x) for x in (args.images or ("10,100" if args.quick else
                                               "10,100,1000")).split(",")]
    repeat = args.repeat or (1 if args.quick else 5)
    layer_mib = args.layer_mib or (8 if args.quick else 32)
    benchlib.baseline("VM import: `qemu-img convert -O qcow2` of the same raw disk into a new"
                      " file (kept until the end, as pcocc keeps its blobs: no reuse of the"
                      " blocks of a deleted output) followed by `sync FILE` (the fsync pcocc"
                      " pays for durability), rotating order, after a full sync; container"
                      " import: `skopeo copy` with the same layer options + fsync of the blobs;"
                      " image list: `pcocc --help`")
    parts = set(args.parts.split(","))
    if "vm" in parts and shutil.which("qemu-img") is None:
        print("qemu-img is not installed (Debian package qemu-utils)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pcocc-bench-", dir=os.environ.get("TMPDIR")) as d:
        work = Path(d)
        conf = work / "conf"
        conf.mkdir()
        (conf / "repos.yaml").write_text(yaml.safe_dump(
            {"repos": [{"name": "bench", "path": str(work / "repo")}]}))
        env = {**os.environ, "HOME": str(work), "PCOCC_USER_CONF_DIR": str(conf),
               "PCOCC_SYSTEM_CONF_DIR": str(work / "no-system-conf")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ.update({k: env[k] for k in ("PCOCC_USER_CONF_DIR", "PCOCC_SYSTEM_CONF_DIR")})
        warm_up(work, env)
        results = []
        if "vm" in parts:
            for size in sizes:
                results.append(vm_import(work, env, size, repeat, size == sizes[-1]))
            for count in counts:
                results.append(vm_list(env, count, repeat, count == counts[-1]))
        if "ctr" in parts:
            results.append(container_part(work, env, repeat, args.layers, layer_mib))
    print("all targets met" if all(results) else "some targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
