"""etcd outages during a running cluster (local mode: the job's private etcd is paused,
or killed and started again).

SIGSTOP/SIGCONT of the etcd process is a faithful "etcd stops answering for N seconds": the
TCP connections stay open, every call hangs. An outage shorter than the lease TTL must be
survived; a longer one must end the cluster with one message naming etcd and its endpoint,
and leave nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.fixtures.cluster import Env, assert_nothing_left, our_processes

pytestmark = pytest.mark.slow

#: Lease TTL of the long-outage test: short, so that the outage that ends the cluster is too.
SHORT_TTL_S = 4
#: The cluster's command: runs until the test creates the file ``done`` in its directory.
UNTIL_DONE = "while [ ! -e done ]; do sleep 0.2; done"


def _local_env(tmp_path, pcocc_env, pcocc_bin, artifacts, extra: dict[str, str]) -> Env:
    return Env(
        tmp_path,
        pcocc_env,
        pcocc_bin,
        artifacts,
        {"type": "local", "etcd": {"mode": "private"}},
        extra,
    )


def _start_running(env: Env) -> tuple[subprocess.Popen, str]:
    proc = env.start("alloc", "-E", UNTIL_DONE, "testvm:1")
    clusters = env.wait_ps(
        lambda cs: len(cs) == 1 and cs[0]["running"] == 1, "the VM to run", proc=proc
    )
    return proc, clusters[0]["id"]


def _etcd_pid(env: Env, job_id: str) -> int:
    pid = int((env.run_dir / job_id / "etcd" / "etcd.pid").read_text().split()[0])
    assert b"etcd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return pid


def _endpoint(env: Env, job_id: str) -> str:
    return (env.run_dir / job_id / "etcd-endpoints").read_text().strip()


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def test_short_etcd_outage_is_survived(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts):
    # default TTL (10 s): a 4 s pause is shorter than what is left of any refreshed lease
    env = _local_env(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts, {})
    proc, job_id = _start_running(env)
    etcd = _etcd_pid(env, job_id)
    os.kill(etcd, signal.SIGSTOP)
    try:
        time.sleep(4)
    finally:
        _resume(etcd)
    # had a lease expired, the keys would vanish now and the launcher would end at once
    time.sleep(3)
    assert proc.poll() is None, proc.communicate()[1]
    clusters = env.ps()
    assert [(c["id"], c["running"]) for c in clusters] == [(job_id, 1)]
    res = env.run("ssh", "vm0", "hostname", timeout_s=120)
    assert (res.returncode, res.stdout.strip()) == (0, "vm0"), res.stderr
    (env.tmp / "done").touch()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not [line for line in err.splitlines() if line.startswith("pcocc: error:")], err
    assert "Traceback" not in err
    assert_nothing_left(env)


def test_etcd_restart_is_survived(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts):
    # etcd killed and started again on the same data and ports (what a service restart
    # does): the launcher's watch breaks and must be opened again
    env = _local_env(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts, {})
    proc, job_id = _start_running(env)
    etcd = _etcd_pid(env, job_id)
    endpoint = _endpoint(env, job_id)
    argv = Path(f"/proc/{etcd}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    cwd = os.readlink(f"/proc/{etcd}/cwd")  # its unix sockets are relative to it
    os.kill(etcd, signal.SIGKILL)
    time.sleep(2)
    for stale in Path(cwd).glob("*.sock:0"):  # a killed etcd leaves them; etcd will not bind
        stale.unlink()
    again = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()[1]
        res = env.run("ssh", "vm0", "hostname", timeout_s=120)
        assert (res.returncode, res.stdout.strip()) == (0, "vm0"), res.stderr
        (env.tmp / "done").touch()
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        # the launcher stops the etcd it started, not this one
        again.kill()
        again.wait()
    assert "Traceback" not in err
    # the launcher says once that etcd went away and once that it is back, not once per
    # retry; the node process of vm0 (same stderr) at most as much, naming itself
    lines = err.splitlines()
    lost = [line for line in lines if line.startswith("pcocc: WARNING: lost etcd")]
    back = [line for line in lines if line.startswith("pcocc: WARNING: reconnected to etcd")]
    assert len(lost) == 1 and lost[0].startswith(
        f"pcocc: WARNING: lost etcd at {endpoint}; retrying"
    ), err
    assert back == [f"pcocc: WARNING: reconnected to etcd at {endpoint}"], err
    node_lost = [line for line in lines if line.startswith("pcocc: WARNING: vm0: lost etcd")]
    node_back = [line for line in lines if "vm0: reconnected to etcd" in line]
    assert len(node_lost) <= 1 and len(node_back) == len(node_lost), err
    assert not [line for line in lines if "lease" in line and "retry" in line], err
    assert_nothing_left(env)


def test_long_etcd_outage_ends_the_cluster_cleanly(
    tmp_path,
    pcocc_env,
    pcocc_bin,
    testvm_artifacts,
):
    env = _local_env(
        tmp_path, pcocc_env, pcocc_bin, testvm_artifacts, {"PCOCC_LEASE_TTL": str(SHORT_TTL_S)}
    )
    proc, job_id = _start_running(env)
    etcd = _etcd_pid(env, job_id)
    endpoint = _endpoint(env, job_id)
    assert any("qemu-system" in p for p in our_processes(env))
    os.kill(etcd, signal.SIGSTOP)
    try:
        # etcd stays stopped: the launcher must notice on its own, not when etcd is back
        _out, err = proc.communicate(timeout=60)
    finally:
        _resume(etcd)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("pcocc: error:")]
    assert errors, err
    assert "lost etcd" in errors[-1] and endpoint in errors[-1], err
    assert "Traceback" not in err
    assert_nothing_left(env)


def test_long_etcd_outage_on_slurm(slurm_test_env, etcd_server):
    # the shared etcd of a Slurm site; node processes run under srun on the dev nodes
    env = slurm_test_env
    env.env["PCOCC_LEASE_TTL"] = str(SHORT_TTL_S)
    proc, job_id = _start_running(env)
    os.kill(etcd_server.pid, signal.SIGSTOP)
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        _resume(etcd_server.pid)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("pcocc: error:")]
    assert errors and "lost etcd" in errors[-1] and etcd_server.endpoint in errors[-1], err
    assert "Traceback" not in err
    # back from its pause, etcd expires the leases of the cluster: its keys go with them
    # (only this cluster's: other tests of the session share this etcd)
    import getpass

    from pcocc.kv.keys import cluster_prefix
    from pcocc.kv.client import KvClient

    prefix = cluster_prefix(getpass.getuser(), job_id)
    with KvClient(env.endpoints) as kv:
        deadline = time.monotonic() + SHORT_TTL_S + 10
        while kv.get_prefix(prefix) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert kv.get_prefix(prefix) == {}
    assert_nothing_left(env)


def test_bad_lease_ttl_is_a_usage_error(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts):
    env = _local_env(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts, {"PCOCC_LEASE_TTL": "soon"})
    res = env.run("alloc", "-E", "true", "testvm:1", timeout_s=120)
    assert res.returncode == 2, res.stderr
    assert "PCOCC_LEASE_TTL='soon'" in res.stderr and "Traceback" not in res.stderr
    assert_nothing_left(env)
