#!/usr/bin/env python3
"""Fetch of a 100 MiB signed VM image from a loopback HTTPS server, against curl + gpgv.

ours:      ``pcocc image fetch --no-store URL`` (download, gpgv check against the trust
           store, import into the user repository);
baseline:  ``curl --cacert CA -o img URL && curl --cacert CA -o img.asc URL.asc &&
           gpgv --keyring KEY img.asc img``: what a careful user types to get a verified
           copy (no import: the baseline does less than pcocc);
second:    ``pcocc image fetch URL`` again with an unchanged ETag (one request, a 304),
           against ``pcocc image list``.

The server is the test suite's (tests/fixtures/https.py: http.server + ssl in a thread of
this process), serving the same files to both. Prints medians and ratios (targets: 1.3x
and 1.2x).

    python benchmarks/fetch.py [--rounds N] [--size-mib N]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures import https  # noqa: E402
from tests.fixtures.pgp import _make  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=100)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pcocc-bench-fetch-"))
    try:
        keys = _make(work / "gnupg")
        raw = work / "disk.raw"
        with open(raw, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        img = work / "app.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(img)],
                       check=True)
        raw.unlink()
        sig = keys.sign("good", img)
        server = https.start(work / "srv")
        url = server.serve("/images/app.qcow2", img.read_bytes())
        server.serve("/images/app.qcow2.asc", sig.read_bytes())
        pub = keys.export("good", work / "good.gpg", armor=False)

        home = work / "home"
        (home / ".pcocc").mkdir(parents=True)
        (work / "etc").mkdir()
        (home / ".pcocc" / "repos.yaml").write_text(yaml.safe_dump(
            {"repos": [{"name": "user", "path": str(home / ".pcocc" / "repo")}]}))
        env = {**os.environ, "HOME": str(home), "PCOCC_USER_CONF_DIR": str(home / ".pcocc"),
               "PCOCC_SYSTEM_CONF_DIR": str(work / "etc"), "SSL_CERT_FILE": str(server.ca_file),
               "PYTHONPATH": str(ROOT)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # like an installed pcocc: bytecode cached
        pcocc = [sys.executable, "-m", "pcocc.cli.main"]
        subprocess.run([*pcocc, "trust", "--root", "--skip-fingerprint-review", str(pub)],
                       env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        subprocess.run([*pcocc, "image", "list"], env=env, check=True, capture_output=True)
        dl = work / "dl"
        dl.mkdir()
        baseline = ["sh", "-c", f"curl -sf --cacert {server.ca_file} -o {dl}/img {url} && "
                    f"curl -sf --cacert {server.ca_file} -o {dl}/img.asc {url}.asc && "
                    f"gpgv --homedir {dl} --keyring {pub} {dl}/img.asc {dl}/img"]
        ours, base, again, listing = [], [], [], []
        for i in range(args.rounds):
            base.append(timed(baseline, env))
            ours.append(timed([*pcocc, "image", "fetch", "--no-store", "--dest", f"b{i}", url],
                              env))
            subprocess.run([*pcocc, "image", "delete", f"b{i}"], env=env, check=True,
                           capture_output=True)
        subprocess.run([*pcocc, "image", "fetch", url], env=env, check=True,
                       capture_output=True)
        for _ in range(args.rounds):
            again.append(timed([*pcocc, "image", "fetch", url], env))
            listing.append(timed([*pcocc, "image", "list"], env))
        m_ours, m_base = statistics.median(ours), statistics.median(base)
        m_again, m_list = statistics.median(again), statistics.median(listing)
        print(f"fetch {args.size_mib} MiB signed image, median of {args.rounds}:")
        print(f"  pcocc image fetch --no-store   {m_ours:7.3f} s")
        print(f"  curl + curl + gpgv (baseline)  {m_base:7.3f} s   ratio {m_ours / m_base:.2f}x"
              " (target <= 1.3x)")
        print(f"  pcocc image fetch, same ETag   {m_again:7.3f} s")
        print(f"  pcocc image list               {m_list:7.3f} s   ratio "
              f"{m_again / m_list:.2f}x (target <= 1.2x)")
        print("baseline: curl --cacert of image and .asc from the same loopback server, then "
              "gpgv against the one trusted key (no import into a repository)")
        server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
