"""The victim's running cluster that an attack test works against: a local-mode
``pcocc alloc`` of the test VM (``victim_cluster_conf``) whose -E script touches
``attack-now`` in the victim's home once it is ready, then waits for ``attack-done``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BOOT_TIMEOUT_S = 240


@dataclass
class VictimRun:
    """The victim's ``pcocc alloc``: its status and stderr once the attack is over."""

    home: Path
    returncode: int | None = None
    stderr: str = field(default="", repr=False)


@contextlib.contextmanager
def victim_cluster(victim, bindir: Path, *alloc_args: str,
                   files: tuple[str, ...] = ()) -> Iterator[VictimRun]:
    """Run ``pcocc alloc ALLOC_ARGS`` as ``victim`` (with ``bindir``, where the fixture
    ``victim_cluster_conf`` put a ``pcocc`` for the -E script, in PATH); yield once
    ``attack-now`` exists; on leaving, touch ``attack-done`` and wait for the cluster to end.
    ``files`` (in the victim's home) are removed before the start."""
    env = {"PATH": f"{bindir}:{victim.base_env['PATH']}",
           "PCOCC_BOOT_TIMEOUT": str(BOOT_TIMEOUT_S), "PCOCC_ACCEL": "tcg"}
    for name in ("attack-now", "attack-done", *files):
        (victim.home / name).unlink(missing_ok=True)
    alloc = victim.popen(["/usr/bin/python3", "-m", "pcocc.cli.main", "alloc", *alloc_args],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    run = VictimRun(victim.home)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S + 120
        while not (victim.home / "attack-now").exists():
            if alloc.poll() is not None:
                pytest.fail(f"the victim's cluster ended early: {alloc.stderr.read()}")
            assert time.monotonic() < deadline, "the victim's cluster did not come up"
            time.sleep(0.5)
        yield run
    finally:
        (victim.home / "attack-done").touch()
        try:
            _out, run.stderr = alloc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(alloc.pid, 15)
            _out, run.stderr = alloc.communicate(timeout=30)
        run.returncode = alloc.returncode
