"""Launcher and node logic with an in-memory kv, node processes in threads and fake VMs."""

import json
import os
import signal
import threading
import time

import pytest

from pcocc.cluster.definition import build_definition
from pcocc.cluster.launcher import ClusterFailed, ClusterStopped
from pcocc.cluster.node import NodeProcess, NodeSettings
from pcocc.cluster.noderun import DEFINITION_VAR, encode_definition
from pcocc.cluster.record import ClusterRecord
from pcocc.signals import Interrupted
from pcocc.cluster.vmstate import VmRecord
from pcocc.errors import PcoccError
from pcocc.kv import keys

from tests.fixtures.memkv import MemoryKv

from tests.fixtures.launcher import (
    JOB,
    TEMPLATES,
    USER,
    FakeBatch,
    FakeVm,
    assert_all_gone,
    make_launcher,
)


def test_command_runs_with_job_id_once_all_vms_run(run_dir, tmp_path):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    out = tmp_path / "out"
    snap = {}

    def spy(msg):
        if "is running" in msg:
            snap.update(kv.get_prefix("/"))

    launcher = make_launcher(kv, batch, n=3, command=f'echo "$PCOCC_JOB_ID" > {out}; exit 3')
    launcher.report = spy
    assert launcher.run() == 3
    assert out.read_text().strip() == JOB
    assert batch.launched[1] == 3 and batch.launched[3]["PCOCC_JOB_ID"] == JOB
    # while running: definition + 3 leased states + 3 rnat entries
    states = [VmRecord.from_json(v) for k, v in snap.items() if k.endswith("/state")]
    assert sorted((s.rank, s.status, s.host, s.ssh_port) for s in states) == [
        (0, "running", "n0", 22000),
        (1, "running", "n1", 22001),
        (2, "running", "n2", 22002),
    ]
    assert all(s.host_key.startswith("ssh-ed25519 ") for s in states)
    assert snap[keys.rnat(USER, JOB, 1, 22)] == "n1:22001"
    rec = ClusterRecord.from_json(snap[keys.cluster_definition(USER, JOB)])
    assert rec.state.value == "running" and rec.definition.size == 3
    assert launcher.lifecycle.state.value == "done"
    assert_all_gone(kv, batch, run_dir)


def test_forwards_are_published_on_the_node_address(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(
        kv, {0: {"address": "10.9.9.1", "forwards": {22: 22000, 8080: 5080}}}
    )
    snap = {}

    def spy(msg):
        if "is running" in msg:
            snap.update(kv.get_prefix("/"))

    launcher = make_launcher(kv, batch, n=2)
    launcher.report = spy
    assert launcher.run() == 0
    rnat = {k: v for k, v in snap.items() if "/rnat/" in k}
    assert rnat == {
        keys.rnat(USER, JOB, 0, 22): "10.9.9.1:22000",
        keys.rnat(USER, JOB, 0, 8080): "10.9.9.1:5080",
        keys.rnat(USER, JOB, 1, 22): "n1:22001",  # no address: the host name, as before
    }
    states = {VmRecord.from_json(v).rank: VmRecord.from_json(v) for k, v in snap.items()
              if k.endswith("/state")}
    assert (states[0].address, states[0].host) == ("10.9.9.1", "n0")
    assert states[1].address is None
    assert_all_gone(kv, batch, run_dir)


def test_vm_failure_during_boot_is_reported_and_cleaned(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv, {1: {"launch_fails": True}})
    launcher = make_launcher(kv, batch)
    with pytest.raises(ClusterFailed) as exc:
        launcher.run()
    assert "vm1 failed on n1: qemu-system-x86_64 failed: cannot open disk" in str(exc.value)
    assert exc.value.hint is None  # no console output yet
    assert launcher.lifecycle.state.value == "failed"
    assert_all_gone(kv, batch, run_dir)


def test_boot_timeout_names_vm_and_console_log(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv, {0: {"never_ready": True}})
    launcher = make_launcher(kv, batch, timeout_s=0.5)
    with pytest.raises(ClusterFailed) as exc:
        launcher.run()
    assert "vm0 not running after 0.5 s (accelerator: tcg)" in str(exc.value)
    assert "console.log" in exc.value.hint and "n0:" in exc.value.hint
    assert_all_gone(kv, batch, run_dir)


def test_node_process_that_never_reports(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv, {1: {"node_dies": True}})
    # rank 1's thread ends at once; rank 0 keeps running, so the group has not exited yet:
    # the boot times out and names vm1
    launcher = make_launcher(kv, batch, timeout_s=0.5)
    with pytest.raises(ClusterFailed, match="vm1 not running"):
        launcher.run()
    assert_all_gone(kv, batch, run_dir)


def test_qemu_crash_while_command_runs_stops_command(run_dir, tmp_path):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    launcher = make_launcher(kv, batch, command="sleep 30")

    def crash_when_running():
        kv.wait_for(
            keys.cluster_definition(USER, JOB),
            lambda s: True if any('"running"' in v for v in s.values()) else None,
            10,
        )
        time.sleep(0.2)
        batch.vms[1].crash(-9)

    threading.Thread(target=crash_when_running, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(
        ClusterFailed, match=r"vm1 stopped on n1: QEMU was killed by signal 9 \(KILL\)"
    ) as exc:
        launcher.run()
    kept = run_dir.parent / "state/pcocc/failed-clusters/42/vm1-console.log"
    assert exc.value.hint == (f"last console lines: booting; console log kept in {kept} "
                              "(on n1; or 'pcocc console --log -j 42 vm1')")
    assert kept.read_text() == "booting\n"  # it outlives the run directory
    assert time.monotonic() - t0 < 25  # the sleep was stopped, not waited for
    assert_all_gone(kv, batch, run_dir)


def test_node_lease_expiry_while_running(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    launcher = make_launcher(kv, batch, command="sleep 30")
    state_key = keys.vm_state(USER, JOB, 0)

    def kill_node():
        kv.wait_for(state_key, lambda s: True if '"running"' in s.get(state_key, "") else None, 10)
        kv.expire(kv.lease_of(state_key))

    threading.Thread(target=kill_node, daemon=True).start()
    with pytest.raises(ClusterFailed, match="vm0 disappeared: its node process on n0"):
        launcher.run()
    assert_all_gone(kv, batch, run_dir)


def _signal_once_running(kv, signum):
    """Send ``signum`` to this process (the launcher) once vm1 runs, from a thread."""
    state_key = keys.vm_state(USER, JOB, 1)

    def send():
        kv.wait_for(state_key, lambda s: True if '"running"' in s.get(state_key, "") else None, 10)
        os.kill(os.getpid(), signum)

    threading.Thread(target=send, daemon=True).start()


def test_sigterm_tears_down(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    launcher = make_launcher(kv, batch, command="sleep 30")
    _signal_once_running(kv, signal.SIGTERM)  # scancel
    with pytest.raises(Interrupted, match="SIGTERM") as exc:
        launcher.run()
    assert exc.value.exit_status == 143
    assert launcher.lifecycle.state.value == "failed"
    assert batch.tasks.stopped
    assert_all_gone(kv, batch, run_dir)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_node_stops_when_launcher_definition_vanishes(run_dir):
    kv = MemoryKv()
    d = build_definition("tpl:1", TEMPLATES, owner=USER)
    from pcocc.cluster.state import ClusterState

    rec = ClusterRecord(JOB, d, ClusterState.BOOTING, "login", 1)
    with kv.lease(10) as lease:
        kv.put(keys.cluster_definition(USER, JOB), rec.to_json(), lease)
        vms = {}

        def make(defn, entry, vm_dir, key):
            vms[0] = FakeVm(0, vm_dir, {})
            return vms[0]

        node = NodeProcess(kv, NodeSettings(USER, JOB, 0, host="n0", tick_s=0.05), make)
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("rc", node.run()))
        t.start()
        kv.wait_for(
            keys.vm_state(USER, JOB, 0),
            lambda s: True if any('"running"' in v for v in s.values()) else None,
            10,
        )
    # leaving the block revoked the launcher's lease: the definition is gone
    t.join(10)
    assert result == {"rc": 0}
    assert vms[0].shut_down and kv.keys() == [] and not (run_dir / JOB / "vm0").exists()


def test_node_without_definition_is_clear_error(run_dir):
    node = NodeProcess(MemoryKv(), NodeSettings(USER, JOB, 0), lambda *a: None)
    with pytest.raises(PcoccError, match="cluster 42 has no definition"):
        node.run()


def test_records_are_json_with_expected_fields(run_dir):
    rec = VmRecord(rank=2, host="n", status="running", node_pid=5, ssh_port=1)
    data = json.loads(rec.to_json())
    assert data["status"] == "running" and data["ssh_port"] == 1
    with pytest.raises(PcoccError):
        VmRecord.from_json(json.dumps({**data, "status": "weird"}))


def test_hold_keeps_the_cluster_until_a_signal(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    launcher = make_launcher(kv, batch, n=1, command=None)
    launcher.s.hold = True
    state_key = keys.vm_state(USER, JOB, 0)

    def cancel_later():
        kv.wait_for(state_key, lambda s: True if '"running"' in s.get(state_key, "") else None, 10)
        time.sleep(0.3)
        assert kv.get(state_key) is not None  # still held, no shell was started
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=cancel_later, daemon=True).start()
    with pytest.raises(Interrupted):
        launcher.run()
    assert launcher._command is None
    assert_all_gone(kv, batch, run_dir)


def test_console_tail_and_qemu_check(tmp_path):
    from pcocc.cluster.launcher import is_our_qemu
    from pcocc.cluster.node import console_tail

    log = tmp_path / "console.log"
    log.write_text("a\r\n\r\nb\nc\nd\ne\nf\n")
    assert console_tail(str(log), max_lines=3) == "d | e | f"
    assert console_tail(str(tmp_path / "missing")) == ""
    assert console_tail(None) == ""
    assert not is_our_qemu(os.getpid())  # a python process, not QEMU
    assert not is_our_qemu(2**22 + 12345)  # no such pid


def test_full_node_starts_one_task_per_node(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    assert make_launcher(kv, batch, n=2).run() == 0
    assert batch.one_per_node is False
    kv = MemoryKv()
    batch = FakeBatch(kv)
    full = {"tpl": {**TEMPLATES["tpl"], "full-node": True}}
    assert make_launcher(kv, batch, n=2, templates=full).run() == 0
    assert batch.one_per_node is True
    assert_all_gone(kv, batch, run_dir)


def test_a_note_of_several_vms_is_said_once_naming_them(run_dir, caplog):
    """Each node process records its fall-back to TCG; the launcher warns once per note."""
    import logging

    kv = MemoryKv()
    note = {"accel_note": "KVM is not usable (probe failed); falling back to TCG"}
    batch = FakeBatch(kv, {0: {"extra": note}, 2: {"extra": note}})
    launcher = make_launcher(kv, batch, n=3)
    with caplog.at_level(logging.WARNING, logger="pcocc.cluster.launcher"):
        assert launcher.run() == 0
    said = [r.getMessage() for r in caplog.records if "KVM" in r.getMessage()]
    assert said == ["vm0, vm2: KVM is not usable (probe failed); falling back to TCG"]
    assert_all_gone(kv, batch, run_dir)


def test_normal_end_lets_the_node_processes_end_before_any_signal(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    assert make_launcher(kv, batch, command="true").run() == 0
    # released through etcd, they ended on their own (no signal: Slurm has nothing to say)
    assert batch.tasks.ended_before_stop
    assert batch.tasks.results == {0: 0, 1: 0}
    assert all(vm.shut_down for vm in batch.vms.values())
    assert_all_gone(kv, batch, run_dir)


def test_node_processes_signalled_by_the_batch_system_is_a_stop_not_a_failure(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv, {1: {"signalled": True}})
    launcher = make_launcher(kv, batch, command="sleep 30")
    with pytest.raises(ClusterStopped) as exc:
        launcher.run()
    err = exc.value
    assert err.message == (
        "cluster 42 stopped: the batch system sent SIGTERM to its node processes (on n1)"
    )
    assert "cancelled" in err.hint and "time limit" in err.hint
    assert err.exit_status == 143
    assert "disappeared" not in str(err)
    assert_all_gone(kv, batch, run_dir)


def test_a_signal_to_the_launcher_names_the_cluster(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    launcher = make_launcher(kv, batch, command="sleep 30")
    _signal_once_running(kv, signal.SIGINT)  # Ctrl-C
    with pytest.raises(Interrupted) as exc:
        launcher.run()
    assert exc.value.message == "cluster 42 stopped by SIGINT"
    assert exc.value.exit_status == 130
    assert_all_gone(kv, batch, run_dir)


def test_node_processes_started_before_the_definition_wait_for_it(run_dir):
    """Early node processes (pcocc.cluster.earlynodes) run before the launcher published
    the definition: they wait for it, and the launcher uses them instead of starting more."""
    kv = MemoryKv()
    batch = FakeBatch(kv)
    batch.definition_wait_s = 10.0
    tasks = batch.launch_tasks(JOB, 2, ["pcocc", "internal", "run"], {})
    time.sleep(0.2)  # the nodes are waiting for the definition meanwhile
    assert kv.get(keys.cluster_definition(USER, JOB)) is None
    assert make_launcher(kv, batch, n=2, tasks=tasks).run() == 0
    assert batch.launch_count == 1
    assert sorted(tasks.results.items()) == [(0, 0), (1, 0)]
    assert_all_gone(kv, batch, run_dir)



def test_node_processes_given_the_definition_start_qemu_before_using_etcd(run_dir):
    """With the definition from the launcher (run_launcher's node_env), each node process
    starts its QEMU before its first etcd call: the etcd client's import and login overlap
    the guest's boot (benchmarks/alloc_ready.py, issue 18)."""
    kv = MemoryKv()
    batch = FakeBatch(kv)
    batch.lazy_kv = True
    assert make_launcher(kv, batch, n=2, node_definition=True).run() == 0
    for rank in (0, 1):
        mine = [what for what, r in batch.events if r == rank]
        assert mine == ["qemu", "etcd"]
    assert_all_gone(kv, batch, run_dir)


def test_without_the_definition_node_processes_read_it_from_etcd_first(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    batch.lazy_kv = True
    assert make_launcher(kv, batch, n=1).run() == 0
    assert batch.events == [("etcd", 0)]  # FakeVm.start unused: launch() starts QEMU
    assert_all_gone(kv, batch, run_dir)


def test_a_node_given_another_definition_than_etcd_holds_fails_and_stops_its_vm(run_dir):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    other = build_definition("tpl:2", {"tpl": {"kernel": "/other", "accel": "tcg"}}, owner=USER)
    tasks = batch.launch_tasks(JOB, 2, ["pcocc", "internal", "run"],
                               {DEFINITION_VAR: encode_definition(other)})
    with pytest.raises(ClusterFailed) as exc:
        make_launcher(kv, batch, n=2, tasks=tasks).run()
    assert "differs from the one this node process was started with" in str(exc.value)
    assert all(vm.shut_down for vm in batch.vms.values())
    assert_all_gone(kv, batch, run_dir)
