"""The local batch manager's records and task runner (no services needed)."""

from __future__ import annotations

import sys

import pytest

from pcocc.batch import JobSpec
from pcocc.batch.local import LocalManager, run_tasks
from pcocc.errors import NotFound


def test_job_ids_are_distinct_and_increasing(tmp_path):
    manager = LocalManager(tmp_path / "jobs")
    ids = [manager.submit(JobSpec(ntasks=1), "true\n") for _ in range(3)]
    assert ids == ["1", "2", "3"]
    for job_id in ids:
        assert manager.wait(job_id, timeout_s=30) == "COMPLETED"


def test_launch_in_an_unknown_job_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="local job 5 not found"):
        LocalManager(tmp_path).launch_tasks("5", 1, ["true"])


def test_runner_gives_ranks_and_the_first_failure(tmp_path, capfd):
    script = (
        "import os, sys\n"
        "rank = int(os.environ['PCOCC_TASK_RANK'])\n"
        f"open(os.path.join({str(tmp_path)!r}, str(rank)), 'w').write(os.environ['PCOCC_NTASKS'])\n"
        "if rank == 2:\n"
        "    # fail only once the others have written: a failure stops the other tasks\n"
        "    import time\n"
        "    deadline = time.monotonic() + 30\n"
        f"    while len(os.listdir({str(tmp_path)!r})) < 3 and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    sys.exit(4)\n"
    )
    assert run_tasks(3, [sys.executable, "-c", script]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2"]
    assert {p.read_text() for p in tmp_path.iterdir()} == {"3"}


def test_cancel_of_a_finished_job_does_nothing(tmp_path):
    manager = LocalManager(tmp_path)
    job_id = manager.submit(JobSpec(ntasks=1), "exit 0\n")
    assert manager.wait(job_id, timeout_s=30) == "COMPLETED"
    manager.cancel(job_id)
    assert manager.state(job_id) == "COMPLETED"


def test_a_single_task_runs_without_the_runner_as_rank_0(tmp_path):
    """One task needs no runner: the Popen is the task itself (a Python start less before
    the VM of a one-VM cluster starts, issue 18), with the rank variables of a task."""
    manager = LocalManager(tmp_path / "jobs")
    job = manager.submit(JobSpec(ntasks=1), "sleep 30\n")
    out = tmp_path / "out"
    script = (f"import os; open({str(out)!r}, 'w').write("
              "f\"{os.getpid()} {os.environ['PCOCC_TASK_RANK']} {os.environ['PCOCC_NTASKS']}\")")
    popen = manager.launch_tasks(job, 1, [sys.executable, "-c", script])
    assert popen.wait(timeout=30) == 0
    assert out.read_text() == f"{popen.pid} 0 1"
    manager.cancel(job)
