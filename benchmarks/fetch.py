#!/usr/bin/env python3
"""Fetch of a 100 MiB signed VM image from a loopback HTTPS server, against curl + gpgv.

ours:      ``pcocc image fetch --no-store URL`` (download, gpgv check against the trust
           store, import into the user repository);
baseline:  ``curl --cacert CA -o img URL && curl --cacert CA -o img.asc URL.asc &&
           gpgv --keyring KEY img.asc img && sync img``: what a careful user types to get a
           verified copy on disk (pcocc's blob is fsynced before it is committed, so the
           baseline's copy is too; no import: the baseline does less than pcocc);
second:    ``pcocc image fetch URL`` again with an unchanged ETag (one request, a 304),
           against ``pcocc image list``.

The server is the test suite's (tests/fixtures/https.py: http.server + ssl in a thread of
this process), serving the same files to both. Prints medians and ratios (targets: 1.3x
and 1.2x), and where the time of a fetch goes: the ``$PCOCC_TIMING`` marks (pcocc/timing.py)
of each run, in seconds since the process started, medians over the rounds.

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

import benchlib
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pcocc import timing  # noqa: E402
from tests.fixtures import https  # noqa: E402
from tests.fixtures.pgp import _make  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def timed_marks(argv: list[str], env: dict[str, str], marks: Path
                ) -> tuple[float, dict[str, float]]:
    """``timed`` with ``$PCOCC_TIMING`` set: also the seconds from the process start to
    each phase pcocc marked."""
    marks.unlink(missing_ok=True)
    took = timed(argv, {**env, timing.ENV: str(marks)})
    lines = [ln.split(" ", 2) for ln in marks.read_text().splitlines()] if marks.exists() else []
    t0 = min((float(t) for t, _, _ in lines), default=0.0)
    return took, {phase: float(t) - t0 for t, _, phase in lines}


def print_phases(title: str, rounds: list[dict[str, float]]) -> None:
    names = sorted(set().union(*rounds), key=lambda n: statistics.median(
        r[n] for r in rounds if n in r))
    print(f"  {title} (median seconds since the process started):")
    for n in names:
        print(f"    {statistics.median(r[n] for r in rounds if n in r):7.3f}  {n}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=None, help="[default: 5, quick: 2]")
    ap.add_argument("--size-mib", type=int, default=None, help="[default: 100, quick: 32]")
    benchlib.add_quick(ap)
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.size_mib = args.size_mib or (32 if args.quick else 100)
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
                    f"gpgv --homedir {dl} --keyring {pub} {dl}/img.asc {dl}/img && sync {dl}/img"]
        ours, base, again, listing = [], [], [], []
        phases, phases_again = [], []
        for i in range(args.rounds):
            base.append(timed(baseline, env))
            took, marks = timed_marks(
                [*pcocc, "image", "fetch", "--no-store", "--dest", f"b{i}", url], env,
                work / "marks")
            ours.append(took)
            phases.append(marks)
            subprocess.run([*pcocc, "image", "delete", f"b{i}"], env=env, check=True,
                           capture_output=True)
        subprocess.run([*pcocc, "image", "fetch", url], env=env, check=True,
                       capture_output=True)
        for _ in range(args.rounds):
            took, marks = timed_marks([*pcocc, "image", "fetch", url], env, work / "marks")
            again.append(took)
            phases_again.append(marks)
            listing.append(timed([*pcocc, "image", "list"], env))
        m_ours, m_base = statistics.median(ours), statistics.median(base)
        m_again, m_list = statistics.median(again), statistics.median(listing)
        print(f"fetch {args.size_mib} MiB signed image, median of {args.rounds}:")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"  pcocc image fetch --no-store   {m_ours:7.3f} s")
        print(f"  curl + curl + gpgv (baseline)  {m_base:7.3f} s   ratio {m_ours / m_base:.2f}x"
              " (target <= 1.3x)")
        print(f"  pcocc image fetch, same ETag   {m_again:7.3f} s")
        print(f"  pcocc image list               {m_list:7.3f} s   ratio "
              f"{m_again / m_list:.2f}x (target <= 1.2x)")
        print_phases("fetch --no-store", phases)
        print_phases("fetch again, same ETag", phases_again)
        benchlib.baseline("curl --cacert of image and .asc from the same loopback server, then "
                          "gpgv against the one trusted key, then sync of the image (fsync: "
                          "pcocc's blob is durable too); no import into a repository")
        print(f"second fetch: `pcocc image fetch URL` answered 304 (one conditional request "
              f"over a new TLS connection), against `pcocc image list` of the same "
              f"repository, interleaved, {args.rounds} rounds each, bytecode cached")
        benchlib.figure(f"fetch of a {args.size_mib} MiB signed image / curl + gpgv",
                        m_ours / m_base, "x", "<= 1.3")
        benchlib.figure("fetch again, unchanged ETag / pcocc image list", m_again / m_list, "x",
                        "<= 1.2")
        server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
