"""The hot path of ``pcocc run`` (image cached, configuration cache valid, one node) imports
none of the heavy modules: it must start in about the time of the runtime itself."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.integration.containers.ctrlib import pcocc

#: top-level packages that a warm ``pcocc run`` must not import
HEAVY = {"click", "jsonschema", "yaml", "grpc", "etcd3", "qemu", "importlib_metadata",
         "pkg_resources"}
#: modules that a warm run without the metadata service (``--register-mds=false``) must not
#: import either: each costs milliseconds and none serves a run (compression for shutil,
#: OpenSSL for hashlib, the service's own modules, click's command table...)
NOT_WITHOUT_MDS = {"shutil", "zlib", "bz2", "lzma", "hashlib", "_hashlib", "socket", "ssl",
                   "uuid", "tempfile", "argparse", "pickle", "base64", "hmac", "secrets",
                   "random", "datetime", "email", "http", "xml", "asyncio", "concurrent",
                   "multiprocessing", "tarfile", "zipfile", "pcocc.ctr.mds",
                   "pcocc.ctr.mds_server", "pcocc.cli.app", "pcocc.cli.commands",
                   "pcocc.cli.containers"}


def imported_modules(importtime_stderr: str) -> set[str]:
    """Names of the modules of ``python -X importtime`` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.add(name)
    return names


def test_imported_modules_parses_importtime():
    err = ("import time: self [us] | cumulative | imported package\n"
           "import time:       473 |      27344 | click\n"
           "import time:        19 |      12437 |     pcocc.config.model\n"
           "some app output\n")
    assert imported_modules(err) == {"click", "pcocc.config.model"}


@pytest.mark.slow
def test_warm_run_imports_no_heavy_module(env, pcocc_bin, busybox_image):
    if not shutil.which("crun"):
        pytest.skip("crun is not installed")
    # a configuration file, so that its cached copy (not yaml) is what the run reads
    (env["user"] / "containers.yaml").write_text("env:\n  HOTPATH: 'yes'\n")
    pcocc(pcocc_bin, "image", "import", busybox_image.ref, "busy", check=0)
    argv = ["run", "--runtime", "crun", "busy", "--", "sh", "-c", 'echo "$HOTPATH"']
    pcocc(pcocc_bin, *argv, check=0)  # fills the container cache and the config cache
    mods = warm_run_modules(pcocc_bin, argv)
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY)
    assert not heavy, f"the warm 'pcocc run' imported {heavy}"
    mods = warm_run_modules(pcocc_bin, [argv[0], "--register-mds=false", *argv[1:]])
    more = sorted(m for m in mods if m in NOT_WITHOUT_MDS or m.split(".")[0] in HEAVY)
    assert not more, f"the warm 'pcocc run --register-mds=false' imported {more}"


def warm_run_modules(pcocc_bin: str, argv: list[str]) -> set[str]:
    """The modules that ``pcocc *argv`` imports (it must print "yes")."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", pcocc_bin, *argv],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "yes"
    mods = imported_modules(res.stderr)
    assert "pcocc.ctr.launch" in mods  # the run did go through pcocc's launcher
    return mods
