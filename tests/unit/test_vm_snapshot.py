"""The temporary snapshot of ``pcocc save`` (pcocc.vm.snapshot): the QMP steps that put a
new overlay on a running disk and merge it back, the merge of one a killed save left, and
the lock that keeps two of them apart; against a fake QMP that records what it was asked."""

from __future__ import annotations

import os

import pytest

from pcocc.errors import Busy, PcoccError
from pcocc.repo import qcow2map
from pcocc.vm import snapshot
from pcocc.vm.blockjobs import BlockJobError, DiskState


class FakeQmp:
    """Answers a snapshot and a commit; the commit job is ready after ``polls`` queries."""

    def __init__(self, top: str, backing: str, *, polls: int = 1, refuse: str | None = None,
                 error: str | None = None):
        self.calls: list[tuple[str, dict | None]] = []
        self.top, self.backing = top, backing
        self.top_node, self.polls, self.refuse, self.error = "#top", polls, refuse, error
        self.queries, self.completed, self.job = 0, False, None

    def execute(self, command, arguments=None, *, timeout_s=None):
        self.calls.append((command, arguments))
        if command == self.refuse:
            raise PcoccError(f"QMP {command} failed: GenericError: no")
        if command == "query-block":
            return [{"device": "disk0", "inserted": {"node-name": self.top_node, "image": {
                "filename": self.top, "virtual-size": 1 << 20,
                "backing-image": {"filename": self.backing}}}}]
        if command == "query-named-block-nodes":
            return [{"node-name": "#top", "drv": "qcow2", "file": self.top},
                    {"node-name": "#base", "drv": "qcow2", "file": self.backing}]
        if command == "block-commit":
            self.job = arguments["job-id"]
        if command == "job-complete":
            self.completed = True
        if command == "query-jobs":
            self.queries += 1
            status = ("concluded" if self.completed or self.error else
                      "ready" if self.queries > self.polls else "running")
            entry = {"id": self.job, "status": status, "current-progress": 1,
                     "total-progress": 1}
            if self.error:
                entry["error"] = self.error
            return [entry]
        return {}

    def names(self) -> list[str]:
        return [c for c, _ in self.calls]


def disk(tmp_path) -> DiskState:
    return DiskState("disk0", str(tmp_path / "disk0.qcow2"), 1 << 20, "/repo/blob", "#top")


def test_take_puts_an_empty_overlay_without_backing_on_the_disk(tmp_path):
    qmp = FakeQmp(str(tmp_path / "disk0.qcow2"), "/repo/blob")
    path = tmp_path / snapshot.TEMP_OVERLAY
    snap = snapshot.take(qmp, disk(tmp_path), path)
    assert qmp.names() == ["blockdev-add", "blockdev-snapshot"]
    add, snap_args = qmp.calls[0][1], qmp.calls[1][1]
    assert add["backing"] is None and add["file"]["filename"] == str(path)
    assert snap_args == {"node": "disk0", "overlay": add["node-name"]}
    assert (snap.node, snap.base_node, snap.path) == (add["node-name"], "#top", path)
    with open(path, "rb") as f:  # an empty qcow2 of the disk's size
        found = qcow2map.read_map(f.fileno())
    assert (found.virtual_size, found.data, found.zeros) == (1 << 20, (), ())


def test_a_refused_snapshot_leaves_no_node_and_no_file(tmp_path):
    qmp = FakeQmp(str(tmp_path / "disk0.qcow2"), "/repo/blob", refuse="blockdev-snapshot")
    path = tmp_path / snapshot.TEMP_OVERLAY
    with pytest.raises(PcoccError, match="blockdev-snapshot"):
        snapshot.take(qmp, disk(tmp_path), path)
    assert qmp.names()[-1] == "blockdev-del" and not path.exists()


def test_merge_commits_the_active_layer_then_removes_node_and_file(tmp_path):
    qmp = FakeQmp(str(tmp_path / "t.qcow2"), str(tmp_path / "disk0.qcow2"), polls=2)
    path = tmp_path / "t.qcow2"
    path.write_bytes(b"x")
    snapshot.merge(qmp, snapshot.Snapshot("disk0", "snapnode", "#top", path),
                   sleep=lambda _s: None)
    assert qmp.names() == ["block-commit", "query-jobs", "query-jobs", "query-jobs",
                           "job-complete", "query-jobs", "job-dismiss", "blockdev-del"]
    commit = qmp.calls[0][1]
    assert commit["device"] == "disk0" and commit["base-node"] == "#top"
    assert "top" not in commit and "top-node" not in commit  # the active layer
    assert qmp.calls[-1][1] == {"node-name": "snapnode"} and not path.exists()


def test_a_failed_merge_is_an_error_and_keeps_the_overlay(tmp_path):
    qmp = FakeQmp(str(tmp_path / "t.qcow2"), str(tmp_path / "disk0.qcow2"), error="EIO")
    path = tmp_path / "t.qcow2"
    path.write_bytes(b"x")
    with pytest.raises(BlockJobError, match="merge the temporary overlay.*EIO"):
        snapshot.merge(qmp, snapshot.Snapshot("disk0", "snapnode", "#top", path),
                       sleep=lambda _s: None)
    assert "blockdev-del" not in qmp.names() and path.exists()  # the VM still runs on it


def test_settled_merges_the_overlay_a_killed_save_left(tmp_path):
    path = tmp_path / snapshot.TEMP_OVERLAY
    path.write_bytes(b"x")
    qmp = FakeQmp(str(path), str(tmp_path / "disk0.qcow2"))
    qmp.top_node = "pcocc-snap-1"
    # (after the merge the fake still shows the same disk: only the steps are checked)
    snapshot.settled(qmp, "disk0", path)
    commit = qmp.calls[qmp.names().index("block-commit")][1]
    assert commit["base-node"] == "#base"
    assert ("blockdev-del", {"node-name": "pcocc-snap-1"}) in qmp.calls
    assert not path.exists()


def test_settled_leaves_a_disk_without_snapshot_alone(tmp_path):
    path = tmp_path / snapshot.TEMP_OVERLAY
    path.write_bytes(b"x")  # a save killed before QEMU used it
    qmp = FakeQmp(str(tmp_path / "disk0.qcow2"), "/repo/blob")
    found = snapshot.settled(qmp, "disk0", path)
    assert qmp.names() == ["query-block"] and found.node_name == "#top"
    assert not path.exists()


def test_one_snapshot_at_a_time(tmp_path):
    with snapshot.locked(tmp_path, "vm0"):
        with pytest.raises(Busy, match="another save or checkpoint of vm0"):
            with snapshot.locked(tmp_path, "vm0"):
                pass
    with snapshot.locked(tmp_path, "vm0"):  # released
        pass
    assert os.listdir(tmp_path) == []  # the lock is the directory itself
