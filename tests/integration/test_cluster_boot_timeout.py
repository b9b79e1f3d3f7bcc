"""A VM that cannot boot ends the cluster with a message naming the VM and the accelerator."""

from __future__ import annotations

import pytest
from tests.fixtures.cluster import Env, assert_nothing_left

pytestmark = pytest.mark.slow


def test_boot_timeout(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts):
    env = Env(
        tmp_path,
        pcocc_env,
        pcocc_bin,
        testvm_artifacts,
        {"type": "local", "etcd": {"mode": "private"}},
        {"PCOCC_BOOT_TIMEOUT": "1"},
    )
    res = env.run("alloc", "-E", "true", "testvm:1", timeout_s=120)
    assert res.returncode == 1
    assert "vm0" in res.stderr and "tcg" in res.stderr
    assert "Traceback" not in res.stderr
    assert_nothing_left(env)
