#!/usr/bin/env python3
"""Container image import: pcocc's OCI driver vs skopeo alone, and a re-import.

Builds a multi-layer image (busybox + whiteout layers + N bulk layers) with umoci, saves it
as a docker-archive, then times in one run:

- baseline: ``skopeo copy docker-archive:... oci:<fresh dir>`` (same layer options as ours);
- first import: ``oci.import_image`` into an empty blob directory (digest check, rename);
- re-import of the same archive into that blob directory.

Targets: first import <= 1.3x skopeo; re-import >= 5x faster than the first import.

    .venv/bin/python benchmarks/image_import_oci.py [--layers 4] [--layer-mib 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import testimages
from pcocc import proc
from pcocc.repo import oci


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="bulk layers on top of busybox")
    ap.add_argument("--layer-mib", type=int, default=32, help="size of each bulk layer")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="pcocc-bench-oci-") as tmp_s:
        tmp = Path(tmp_s)
        img = testimages.build_multilayer(
            tmp / "build", extra_layers=args.layers, layer_size_bytes=args.layer_mib << 20
        )
        archive = tmp / "image.tar"
        testimages.convert(img, "docker-archive", str(archive))
        print(
            f"image: {archive.stat().st_size / 2**20:.0f} MiB docker-archive, "
            f"{3 + args.layers} layers"
        )

        def baseline(i: int) -> None:
            proc.run(
                [
                    "skopeo",
                    "--insecure-policy",
                    "copy",
                    "--quiet",
                    "--dest-oci-accept-uncompressed-layers",
                    f"docker-archive:{archive}",
                    f"oci:{tmp / f'base{i}'}:img",
                ]
            )

        def first(i: int) -> None:
            staging = tmp / f"stage-first{i}"
            staging.mkdir()
            oci.import_image(
                str(archive), "docker-archive", staging, testimages.BlobDir(tmp / f"store{i}")
            )
            shutil.rmtree(staging)

        store = testimages.BlobDir(tmp / "store0")

        def again(i: int) -> None:
            staging = tmp / f"stage-again{i}"
            staging.mkdir()
            oci.import_image(str(archive), "docker-archive", staging, store)
            shutil.rmtree(staging)

        t_base, t_first, t_again = [], [], []
        for i in range(args.runs):  # interleaved, so that both see the same machine load
            t_base.append(timed(lambda i=i: baseline(i)))
            t_first.append(timed(lambda i=i: first(i)))
            shutil.rmtree(tmp / f"base{i}")  # both outputs dropped: same write-back cost
            if i:
                shutil.rmtree(tmp / f"store{i}")
        for i in range(args.runs):
            t_again.append(timed(lambda i=i: again(i)))
        b, f, a = (statistics.median(x) for x in (t_base, t_first, t_again))
        print(f"skopeo copy alone      : {b:7.3f} s (median of {args.runs})")
        print(f"pcocc first import     : {f:7.3f} s   ratio {f / b:.2f}x skopeo (target <= 1.3x)")
        print(
            f"pcocc re-import        : {a:7.3f} s   {f / a:.1f}x faster than first (target >= 5x)"
        )
        ok = f / b <= 1.3 and f / a >= 5
        print("targets met" if ok else "TARGETS MISSED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
