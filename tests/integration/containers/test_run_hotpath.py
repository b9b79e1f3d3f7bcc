"""The hot path of ``pcocc run`` (image cached, configuration cache valid, one node) imports
none of the heavy modules: it must start in about the time of the runtime itself. A run
replayed from its saved plan (pcocc.ctr.runplan) imports almost nothing, and a plan never
outlives a change of what it was made from."""

from __future__ import annotations

import os
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
#: all that a run replayed from its plan may import besides the interpreter's start-up
PLAN_PATH = {"__future__", "pcocc", "pcocc.cli", "pcocc.cli.main", "pcocc.ctr",
             "pcocc.ctr.runplan", "pcocc.ctr.planexec", "pcocc.randid", "pcocc.timing",
             "fcntl", "select"}
#: and with the metadata service
PLAN_MDS = {"pcocc.ctr.planmds", "_socket"}


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
    # the environment of os.environ, as warm_run_modules passes it (a plan is for one
    # environment, and pytest's C-level environment may differ from os.environ)
    pcocc(pcocc_bin, *argv, check=0, env=dict(os.environ))  # fills the caches, saves a plan
    usual = {"PCOCC_RUN_PLANS": "0"}  # the usual path, not the plan's
    mods = warm_run_modules(pcocc_bin, argv, env=usual)
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY)
    assert not heavy, f"the warm 'pcocc run' imported {heavy}"
    no_mds = [argv[0], "--register-mds=false", *argv[1:]]
    mods = warm_run_modules(pcocc_bin, no_mds, env=usual)
    more = sorted(m for m in mods if m in NOT_WITHOUT_MDS or m.split(".")[0] in HEAVY)
    assert not more, f"the warm 'pcocc run --register-mds=false' imported {more}"
    # replayed from their plans: almost nothing imported
    assert "pcocc.ctr.planwrite" in warm_run_modules(pcocc_bin, no_mds)  # saves its plan
    for line, allowed in ((argv, PLAN_PATH | PLAN_MDS), (no_mds, PLAN_PATH)):
        mods = warm_run_modules(pcocc_bin, line, launcher="pcocc.ctr.planexec",
                                env={"PCOCC_DEBUG": "1"})  # says why a plan is not used
        extra = sorted(mods - startup_modules() - allowed)
        assert not extra, f"'pcocc {' '.join(line)}' replayed from its plan imported {extra}"


def startup_modules() -> set[str]:
    """The modules that the interpreter imports before any code of ours."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                         capture_output=True, text=True, timeout=60, check=True)
    return imported_modules(res.stderr)


def warm_run_modules(pcocc_bin: str, argv: list[str], launcher: str = "pcocc.ctr.launch",
                     env: dict[str, str] | None = None) -> set[str]:
    """The modules that ``pcocc *argv`` imports (it must print "yes"), through
    ``launcher``, with ``env`` added to the environment."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", pcocc_bin, *argv],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    said = [line for line in res.stderr.splitlines() if "run plan" in line]
    assert not said, said
    assert res.stdout.strip() == "yes"
    mods = imported_modules(res.stderr)
    assert launcher in mods  # the run did go that way
    return mods


@pytest.mark.slow
def test_a_plan_never_outlives_a_change_of_its_inputs(env, pcocc_bin, busybox_image,
                                                     multilayer_image):
    """A changed configuration file reaches the next run; a deleted image is not run from
    the plan's cache entry; another image imported under the same name is the one run."""
    if not shutil.which("crun"):
        pytest.skip("crun is not installed")

    def run(*args, **kw):  # with os.environ, as timed_run (one environment, one plan)
        return pcocc(pcocc_bin, *args, env=dict(os.environ), **kw)

    conf = env["user"] / "containers.yaml"
    conf.write_text("env:\n  HOTPATH: 'one'\n")
    run("image", "import", busybox_image.ref, "busy", check=0)
    argv = ["run", "--register-mds=false", "--runtime", "crun", "busy", "--",
            "sh", "-c", 'echo "$HOTPATH"; ls /data 2>/dev/null || echo no-data']
    for _ in range(2):  # the second run is replayed from the plan of the first
        assert run(*argv, check=0).stdout.split() == ["one", "no-data"]
    assert "run: plan checked" in timed_run(pcocc_bin, argv, env["home"])
    assert any(env["home"].glob(".cache/pcocc/run-plans/*"))
    conf.write_text("env:\n  HOTPATH: 'two'\n")
    for _ in range(2):
        assert run(*argv, check=0).stdout.split() == ["two", "no-data"]
    run("image", "delete", "busy", check=0)
    res = run(*argv, check=1)
    assert "not found" in res.stderr and "two" not in res.stdout
    run("image", "import", multilayer_image.ref, "busy", check=0)
    for _ in range(2):
        assert run(*argv, check=0).stdout.split() == ["two", "new", "top"]


def timed_run(pcocc_bin: str, argv: list[str], where) -> str:
    """The PCOCC_TIMING marks of ``pcocc *argv`` (run with os.environ)."""
    marks = where / "marks"
    marks.unlink(missing_ok=True)
    subprocess.run([pcocc_bin, *argv], env={**os.environ, "PCOCC_TIMING": str(marks)},
                   capture_output=True, timeout=120, check=True)
    return marks.read_text()
