"""The development cluster helper starts real daemons, runs jobs and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import devcluster
import pytest

from pcocc import proc
from pcocc.errors import ServiceUnavailable
from pcocc import daemon

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    bool(devcluster.missing_binaries()),
    reason=f"dev cluster programs not installed: {devcluster.missing_binaries()}",
)


def _env(cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(cluster.env())
    return env


def test_srun_runs_one_task_per_node(slurm_cluster):
    res = proc.run(
        ["srun", "-N4", "-l", "printenv", "SLURMD_NODENAME"], env=_env(slurm_cluster), timeout_s=60
    )
    by_rank = dict(line.split(": ", 1) for line in res.stdout.splitlines())
    assert sorted(by_rank.values()) == ["n1", "n2", "n3", "n4"]


def test_sbatch_job_completes(slurm_cluster, tmp_path):
    out = tmp_path / "out.txt"
    env = _env(slurm_cluster)
    res = proc.run(
        ["sbatch", "--parsable", "-N2", f"--output={out}", "--wrap", "srun -l hostname"],
        env=env,
        cwd=tmp_path,
        timeout_s=30,
    )
    job_id = res.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        state = proc.run(["scontrol", "-o", "show", "job", job_id], env=env).stdout
        if "JobState=COMPLETED" in state or "JobState=FAILED" in state:
            break
        time.sleep(0.5)
    assert "JobState=COMPLETED" in state, state
    assert sorted(line.split(":")[0] for line in out.read_text().splitlines()) == ["0", "1"]


def test_cli_start_env_stop_leaves_nothing():
    directory = Path(tempfile.mkdtemp(prefix="pcocc-dc-cli-"))
    script = [sys.executable, str(REPO_ROOT / "helpers" / "devcluster.py")]
    try:
        subprocess.run(
            [*script, "start", str(directory)], check=True, timeout=120, stdout=subprocess.DEVNULL
        )
        env_text = subprocess.run(
            [*script, "env", str(directory)], check=True, capture_output=True, text=True
        ).stdout
        assert f"SLURM_CONF={directory}/slurm.conf" in env_text
        assert "PCOCC_ETCD_ENDPOINTS=http://127.0.0.1:" in env_text
        cluster = devcluster.DevCluster.attach(directory)
        again = subprocess.run(
            [*script, "start", str(directory)], capture_output=True, text=True, check=False
        )
        assert again.returncode == 1 and "already runs" in again.stderr
        env = _env(cluster)
        # a running job at stop time must not survive either
        proc.run(["sbatch", "-N1", "--wrap", "sleep 300"], env=env, cwd=directory)
        assert proc.run(["sinfo", "-h", "-o", "%D"], env=env).stdout.split() == ["4"]
        assert daemon.processes_mentioning(str(directory))
        subprocess.run([*script, "stop", str(directory)], check=True, timeout=120)
        assert daemon.processes_mentioning(str(directory)) == []
        gone = subprocess.run(
            [*script, "env", str(directory)], capture_output=True, text=True, check=False
        )
        assert gone.returncode == 1 and "no dev cluster runs" in gone.stderr
        pgrep = subprocess.run(
            ["pgrep", "-f", str(directory)], capture_output=True, text=True, check=False
        )
        assert pgrep.stdout == ""
    finally:
        subprocess.run([*script, "stop", str(directory)], timeout=120, check=False)
        shutil.rmtree(directory, ignore_errors=True)


def test_start_failure_names_the_log(tmp_path_factory):
    # a directory below pytest's 0700 basetemp is refused with a clear reason
    directory = tmp_path_factory.mktemp("refused")
    with pytest.raises(Exception, match="searchable by all"):
        devcluster.DevCluster(directory, with_etcd=False).start()


def test_daemon_that_fails_to_start_is_named_with_its_log():
    directory = Path(tempfile.mkdtemp(prefix="pcocc-dc-bad-"))
    cluster = devcluster.DevCluster(
        directory, with_etcd=False, extra_conf=["SelectType=select/no_such_plugin"]
    )
    try:
        with pytest.raises(ServiceUnavailable, match="slurmctld exited") as info:
            cluster.start()
        assert str(directory / "log" / "slurmctld.log") in info.value.hint
        assert daemon.processes_mentioning(str(directory)) == []
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
