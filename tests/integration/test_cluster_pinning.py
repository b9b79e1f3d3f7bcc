"""pcocc 0.7's bind-vcpus and emulator-cores on the real test VM: ``taskset -p`` of each
QEMU thread shows the vCPU on its own CPU and every other thread on the emulator core."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml
from tests.fixtures.cluster import Env, assert_nothing_left, pids_matching

pytestmark = pytest.mark.slow


def _affinity(tid: int) -> str:
    out = subprocess.run(["taskset", "-p", str(tid)], capture_output=True, text=True,
                         check=True).stdout
    return out.rsplit(":", 1)[1].strip()  # "pid N's current affinity mask: 2"


def test_vcpus_and_emulator_threads_are_pinned(local_env, pcocc_env):
    env: Env = local_env
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs")
    templates = pcocc_env["system"] / "templates.yaml"
    config = yaml.safe_load(templates.read_text())
    config["templates"]["testvm"].update({"emulator-cores": 1, "bind-vcpus": True})
    templates.write_text(yaml.safe_dump(config))
    script = "pcocc ssh vm0 true && touch up && while [ ! -e done ]; do sleep 0.2; done"
    alloc = env.start("alloc", "-c", "2", "-E", script, "testvm:1")
    try:
        deadline = time.monotonic() + 300
        while not (env.tmp / "up").exists():
            assert alloc.poll() is None, alloc.communicate()
            assert time.monotonic() < deadline, "the VM did not come up"
            time.sleep(0.5)
        res = env.run("monitor-cmd", "vm0", "query-cpus-fast")
        assert res.returncode == 0, res.stderr
        vcpu_threads = [c["thread-id"] for c in json.loads(res.stdout)]
        assert len(vcpu_threads) == 1  # 2 cores, one kept for QEMU's own threads
        (qemu,) = pids_matching(env, "qemu-system")
        threads = sorted(int(t) for t in os.listdir(f"/proc/{qemu}/task"))
        masks = {tid: _affinity(tid) for tid in threads}
        first, second = (format(1 << c, "x") for c in cpus[:2])
        assert masks[vcpu_threads[0]] == second
        assert {m for t, m in masks.items() if t not in vcpu_threads} == {first}
    finally:
        (env.tmp / "done").touch()
        out, err = alloc.communicate(timeout=120)
    assert alloc.returncode == 0, err
    assert_nothing_left(env)
