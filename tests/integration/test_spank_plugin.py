"""The pcocc_setup SPANK plugin, built from slurm-plugin/ and loaded by the dev cluster's
slurmd (each node in its own network namespace): a job with --pcocc-setup gets its bridge on
its node for its lifetime, whatever way it ends; a job without it gets nothing."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import devcluster
import pytest

from pcocc import proc
from pcocc.batch.base import JobSpec
from pcocc.batch.slurm import SlurmManager
from pcocc.errors import ConfigError
from pcocc.net import jobsetup

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs the plugin as root: needs root"),
    pytest.mark.skipif(bool(devcluster.missing_binaries(with_etcd=False)),
                       reason="Slurm/munge programs not installed"),
    pytest.mark.skipif(not Path("/usr/include/slurm/spank.h").exists() or not shutil.which("make"),
                       reason="libslurm-dev/make not installed (run helpers/setup)"),
]


@pytest.fixture(scope="module")
def plugin_cluster():
    """A netns dev cluster whose plugstack.conf loads the freshly built plugin; ``pcocc=``
    points at a wrapper that runs this checkout's pcocc (the plugin clears the environment)."""
    directory = Path(tempfile.mkdtemp(prefix="pcocc-spank-"))
    os.chmod(directory, 0o755)
    build = directory / "build"
    shutil.copytree(REPO_ROOT / "slurm-plugin", build, ignore=shutil.ignore_patterns("*.so"))
    proc.run(["make", "-C", build], timeout_s=120)
    proc.run(["make", "-C", build, "install", f"DESTDIR={directory / 'root'}",
              "PLUGINDIR=/lib"], timeout_s=60)
    wrapper = directory / "pcocc"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec "
                       f"{Path(sys.executable).parent / 'pcocc'} \"$@\"\n")
    wrapper.chmod(0o755)
    line = f"required {directory / 'root/lib/pcocc_setup.so'} pcocc={wrapper} timeout=60"
    try:
        with devcluster.DevCluster(directory / "cluster", nodes=2, with_etcd=False,
                                   node_netns=True, plugstack=[line]) as cluster:
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _env(cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(cluster.env())
    return env


def _submit(cluster, *opts: str, script: str = "sleep 300") -> str:
    res = proc.run(["sbatch", "--parsable", "-N1", "-w", "n1", "-o", "/dev/null", *opts,
                    "--wrap", script], env=_env(cluster), timeout_s=30)
    return res.stdout.strip().split(";")[0]


def _bridges(cluster, node: str) -> set[str]:
    out = proc.run(["ip", "-n", cluster.netns.netns_name(node), "-o", "link", "show",
                    "type", "bridge"], timeout_s=10).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def _wait(cond, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _gone(cluster, job: str) -> bool:
    out = proc.run(["squeue", "-h", "-j", job, "-o", "%T"], env=_env(cluster), check=False,
                   timeout_s=10).stdout
    return not out.strip()


def _launched(cluster, job: str) -> bool:
    """The batch script started on n1 (after the prolog: RUNNING in squeue comes earlier)."""
    return f"Launching batch job {job} " in _log(cluster)


def _job_processes(job: str) -> list[int]:
    """Processes whose environment says they belong to ``job``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and f"SLURM_JOB_ID={job}\0".encode() in Path(
                    f"/proc/{entry}/environ").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


def _log(cluster) -> str:
    return (cluster.directory / "log" / "slurmd-n1.log").read_text()


def test_sbatch_knows_the_option(plugin_cluster):
    out = proc.run(["sbatch", "--help"], env=_env(plugin_cluster), timeout_s=10).stdout
    assert "--pcocc-setup" in out


def test_bridge_lives_as_long_as_the_job_and_scancel_removes_it(plugin_cluster):
    job = _submit(plugin_cluster, "--pcocc-setup")
    bridge = jobsetup.bridge_name(int(job))
    _wait(lambda: _launched(plugin_cluster, job), f"job {job} to start")
    assert bridge in _bridges(plugin_cluster, "n1")
    assert bridge not in _bridges(plugin_cluster, "n2")  # only where the job runs
    state = jobsetup.read_state(int(job))
    assert state is not None and state.resources == [{"kind": "bridge", "name": bridge}]
    proc.run(["scancel", job], env=_env(plugin_cluster), timeout_s=10)
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to leave the queue")
    assert bridge not in _bridges(plugin_cluster, "n1")
    assert not jobsetup.job_dir(int(job)).exists()
    # cleanup is idempotent: a second run (e.g. an epilog retried) succeeds and does nothing
    res = proc.run([plugin_cluster.directory.parent / "pcocc", "internal", "setup", "cleanup",
                    "--job", job, "--user", "root"], check=False, timeout_s=60)
    assert res.returncode == 0, res.stderr


def test_normal_end_removes_the_bridge(plugin_cluster):
    job = _submit(plugin_cluster, "--pcocc-setup",
                  script="ip -o link show type bridge; sleep 1")
    bridge = jobsetup.bridge_name(int(job))
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to end")
    log = _log(plugin_cluster)
    assert f"setup init done for job {job}" in log
    assert f"setup cleanup done for job {job}" in log
    assert bridge not in _bridges(plugin_cluster, "n1")
    assert not jobsetup.job_dir(int(job)).exists()


def test_killed_job_processes_still_cleaned_up(plugin_cluster):
    job = _submit(plugin_cluster, "--pcocc-setup")
    bridge = jobsetup.bridge_name(int(job))
    _wait(lambda: _launched(plugin_cluster, job), f"job {job} to start")
    assert bridge in _bridges(plugin_cluster, "n1")
    _wait(lambda: len(_job_processes(job)) >= 2, f"the script and sleep of job {job}")
    for pid in _job_processes(job):  # the batch script and its sleep, not slurmstepd
        os.kill(pid, 9)
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to end after kill -9")
    assert bridge not in _bridges(plugin_cluster, "n1")
    assert not jobsetup.job_dir(int(job)).exists()


def test_job_without_the_option_gets_nothing(plugin_cluster):
    before = _bridges(plugin_cluster, "n1")
    job = _submit(plugin_cluster)
    _wait(lambda: _launched(plugin_cluster, job), f"job {job} to start")
    assert _bridges(plugin_cluster, "n1") == before
    assert not jobsetup.job_dir(int(job)).exists()
    log = _log(plugin_cluster)
    assert f"for job {job}" not in log
    proc.run(["scancel", job], env=_env(plugin_cluster), timeout_s=10)
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to leave the queue")


def test_pcocc_submit_passes_the_option_when_the_job_needs_setup(plugin_cluster):
    spec = JobSpec(ntasks=1, node_setup=True, env=plugin_cluster.env(),
                   options=["-w", "n1", "-o", "/dev/null"])
    job = SlurmManager().submit(spec, "sleep 300")
    bridge = jobsetup.bridge_name(int(job))
    _wait(lambda: _launched(plugin_cluster, job), f"job {job} to start")
    assert bridge in _bridges(plugin_cluster, "n1")
    proc.run(["scancel", job], env=_env(plugin_cluster), timeout_s=10)
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to leave the queue")
    assert bridge not in _bridges(plugin_cluster, "n1")


def test_without_the_plugin_pcocc_refuses_before_allocating(plugin_cluster, tmp_path):
    conf = plugin_cluster.slurm_conf.read_text()
    (tmp_path / "plugstack.conf").write_text("")
    conf = "\n".join(line for line in conf.splitlines()
                     if not line.startswith("PlugStackConfig="))
    conf += f"\nPlugStackConfig={tmp_path / 'plugstack.conf'}\n"
    (tmp_path / "slurm.conf").write_text(conf)
    spec = JobSpec(ntasks=1, node_setup=True, env={"SLURM_CONF": str(tmp_path / "slurm.conf")})
    before = proc.run(["squeue", "-h", "-o", "%i"], env=_env(plugin_cluster)).stdout
    with pytest.raises(ConfigError, match="does not load it"):
        SlurmManager().submit(spec, "sleep 300")
    with pytest.raises(ConfigError, match="does not load it"):
        SlurmManager().allocate(spec, ["true"])
    assert proc.run(["squeue", "-h", "-o", "%i"], env=_env(plugin_cluster)).stdout == before
