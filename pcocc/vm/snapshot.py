"""Fix a running VM's disk overlay at one instant with a temporary external snapshot, so
that pcocc can read the overlay file itself, then merge the snapshot back.

:func:`take` puts a new empty qcow2 (the "temporary overlay", a file of the VM's run dir)
on top of the disk (``blockdev-add`` of a node without backing, ``blockdev-snapshot``):
from then on the guest writes into it and QEMU no longer writes the old top image, which
it flushed first, so the old image can be read as a plain file. :func:`merge` commits what
the guest wrote meanwhile back into the old image (``block-commit`` of the active layer,
``job-complete`` once it is ready), removes the node and the file. The guest sees one disk
all along.

A save killed between the two leaves the VM running on the temporary overlay (it works,
but the run dir's overlay misses the latest writes): :func:`settled` finds it by its file
name and merges it first. The VM's run dir is flocked for the whole time, so that two
saves, or a save and a checkpoint, do not stack snapshots.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pcocc.errors import Busy, PcoccError
from pcocc.repo import qcow2write
from pcocc.repo.model import no_progress
from pcocc.vm.blockjobs import (
    BlockJobError,
    DiskState,
    Qmp,
    end_job,
    query_disk,
    wait_job,
)

log = logging.getLogger(__name__)

#: the temporary overlay's name in the VM's run dir
TEMP_OVERLAY = "disk0.saving.qcow2"
#: how long the merge of the guest's writes may take
MERGE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Snapshot:
    device: str
    node: str  # the temporary overlay's node (the disk's active layer)
    base_node: str  # the frozen image's node
    path: Path  # the temporary overlay file


@contextlib.contextmanager
def locked(run_dir: Path, vm: str, *, wait_s: float = 0.0) -> Iterator[None]:
    """The VM's run dir flocked for a snapshot's lifetime.

    :raise Busy: another save or checkpoint of ``vm`` holds it (after ``wait_s``)
    """
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(f"another save or checkpoint of {vm} is running",
                               hint="try again when it ends") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _new_node_name() -> str:
    return f"pcocc-snap-{os.urandom(4).hex()}"


def take(qmp: Qmp, disk: DiskState, path: Path) -> Snapshot:
    """Put the empty temporary overlay ``path`` on top of ``disk`` (see the module
    docstring); QEMU flushes the old top image first.

    :raise PcoccError: QEMU refused (nothing is left: the node and the file are removed)
    """
    if disk.node_name is None:
        raise BlockJobError(f"QEMU names no node for disk {disk.device}")
    layout = qcow2write.plan(disk.virtual_size, [])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, qcow2write.metadata(layout))
    finally:
        os.close(fd)
    node = _new_node_name()
    added = False
    try:
        qmp.execute("blockdev-add", {
            "driver": "qcow2", "node-name": node, "backing": None,
            "file": {"driver": "file", "filename": os.path.abspath(path)},
        })
        added = True
        qmp.execute("blockdev-snapshot", {"node": disk.device, "overlay": node})
    except BaseException:
        if added:
            with contextlib.suppress(PcoccError):
                qmp.execute("blockdev-del", {"node-name": node})
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return Snapshot(disk.device, node, disk.node_name, path)


def merge(qmp: Qmp, snap: Snapshot, *, sleep: Callable[[float], None] = time.sleep) -> None:
    """Commit the temporary overlay back into the frozen image, remove its node and file.

    :raise BlockJobError: the commit failed (the VM goes on running on the temporary
        overlay; the next :func:`settled` tries again)
    """
    job_id = f"pcocc-merge-{os.urandom(4).hex()}"
    qmp.execute("block-commit", {"job-id": job_id, "device": snap.device,
                                 "base-node": snap.base_node, "auto-dismiss": False})
    concluded = False
    try:
        state = wait_job(qmp, job_id, no_progress, MERGE_TIMEOUT_S, sleep, ready=True)
        if state.is_ready:
            qmp.execute("job-complete", {"id": job_id})
            state = wait_job(qmp, job_id, no_progress, MERGE_TIMEOUT_S, sleep)
        concluded = True
        if state.error:
            raise BlockJobError(f"cannot merge the temporary overlay of disk {snap.device} "
                                f"back: {state.error}")
    finally:
        end_job(qmp, job_id, cancel=not concluded, sleep=sleep)
    qmp.execute("blockdev-del", {"node-name": snap.node})
    with contextlib.suppress(FileNotFoundError):
        os.unlink(snap.path)


def settled(qmp: Qmp, device: str, path: Path) -> DiskState:
    """The disk as :func:`pcocc.vm.blockjobs.query_disk` shows it, after merging back a
    temporary overlay ``path`` that a killed save left on top of it (call it locked)."""
    disk = query_disk(qmp, device)
    if os.path.join(path.parent, disk.filename) != str(path):  # (QEMU runs in the run dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a file QEMU does not use: a save killed before its snapshot
        return disk
    if disk.node_name is None or disk.backing_filename is None:
        raise BlockJobError(f"unexpected description of disk {device}: {disk}")
    log.info("merging the temporary overlay an interrupted save left on %s", device)
    merge(qmp, Snapshot(device, disk.node_name, _node_of(qmp, disk.backing_filename), path))
    return query_disk(qmp, device)


def _node_of(qmp: Qmp, filename: str) -> str:
    """The node name of the qcow2 image ``filename`` (query-named-block-nodes)."""
    nodes = qmp.execute("query-named-block-nodes", {"flat": True})
    for node in nodes if isinstance(nodes, list) else ():
        if (isinstance(node, dict) and node.get("drv") == "qcow2"
                and node.get("file") == filename and isinstance(node.get("node-name"), str)):
            return node["node-name"]
    raise BlockJobError(f"QEMU shows no node for {filename}")

