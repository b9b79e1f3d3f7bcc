"""Copy a running VM's disk with QMP block jobs (no deprecated ``drive-*`` command).

:func:`backup` opens a new qcow2 file as a block node (``blockdev-add``, its backing file
never opened) and runs ``blockdev-backup`` from the VM's disk into it: ``sync: "top"``
copies the clusters of the disk's top layer only (the file keeps the backing file name it
was created with), ``sync: "full"`` the whole flattened disk. The copy is the disk as it
was when the job started, whatever the guest writes after (QEMU copies a cluster before the
guest overwrites it), so the guest needs to be quiet only while the job starts. The job and
the node are removed on every path: success, error, or Ctrl-C (the job is cancelled).

``qmp`` is anything with ``execute(command, arguments=None, *, timeout_s=None)``
(:class:`pcocc.vm.qmp.QmpClient`); QMP replies are checked before use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pcocc.errors import PcoccError
from pcocc.repo.model import Progress, no_progress

log = logging.getLogger(__name__)

SYNC_MODES = ("top", "full")
#: how often the job's progress is asked for
POLL_S = 0.05
#: how long a cancelled job may take to end
CANCEL_TIMEOUT_S = 30.0


class Qmp(Protocol):
    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout_s: float | None = None) -> Any: ...


class BlockJobError(PcoccError):
    """A block job failed, or QEMU described a disk or a job in an unexpected way."""


@dataclass(frozen=True)
class JobState:
    """One entry of ``query-jobs``."""

    id: str
    status: str
    done_bytes: int
    total_bytes: int
    error: str | None = None

    @property
    def is_concluded(self) -> bool:
        return self.status in ("concluded", "null")

    @property
    def is_ready(self) -> bool:
        """A mirror-like job (an active commit) waits for ``job-complete``."""
        return self.status == "ready"


@dataclass(frozen=True)
class DiskState:
    """What ``query-block`` says of a disk: its top image and that image's backing file."""

    device: str
    filename: str
    virtual_size: int
    backing_filename: str | None
    #: node name of the top image (the device's root node)
    node_name: str | None = None


def parse_jobs(reply: object) -> dict[str, JobState]:
    """``query-jobs`` -> {job id: JobState}."""
    if not isinstance(reply, list):
        raise BlockJobError(f"unexpected reply to query-jobs: {reply!r}")
    jobs = {}
    for item in reply:
        if not isinstance(item, dict):
            raise BlockJobError(f"unexpected job in query-jobs: {item!r}")
        job_id, status = item.get("id"), item.get("status")
        done, total = item.get("current-progress"), item.get("total-progress")
        error = item.get("error")
        if (not isinstance(job_id, str) or not isinstance(status, str)
                or not isinstance(done, int) or not isinstance(total, int)
                or not (error is None or isinstance(error, str))):
            raise BlockJobError(f"unexpected job in query-jobs: {item!r}")
        jobs[job_id] = JobState(job_id, status, done, total, error)
    return jobs


def parse_disk(reply: object, device: str) -> DiskState:
    """The entry of ``device`` in a ``query-block`` reply."""
    if not isinstance(reply, list):
        raise BlockJobError(f"unexpected reply to query-block: {reply!r}")
    for item in reply:
        if not isinstance(item, dict) or item.get("device") != device:
            continue
        image = (item.get("inserted") or {}).get("image")
        if not isinstance(image, dict):
            raise BlockJobError(f"disk {device} has no image inserted")
        filename, size = image.get("filename"), image.get("virtual-size")
        backing = image.get("backing-image")
        backing_name = backing.get("filename") if isinstance(backing, dict) else None
        if (not isinstance(filename, str) or not isinstance(size, int) or size < 0
                or not (backing_name is None or isinstance(backing_name, str))):
            raise BlockJobError(f"unexpected description of disk {device}: {image!r}")
        node = (item.get("inserted") or {}).get("node-name")
        return DiskState(device, filename, size, backing_name,
                         node if isinstance(node, str) else None)
    raise BlockJobError(f"the VM has no disk {device!r}")


def query_disk(qmp: Qmp, device: str) -> DiskState:
    return parse_disk(qmp.execute("query-block"), device)


def _job_state(qmp: Qmp, job_id: str) -> JobState | None:
    return parse_jobs(qmp.execute("query-jobs")).get(job_id)


def wait_job(qmp: Qmp, job_id: str, progress: Progress, timeout_s: float | None,
             sleep: Callable[[float], None], *, ready: bool = False) -> JobState:
    """Poll until the job concludes (or, with ``ready``, is ready to complete); report its
    progress on the way. The first polls come quickly: a small job ends in milliseconds."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = POLL_S / 8
    while True:
        state = _job_state(qmp, job_id)
        if state is None:
            raise BlockJobError(f"block job {job_id} vanished")
        progress(state.done_bytes, state.total_bytes)
        if state.is_concluded or (ready and state.is_ready):
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise BlockJobError(f"block job {job_id} did not end in {timeout_s:g} s")
        sleep(delay)
        delay = min(POLL_S, delay * 2)


def backup(qmp: Qmp, device: str, target: Path, *, sync: str, job_id: str | None = None,
           quiesce: AbstractContextManager[Any] | None = None,
           progress: Progress = no_progress,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Copy ``device`` into the existing qcow2 file ``target`` (see the module docstring).

    :param quiesce: entered just before the job starts and left as soon as it runs (e.g.
        the guest's file systems frozen for the instant the copy's content is fixed)
    :param progress: ``progress(done_bytes, total_bytes)`` while the job runs
    :raise BlockJobError: QEMU refused the job or the job failed (``target`` then holds
        an incomplete copy: the caller discards it)
    """
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be one of {SYNC_MODES}")
    tag = os.urandom(4).hex()
    node = f"pcocc-save-{tag}"
    job_id = job_id or f"pcocc-save-{tag}"
    qmp.execute("blockdev-add", {
        "driver": "qcow2", "node-name": node, "backing": None,
        "file": {"driver": "file", "filename": os.path.abspath(target)},
    })
    started = concluded = False
    try:
        with quiesce if quiesce is not None else contextlib.nullcontext():
            qmp.execute("blockdev-backup", {
                "job-id": job_id, "device": device, "target": node, "sync": sync,
                "auto-dismiss": False,
            })
            started = True
        state = wait_job(qmp, job_id, progress, None, sleep)
        concluded = True
        if state.error:
            raise BlockJobError(f"copy of disk {device} failed: {state.error}")
    finally:
        if started:
            end_job(qmp, job_id, cancel=not concluded, sleep=sleep)
        try:
            qmp.execute("blockdev-del", {"node-name": node})
        except PcoccError as err:
            log.warning("cannot remove block node %s: %s", node, err)


def end_job(qmp: Qmp, job_id: str, *, cancel: bool, sleep: Callable[[float], None]) -> None:
    """Cancel the job if it still runs, wait until it concludes, and dismiss it."""
    try:
        if cancel:
            qmp.execute("job-cancel", {"id": job_id})
            wait_job(qmp, job_id, no_progress, CANCEL_TIMEOUT_S, sleep)
        qmp.execute("job-dismiss", {"id": job_id})
    except PcoccError as err:
        log.warning("cannot end block job %s: %s", job_id, err)
