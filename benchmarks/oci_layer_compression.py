#!/usr/bin/env python3
"""Importing a docker-archive: layers kept as plain tar vs compressed by skopeo.

pcocc imports with ``skopeo copy --dest-oci-accept-uncompressed-layers`` (layers keep
their source digests). This runs that copy and the one without the option (skopeo gzips
every plain layer) side by side, interleaved, on a docker-archive whose bulk layer holds
real files (the host's shared libraries: compressible like real images), and prints the
times, the ratio and the stored sizes.

Usage: benchmarks/oci_layer_compression.py [--mib N] [--repeat N]
Runs in a private temporary directory; removes it at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

HERE = Path(__file__).resolve().parent
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")


def bulk_entries(limit_bytes: int) -> list[tuple]:
    """Layer entries for up to ``limit_bytes`` of the host's libraries."""
    entries: list[tuple] = [("dir", "usr", None), ("dir", "usr/lib", None)]
    total = 0
    lib_dir = next(Path(d) for d in LIB_DIRS if Path(d).is_dir())
    for path in sorted(lib_dir.rglob("*")):
        if total >= limit_bytes:
            break
        if path.is_file() and not path.is_symlink():
            entries.append(("file", f"usr/lib/{len(entries)}-{path.name}", str(path)))
            total += path.stat().st_size
    return entries


def copy_time(archive: Path, dest: Path, keep: bool) -> tuple[float, int]:
    """Seconds of one skopeo copy to an OCI layout, and the bytes of its blobs."""
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet"]
    if keep:
        argv.append("--dest-oci-accept-uncompressed-layers")
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    subprocess.run([*argv, f"docker-archive:{archive}", f"oci:{dest}:img"], check=True)
    took = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (dest / "blobs" / "sha256").iterdir())
    shutil.rmtree(dest)
    return took, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=None,
                    help="size of the bulk layer (default 150, quick 30)")
    ap.add_argument("--repeat", type=int, default=None, help="default 3, quick 1")
    benchlib.add_quick(ap)
    args = ap.parse_args()
    args.mib = args.mib or (30 if args.quick else 150)
    args.repeat = args.repeat or (1 if args.quick else 3)
    benchlib.baseline("the same `skopeo copy` of the same docker-archive without"
                      " --dest-oci-accept-uncompressed-layers (skopeo's default: gzip), interleaved")
    if shutil.which("skopeo") is None or shutil.which("umoci") is None:
        print("skopeo and umoci are needed", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE.parent))
    from helpers import testimages

    with tempfile.TemporaryDirectory(prefix="pcocc-bench-") as tmp:
        work = Path(tmp)
        img = testimages.build_busybox(work / "build")
        testimages.add_layer(img.layout, img.tag, bulk_entries(args.mib << 20), work / "t")
        archive = work / "image.tar"
        testimages.convert(img, "docker-archive", str(archive))
        print(f"docker-archive: {archive.stat().st_size / 2**20:.0f} MiB")
        times: dict[bool, list[float]] = {True: [], False: []}
        sizes: dict[bool, int] = {}
        for i in range(args.repeat):  # interleaved: both see the same machine load
            for keep in (True, False):
                took, sizes[keep] = copy_time(archive, work / f"out-{keep}-{i}", keep)
                times[keep].append(took)
        keep_s, gzip_s = statistics.median(times[True]), statistics.median(times[False])
        print(f"layers kept (pcocc):   {keep_s:.2f} s, {sizes[True] / 2**20:.0f} MiB stored")
        print(f"layers gzipped:        {gzip_s:.2f} s, {sizes[False] / 2**20:.0f} MiB stored")
        print(f"ratio gzipped / kept:  {gzip_s / keep_s:.1f}x")
        benchlib.figure("import keeping plain layers", keep_s, "s")
        benchlib.figure("gzipped / kept (time)", gzip_s / keep_s, "x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
