"""pcocc ckpt and alloc/batch -r with real QEMU on the Slurm dev cluster: a 2-VM cluster
with a counter running in each VM is checkpointed, restored on other nodes, and the counters
go on (same process, value not lower, still counting); bad input is refused with nothing
half written."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.cluster import BOOT_TIMEOUT_S, _endpoints, assert_nothing_left

pytestmark = pytest.mark.slow

COUNTER = (
    "i=0; while :; do i=$((i+1)); echo \"$$ $i\" > /tmp/counter.new;"
    " mv /tmp/counter.new /tmp/counter; sleep 0.2; done"
)


@contextlib.contextmanager
def _agent(env, job_id: str, rank: int):
    """The guest agent of VM ``rank`` (its socket in the VM's run dir; the dev cluster's
    nodes all share this host)."""
    from pcocc.vm.agent import GuestAgent

    run_dir = env.run_dir / job_id / f"vm{rank}" / "qemu"
    fd = os.open(run_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        yield GuestAgent(f"/proc/self/fd/{fd}/qga.sock")
    finally:
        os.close(fd)


@contextlib.contextmanager
def _started(env, *args):
    """``pcocc ARGS`` in the background, interrupted (as Ctrl-C would) if the test fails
    while it runs."""
    proc = env.start(*args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)


def _start_counter(env, job_id: str, rank: int) -> None:
    with _agent(env, job_id, rank) as agent:
        agent.execute("guest-exec", {"path": "/bin/sh", "arg": [
            "-c", f"sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 &"]})


def _counter(env, job_id: str, rank: int) -> tuple[int, int]:
    """(pid, value) of the counter in VM ``rank``."""
    deadline = time.monotonic() + 60
    while True:
        with _agent(env, job_id, rank) as agent:
            status, out, err = agent.exec("/bin/cat", ["/tmp/counter"], timeout_s=30)
        if status == 0 and len(out.split()) == 2:
            pid, value = out.split()
            return int(pid), int(value)
        if time.monotonic() > deadline:
            pytest.fail(f"no counter in vm{rank}: {status} {out!r} {err!r}")
        time.sleep(0.5)


def _running(env, job_id: str, n: int) -> dict:
    out = env.tmp / f"slurm-{job_id}.out"

    def ready(clusters) -> bool:
        if out.exists() and "pcocc: error" in out.read_text():
            pytest.fail(f"job {job_id} failed: {out.read_text()[-2000:]}")
        return any(c["id"] == job_id and c["running"] == n for c in clusters)

    try:
        clusters = env.wait_ps(ready, f"the {n} VMs of job {job_id} to run",
                               timeout_s=BOOT_TIMEOUT_S)
    except pytest.fail.Exception:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %R"], env=env.env,
                               capture_output=True, text=True).stdout.strip()
        text = out.read_text()[-2000:] if out.exists() else "(no output yet)"
        pytest.fail(f"job {job_id} ({state or 'gone'}) did not run its VMs: {text}")
    return next(c for c in clusters if c["id"] == job_id)


def _entries(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if "ck" in n)


def test_ckpt_and_restore_on_other_nodes(slurm_test_env):
    env = slurm_test_env
    jobs: list[str] = []
    try:
        _ckpt_and_restore(env, jobs)
    finally:  # a failed test leaves no job running
        for job in jobs:
            subprocess.run(["scancel", job], env=env.env, check=False)


def _ckpt_and_restore(env, jobs: list[str]) -> None:
    ck = env.tmp / "ck"
    res = env.run("batch", "testvm:2", "--", "-w", "n1,n2")
    assert res.returncode == 0, res.stderr
    first = res.stdout.strip()
    jobs.append(first)
    cluster = _running(env, first, 2)
    assert set(cluster["nodes"]) <= {"n1", "n2"}
    for rank in (0, 1):
        _start_counter(env, first, rank)
    before = {rank: _counter(env, first, rank) for rank in (0, 1)}

    res = env.run("ckpt", "-j", first, str(ck))
    assert res.returncode == 0, res.stderr
    assert "checkpoint written to" in res.stderr
    env.wait_job_gone(first)
    assert_nothing_left(env, _endpoints(env))
    assert _entries(env.tmp) == ["ck"]
    assert sorted(os.listdir(ck)) == ["manifest.json", "vm0", "vm1"]
    assert "stopped after its checkpoint" in (env.tmp / f"slurm-{first}.out").read_text()

    # bad input: nothing changes
    res = env.run("ckpt", "-j", first, str(ck))
    assert res.returncode == 2 and "already exists" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    res = env.run("alloc", "-r", str(env.tmp / "nosuch"), "-E", "true", "testvm:2")
    assert res.returncode in (1, 2) and "no such directory" in res.stderr, res.stderr
    res = env.run("alloc", "-r", str(ck), "-E", "true", "testvm:1")
    assert res.returncode == 2, res.stderr
    assert "is of cluster 'testvm:2', not 'testvm:1'" in res.stderr
    res = env.run("alloc", "-r", str(ck), "-c", "2", "-E", "true", "testvm:2")
    assert res.returncode == 2 and "its cores differs" in res.stderr, res.stderr
    assert _entries(env.tmp) == ["ck"]

    res = env.run("batch", "-r", str(ck), "testvm:2", "--", "--exclude", "n1,n2")
    assert res.returncode == 0, res.stderr
    second = res.stdout.strip()
    jobs.append(second)
    cluster = _running(env, second, 2)
    assert not set(cluster["nodes"]) & {"n1", "n2"}, cluster
    for rank in (0, 1):
        pid, value = _counter(env, second, rank)
        assert pid == before[rank][0]  # the same process, not a new one
        assert value >= before[rank][1]
        time.sleep(1.5)
        later = _counter(env, second, rank)
        assert later[0] == pid and later[1] > value, (rank, value, later)
    # the guest kept its ssh host key: pcocc ssh checks it
    res = env.run("ssh", "-j", second, "vm1", "cat /tmp/counter", timeout_s=120)
    assert res.returncode == 0, res.stderr

    # -F replaces the checkpoint in one step; --no-stop lets the VMs run on
    old_state = (ck / "vm0" / "state").stat().st_ino
    res = env.run("ckpt", "-F", "--no-stop", "-j", second, str(ck))
    assert res.returncode == 0, res.stderr
    assert (ck / "vm0" / "state").stat().st_ino != old_state
    assert _entries(env.tmp) == ["ck"]
    value = _counter(env, second, 0)[1]
    time.sleep(1.5)
    assert _counter(env, second, 0)[1] > value
    subprocess.run(["scancel", second], env=env.env, check=True)
    env.wait_job_gone(second)
    assert_nothing_left(env, _endpoints(env))


def test_ckpt_saves_the_disk_layer_and_refuses_a_changed_image(
    local_env, pcocc_env, testvm_artifacts
):
    """A VM booted on an image: its overlay goes into the checkpoint, comes back with the
    restored VM (a file written before the checkpoint is there), and stays as it was in
    the checkpoint; once the image has a new revision, the restore is refused."""
    import yaml

    env = local_env
    (pcocc_env["user"] / "repos.yaml").write_text(
        yaml.safe_dump({"repos": [{"name": "user", "path": str(env.tmp / "repo")}]})
    )
    res = env.run("image", "import", str(testvm_artifacts.disk), "user:disk")
    assert res.returncode == 0, res.stderr
    path = pcocc_env["system"] / "templates.yaml"
    config = yaml.safe_load(path.read_text())
    config["templates"]["testvm"]["image"] = "user:disk"
    path.write_text(yaml.safe_dump(config))
    ck = env.tmp / "ck"

    with _started(env, "alloc", "-E", "sleep 600", "testvm:1") as alloc:
        job = env.wait_ps(lambda cs: len(cs) == 1 and cs[0]["running"] == 1, "the VM to run",
                          proc=alloc)[0]["id"]
        with _agent(env, job, 0) as agent:
            status, out, err = agent.exec("/bin/sh", ["-c", "grep -q ' /disk ' /proc/mounts"
                                          " && echo before-ckpt > /disk/mark && sync"])
        assert status == 0, (out, err)
        res = env.run("ckpt", str(ck))
        assert res.returncode == 0, res.stderr
        assert alloc.wait(timeout=120) == 0, alloc.communicate()
    assert_nothing_left(env)
    assert sorted(os.listdir(ck / "vm0")) == ["disk0.qcow2", "ssh_host_ed25519_key", "state"]
    saved_disk = (ck / "vm0" / "disk0.qcow2").read_bytes()

    with _started(env, "alloc", "-r", str(ck), "-E", "sleep 600", "testvm:1") as alloc:
        job = env.wait_ps(lambda cs: len(cs) == 1 and cs[0]["running"] == 1, "the VM to run",
                          proc=alloc)[0]["id"]
        with _agent(env, job, 0) as agent:
            status, out, err = agent.exec("/bin/sh", ["-c", "cat /disk/mark; echo after >"
                                          " /disk/mark2; sync"])
        assert (status, out) == (0, "before-ckpt\n"), err
    assert_nothing_left(env)
    assert (ck / "vm0" / "disk0.qcow2").read_bytes() == saved_disk  # restored from a copy

    # a damaged copy: refused by the node before QEMU reads it, nothing left running
    damaged = env.tmp / "damaged"
    subprocess.run(["cp", "-a", str(ck), str(damaged)], check=True)
    with open(damaged / "vm0" / "state", "r+b") as f:
        f.truncate(4096)
    res = env.run("alloc", "-r", str(damaged), "-E", "true", "testvm:1")
    assert res.returncode == 1, res.stderr
    assert "does not have the content the manifest states" in res.stderr
    assert "Traceback" not in res.stderr
    assert_nothing_left(env)
    (damaged / "vm0" / "state").unlink()
    res = env.run("alloc", "-r", str(damaged), "-E", "true", "testvm:1")
    assert res.returncode == 1 and "vm0/state is missing" in res.stderr, res.stderr

    res = env.run("image", "resize", "user:disk", "1G")  # a new revision of the image
    assert res.returncode == 0, res.stderr
    res = env.run("alloc", "-r", str(ck), "-E", "true", "testvm:1")
    assert res.returncode == 2, res.stderr
    assert "image 'user:disk' of vm0 changed since the checkpoint" in res.stderr
    assert "Traceback" not in res.stderr
