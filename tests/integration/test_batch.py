"""Both batch managers, one test body: local child processes and the real dev Slurm cluster."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest

from pcocc.batch import JobSpec, get_manager
from pcocc.config import BatchConfig
from pcocc.errors import NotFound

#: run inside the allocation: start ntasks tasks, each writes "<node>" to out_dir/<rank>
_IN_ALLOCATION = """
import json, sys
from pcocc.batch import get_manager
from pcocc.config import BatchConfig
settings, ntasks, out_dir = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
manager = get_manager(BatchConfig.from_data(settings))
job_id = manager.job_id_from_env()
task = ("import os\\nfrom pcocc.batch import task_rank\\n"
        "open(os.path.join(%r, str(task_rank())), 'w')"
        ".write(os.environ.get('SLURMD_NODENAME', 'local') + ' ' + os.environ['JOB'])" % out_dir)
env = dict(__import__("os").environ, JOB=job_id)
sys.exit(manager.launch_tasks(job_id, ntasks, [sys.executable, "-c", task], env).wait())
"""


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def batch(request, tmp_path):
    """(settings, manager) for each batch manager; slurm runs on the dev cluster."""
    if request.param == "slurm":
        request.getfixturevalue("slurm_env")
        settings = {"type": "slurm"}
    else:
        settings = {"type": "local", "local": {"state-dir": str(tmp_path / "local jobs")}}
    return settings, get_manager(BatchConfig.from_data(settings))


def _wait_state(manager, job_id, wanted, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    state = manager.state(job_id)
    while state != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        state = manager.state(job_id)
    return state


@pytest.mark.parametrize("ntasks", [2, 4])
def test_allocate_runs_tasks_in_the_allocation(batch, ntasks, tmp_path):
    settings, manager = batch
    out = tmp_path / "ranks out"
    out.mkdir()
    status = manager.allocate(
        JobSpec(ntasks=ntasks),
        [sys.executable, "-c", _IN_ALLOCATION, json.dumps(settings), str(ntasks), str(out)],
    )
    assert status == 0
    written = {p.name: p.read_text().split() for p in out.iterdir()}
    assert sorted(written) == [str(r) for r in range(ntasks)]
    job_ids = {job for _node, job in written.values()}
    assert len(job_ids) == 1
    nodes = {node for node, _job in written.values()}
    if manager.name == "slurm":
        assert nodes <= {"n1", "n2", "n3", "n4"}
    else:
        assert nodes == {"local"}


def test_allocate_returns_the_command_status(batch):
    _settings, manager = batch
    assert manager.allocate(JobSpec(ntasks=1), ["sh", "-c", "exit 3"]) == 3


def test_submit_and_wait(batch, tmp_path):
    _settings, manager = batch
    out = tmp_path / "job's out"
    out.mkdir()
    job_id = manager.submit(
        JobSpec(ntasks=2, workdir=str(out), output=str(out / "log %j.txt")),
        'echo "job $SLURM_JOB_ID$PCOCC_JOB_ID" > result.txt\necho to-log\n',
    )
    assert manager.wait(job_id, timeout_s=60) == "COMPLETED"
    assert (out / "result.txt").read_text().split() == ["job", job_id]
    assert (out / f"log {job_id}.txt").read_text().strip() == "to-log"


def test_failing_script_is_failed(batch, tmp_path):
    _settings, manager = batch
    job_id = manager.submit(JobSpec(ntasks=1, workdir=str(tmp_path)), "exit 7\n")
    assert manager.wait(job_id, timeout_s=60) == "FAILED"


def test_cancel_a_running_job(batch, tmp_path):
    _settings, manager = batch
    job_id = manager.submit(JobSpec(ntasks=1, workdir=str(tmp_path)), "sleep 300\n")
    assert _wait_state(manager, job_id, "RUNNING") == "RUNNING"
    nodes = manager.nodes(job_id)
    if manager.name == "slurm":
        assert len(nodes) == 1 and nodes[0] in {"n1", "n2", "n3", "n4"}
    else:
        assert nodes == [socket.gethostname()]
    manager.cancel(job_id)
    assert manager.wait(job_id, timeout_s=60) == "CANCELLED"


def test_failing_task_ends_the_others(batch, tmp_path):
    _settings, manager = batch
    job_id = manager.submit(JobSpec(ntasks=3, workdir=str(tmp_path)), "sleep 300\n")
    try:
        assert _wait_state(manager, job_id, "RUNNING") == "RUNNING"
        rank_script = (
            "import sys, time\nfrom pcocc.batch import task_rank\n"
            "sys.exit(5) if task_rank() == 0 else time.sleep(300)"
        )
        tasks = manager.launch_tasks(job_id, 3, [sys.executable, "-c", rank_script])
        assert tasks.wait(timeout=120) != 0
    finally:
        manager.cancel(job_id)


def test_unknown_job_is_not_found(batch):
    _settings, manager = batch
    with pytest.raises(NotFound, match="99999"):
        manager.state("99999")
