"""The checkpoint protocol between 'pcocc ckpt' and the node processes, through the
launcher, with an in-memory etcd and fake VMs (the real QEMU side: test_cluster_ckpt.py).
Integration: the node processes make ssh host keys with ssh-keygen."""

from __future__ import annotations

import os
import threading

import pytest

from pcocc.cluster import ckptdir
from pcocc.cluster.checkpoint import checkpoint_cluster
from pcocc.errors import PcoccError
from tests.fixtures.launcher import JOB, USER, FakeBatch, assert_all_gone, make_launcher
from tests.fixtures.memkv import MemoryKv


def _checkpoint_when_running(launcher, kv, dest, after=None, **kwargs):
    """Run checkpoint_cluster in a thread once the cluster runs (then ``after``); its
    result or error."""
    outcome = {}

    def go():
        try:
            outcome["path"] = checkpoint_cluster(
                kv, USER, JOB, launcher.definition, dest, tick_s=0.05, **kwargs
            )
        except BaseException as err:  # noqa: BLE001 - the test looks at it
            outcome["error"] = err
        finally:
            if after:
                after()

    def spy(msg):
        if "is running" in msg:
            threading.Thread(target=go, daemon=True).start()

    launcher.report = spy
    return outcome


def _ckpt_names(path):
    return sorted(n for n in os.listdir(path) if n.startswith(("ck", ".ck")))


def test_ckpt_saves_every_vm_then_the_cluster_ends_cleanly(run_dir, tmp_path):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    launcher = make_launcher(kv, batch, n=2, command="sleep 60")
    dest = tmp_path / "ck"
    outcome = _checkpoint_when_running(launcher, kv, dest)
    assert launcher.run() == 0  # stopped after a checkpoint: not a failure
    assert "error" not in outcome, outcome
    assert outcome["path"] == dest
    manifest = ckptdir.read_manifest(dest)
    assert [vm.rank for vm in manifest.vms] == [0, 1]
    for vm in manifest.vms:
        ckptdir.check_vm_files(dest, vm)
    assert manifest.definition["spec"] == "tpl:2"
    assert _ckpt_names(tmp_path) == ["ck"]  # no staging left
    assert all(not getattr(vm, "resumed", 0) for vm in batch.vms.values())
    assert_all_gone(kv, batch, run_dir)


def test_ckpt_no_stop_resumes_the_vms(run_dir, tmp_path):
    kv = MemoryKv()
    batch = FakeBatch(kv)
    flag = tmp_path / "flag"
    launcher = make_launcher(
        kv, batch, n=2, command=f"while [ ! -e {flag} ]; do sleep 0.05; done; exit 7"
    )
    dest = tmp_path / "ck"
    outcome = _checkpoint_when_running(launcher, kv, dest, stop=False,
                                       after=lambda: flag.write_text(""))
    assert launcher.run() == 7  # the cluster ran on until its command ended
    assert "error" not in outcome, outcome
    assert ckptdir.read_manifest(dest).vms[1].files
    assert [batch.vms[r].resumed for r in (0, 1)] == [1, 1]
    assert_all_gone(kv, batch, run_dir)


def test_a_vm_that_cannot_be_saved_leaves_no_checkpoint_and_the_cluster_runs_on(
    run_dir, tmp_path
):
    kv = MemoryKv()
    batch = FakeBatch(kv, {1: {"save_fails": True}})
    flag = tmp_path / "flag"
    launcher = make_launcher(
        kv, batch, n=2, command=f"while [ ! -e {flag} ]; do sleep 0.05; done"
    )
    dest = tmp_path / "ck"
    outcome = _checkpoint_when_running(launcher, kv, dest, after=lambda: flag.write_text(""))
    assert launcher.run() == 0
    err = outcome.get("error")
    assert isinstance(err, PcoccError)
    assert "vm1" in err.message and "no space left" in err.message
    assert _ckpt_names(tmp_path) == []  # neither DIR nor staging
    assert batch.vms[0].resumed == 1  # the VM that was saved runs again
    assert_all_gone(kv, batch, run_dir)


def test_ckpt_into_an_existing_dir_is_refused_before_asking_the_nodes(tmp_path):
    kv = MemoryKv()
    launcher = make_launcher(kv, FakeBatch(kv), n=1)
    (tmp_path / "ck").mkdir()
    with pytest.raises(PcoccError, match="already exists"):
        checkpoint_cluster(kv, USER, JOB, launcher.definition, tmp_path / "ck")
    assert kv.keys() == []
