"""bind-vcpus and emulator-cores: which QEMU thread may run on which CPU (no process)."""

import pytest

from pcocc.cluster.definition import build_definition
from pcocc.errors import ConfigError, PcoccError
from pcocc.vm.pinning import Pinning, apply, plan, vcpus


def test_settings_to_pinning():
    assert Pinning.from_settings({}) is None
    assert Pinning.from_settings({"bind-vcpus": False, "emulator-cores": 0}) is None
    assert Pinning.from_settings({"emulator-cores": 2}) == Pinning(False, 2)
    assert Pinning.from_settings({"bind-vcpus": True}) == Pinning(True, 0)


def test_emulator_cores_are_deducted_from_the_vcpus():
    assert vcpus("t", 4, None) == 4
    assert vcpus("t", 4, Pinning(True, 1)) == 3
    with pytest.raises(ConfigError, match="template 't': emulator-cores 2 leaves no core"):
        vcpus("t", 2, Pinning(False, 2))


def test_definition_refuses_too_many_emulator_cores_before_allocating():
    tpl = {"t": {"kernel": "/k", "emulator-cores": 2, "resources": {"cores": 2}}}
    with pytest.raises(ConfigError, match="emulator-cores 2 leaves no core"):
        build_definition("t:1", tpl)
    build_definition("t:1", tpl, cores=3)


def test_bound_vcpus_and_emulator_threads():
    # QEMU may use CPUs 4-7; threads 100 (main), 101 (I/O), 102 and 103 (vCPUs 0 and 1)
    wanted = plan([7, 4, 5, 6], [102, 103], [100, 101, 102, 103], Pinning(True, 1))
    assert wanted == {100: {4}, 101: {4}, 102: {5}, 103: {6}}


def test_floating_vcpus_off_the_emulator_cores():
    wanted = plan([0, 1, 2, 3], [12, 13], [10, 12, 13], Pinning(False, 2))
    assert wanted == {10: {0, 1}, 12: {2, 3}, 13: {2, 3}}


def test_bound_vcpus_without_emulator_cores_leave_other_threads_alone():
    assert plan([0, 1], [5, 6, 7], [4, 5, 6, 7], Pinning(True, 0)) == {5: {0}, 6: {1}, 7: {0}}


def test_too_few_cpus():
    with pytest.raises(PcoccError, match="leaves no CPU for the vCPUs: QEMU may use CPUs 3"):
        plan([3], [5], [4, 5], Pinning(False, 1))


def test_apply_reads_qmp_and_sets_each_thread(monkeypatch):
    class FakeQmp:
        def execute(self, command):
            assert command == "query-cpus-fast"
            return [{"cpu-index": 1, "thread-id": 22}, {"cpu-index": 0, "thread-id": 21}]

    set_calls = {}
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr("os.listdir", lambda path: ["20", "21", "22"])
    monkeypatch.setattr("os.sched_setaffinity", lambda tid, cpus: set_calls.update({tid: cpus}))
    apply(20, FakeQmp(), Pinning(True, 1))
    assert set_calls == {20: {0}, 21: {1}, 22: {2}}
