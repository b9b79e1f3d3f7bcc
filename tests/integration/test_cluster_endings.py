"""How virtual clusters end on the Slurm dev cluster: what the user reads and the status.

A successful run prints nothing from Slurm (the node processes end on their own before the
step is signalled); a cancelled job says it was stopped, not that a node failed; places are
Slurm node names.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from tests.fixtures.cluster import Env, assert_nothing_left

pytestmark = pytest.mark.slow


def _lines(text: str) -> list[str]:
    return [re.sub(r"\d+", "N", ln) for ln in text.splitlines() if ln.strip()]


def test_successful_alloc_prints_no_slurm_error_and_names_nodes(slurm_test_env):
    env: Env = slurm_test_env
    res = env.run("alloc", "-E", "pcocc ps", "testvm:2", "--", "-N", "2")
    assert res.returncode == 0, res.stderr
    # salloc's own notes about the allocation come and go with timing (a late "has been
    # revoked"); what matters is that nothing else speaks, and no error at all
    assert [ln for ln in _lines(res.stderr) if not ln.startswith("salloc: ")] == [
        "pcocc: booting N VMs",
        "pcocc: cluster N is running: vmN@nN, vmN@nN",
    ], res.stderr
    assert "error" not in res.stderr.lower() and "srun" not in res.stderr, res.stderr
    assert re.search(r"running: vm0@n\d, vm1@n\d$", res.stderr, re.M), res.stderr
    header, row = res.stdout.splitlines()[:2]
    nodes = row.split()[header.split().index("NODES")]
    assert re.fullmatch(r"n\d,n\d", nodes), res.stdout
    assert_nothing_left(env, env.endpoints)


def test_batch_output_is_quiet_and_states_the_scripts_status(slurm_test_env):
    env: Env = slurm_test_env
    res = env.run("batch", "-E", "echo from the script; exit 3", "testvm:1")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    output = env.tmp / f"slurm-{job_id}.out"
    deadline = time.monotonic() + 300
    text = ""
    while time.monotonic() < deadline:
        text = output.read_text() if output.exists() else ""
        if "exited with status" in text:
            break
        time.sleep(0.5)
    time.sleep(1)  # the launcher's last lines
    text = output.read_text()
    assert "from the script" in text
    assert "pcocc: the command exited with status 3" in text
    assert "srun:" not in text and "slurmstepd" not in text, text
    assert_nothing_left(env, env.endpoints)


def test_scancel_says_the_job_was_stopped(slurm_test_env):
    env: Env = slurm_test_env
    proc = env.start("alloc", "-E", "sleep 600", "testvm:2")
    clusters = env.wait_ps(lambda cs: len(cs) == 1 and cs[0]["running"] == 2, "the VMs to run",
                           proc=proc)
    subprocess.run(["scancel", clusters[0]["id"]], env=env.env, check=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert f"cluster {clusters[0]['id']} stopped: the batch system sent SIGTERM" in err, err
    assert "disappeared" not in err and "may have failed" not in err
    assert_nothing_left(env, env.endpoints)
