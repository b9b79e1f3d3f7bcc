"""The launcher starts, watches and stops the switches of private networks (in-memory kv,
fake VMs; the switch is a real child process that only sleeps)."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from tests.fixtures.launcher import JOB, USER, FakeBatch, assert_all_gone, make_launcher

from pcocc.cluster.launcher import ClusterFailed
from pcocc.kv import keys

from tests.fixtures.memkv import MemoryKv

NETS = {"net1": {"type": "private", "cidr": "10.1.0.0/24"}}
TEMPLATES = {"tpl": {"kernel": "/k", "accel": "tcg", "resources": {"networks": ["net1"]}}}


class SwitchKv(MemoryKv):
    """Publishes the switch's address as soon as the launcher looks for it (the fake
    switch cannot reach this in-memory store)."""

    def wait_for(self, prefix, predicate, timeout_s, tick_s=0.5):
        if prefix.endswith("/switch") and self.get(prefix) is None:
            self.put(prefix, "127.0.0.1:9")
        return super().wait_for(prefix, predicate, timeout_s, tick_s)


def make(kv, batch, command):
    return make_launcher(
        kv, batch, command=command, templates=TEMPLATES, networks=NETS,
        switch_argv=[sys.executable, "-c", "import time; time.sleep(60)"],
    )  # fmt: skip


def test_switch_runs_for_the_cluster_and_is_stopped(run_dir):
    kv = SwitchKv()
    batch = FakeBatch(kv)
    launcher = make(kv, batch, "exit 4")
    assert launcher.run() == 4
    (switch,) = launcher._switches
    assert switch.args[-4:] == ["--job", JOB, "--network", "net1"]
    assert switch.returncode is not None  # stopped at teardown
    assert_all_gone(kv, batch, run_dir)


def test_a_dead_switch_ends_the_cluster(run_dir):
    kv = SwitchKv()
    batch = FakeBatch(kv)
    launcher = make(kv, batch, "sleep 30")

    def kill_switch():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if launcher._switches and launcher.lifecycle.state.value == "running":
                launcher._switches[0].kill()
                return
            time.sleep(0.05)

    threading.Thread(target=kill_switch, daemon=True).start()
    with pytest.raises(
        ClusterFailed, match=r"the switch of network 'net1' was killed by signal 9 \(KILL\)"
    ):
        launcher.run()
    assert kv.get(keys.cluster_definition(USER, JOB)) is None
    assert_all_gone(kv, batch, run_dir)
