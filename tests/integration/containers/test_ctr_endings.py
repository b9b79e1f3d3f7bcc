"""How pod runs end: the status a job script reads, the one line it prints, what is left.

Single-node runs with each OCI runtime, and multi-node runs on the dev Slurm cluster.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.containers.ctrlib import pcocc, pods


def _wait_running(pcocc_bin, count=1, timeout_s=60.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [p for p in pods(pcocc_bin) if p["state"] == "running"]
        if len(running) >= count and all(a["pid"] for p in running for a in p["apps"]):
            return running
        time.sleep(0.1)
    pytest.fail(f"{count} pod(s) did not reach the running state")


def _containers_left(runtime: str) -> list[str]:
    root = Path(os.environ["XDG_RUNTIME_DIR"]) / "pcocc" / runtime
    return sorted(p.name for p in root.iterdir() if p.name.startswith("pcocc-")) \
        if root.is_dir() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_a_signal_stops_the_pod_and_says_so(env, pcocc_bin, image_dir, runtime, sig):
    run = subprocess.Popen(
        [pcocc_bin, "run", "--runtime", runtime, str(image_dir), "--", "sleep", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    [pod] = _wait_running(pcocc_bin)
    run.send_signal(sig)
    _, err = run.communicate(timeout=30)
    name = signal.Signals(sig).name
    assert run.returncode == 128 + sig, err
    assert err.splitlines() == [f"pcocc: error: pod {pod['uuid'][:8]} stopped by {name}"], err
    assert "internal error" not in err and "Traceback" not in err
    assert _containers_left(runtime) == []  # crun/runc list shows nothing of it
    [listed] = [p for p in pods(pcocc_bin) if p["uuid"] == pod["uuid"]]
    assert listed["state"] == "exited"


# -- multi-node runs ----------------------------------------------------------------------


@pytest.mark.slow
def test_multi_node_status_is_the_first_failing_tasks_every_time(slurm, pcocc_bin):
    loop = (
        f"for i in $(seq 20); do {pcocc_bin} run -N 4 busy -- sh -c 'exit 3'; "
        "echo \"status=$?\"; done"
    )
    res = subprocess.run(["salloc", "-N", "4", "-n", "4", "--", "sh", "-c", loop],
                         capture_output=True, text=True, timeout=600, check=False)
    statuses = re.findall(r"^status=(\d+)$", res.stdout, re.M)
    assert statuses == ["3"] * 20, (res.stdout, res.stderr)
    said = re.findall(r"^pcocc: task \d on n\d exited with status 3\b.*$", res.stderr, re.M)
    assert len(said) == 20, res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_the_failing_task_is_named_and_the_stopped_ones_are_not_failures(slurm, pcocc_bin):
    script = 'if [ "$(hostname)" = n3 ]; then exit 5; fi; sleep 20'
    res = subprocess.run(
        ["salloc", "-N", "4", "-n", "4", "--", pcocc_bin, "run", "-N", "4", "busy", "--",
         "sh", "-c", script],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 5, res.stderr
    assert re.search(r"^pcocc: task 2 on n3 exited with status 5; the other tasks were "
                     r"stopped", res.stderr, re.M), res.stderr
    # the tasks srun stopped say nothing of their own (Slurm's lines are Slurm's)
    ours = [ln for ln in res.stderr.splitlines()
            if ln.startswith("pcocc:") and "preparing" not in ln]
    assert len(ours) == 1, res.stderr


@pytest.mark.slow
def test_one_task_in_a_bigger_allocation_prints_no_srun_warning(slurm, pcocc_bin):
    res = subprocess.run(
        ["salloc", "-N", "4", "-n", "4", "--", pcocc_bin, "run", "-N", "1", "busy", "--",
         "hostname"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["n1"]
    assert "srun" not in res.stderr and "Warning" not in res.stderr, res.stderr


@pytest.mark.slow
def test_sigterm_of_a_multi_node_run_stops_every_pod(slurm, pcocc_bin):
    run = subprocess.Popen(
        ["salloc", "-N", "2", "-n", "2", "--", pcocc_bin, "run", "-N", "2", "busy", "--",
         "sleep", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    _wait_running(pcocc_bin, count=2)
    os.killpg(run.pid, signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert "internal error" not in err and "Traceback" not in err, err
    assert [p["state"] for p in pods(pcocc_bin)] == ["exited", "exited"]
    assert _containers_left("crun") == [] and _containers_left("runc") == []
