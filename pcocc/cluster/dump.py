"""``pcocc dump``: write the guest memory of a running VM to an ELF file.

QEMU never gets a path: the file is created here, as the user, under a hidden temporary
name in the destination's directory, and its descriptor is handed to QEMU over the QMP
socket (``getfd``, then ``dump-guest-memory`` to ``fd:NAME``). So QEMU writes only where the
user may. The dump runs detached and ``query-dump`` gives its progress; once it completes,
the file is renamed to its name. On an error or Ctrl-C the temporary file is removed: QEMU
may still be writing to it (a dump cannot be cancelled), but into an unlinked file whose
space is freed when it is done. The guest is paused during the dump, as QEMU does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcocc import fields
from pcocc.cluster.vmcontrol import qmp_session
from pcocc.cluster.lookup import ClusterView
from pcocc.errors import AlreadyExists, Corrupt, NotFound, PcoccError, UsageError
from pcocc.fsutil import atomic_fd
from pcocc.repo.model import Progress, no_progress

#: the name the dump's descriptor has in QEMU's monitor
FD_NAME = "pcocc-dump"
#: how often the progress is asked for
POLL_S = 0.2
DUMP_STATUSES = ("none", "active", "completed", "failed")


@dataclass(frozen=True)
class DumpState:
    """A ``query-dump`` reply."""

    status: str
    completed_bytes: int
    total_bytes: int

    @classmethod
    def from_qmp(cls, reply: Any) -> DumpState:
        """Check a ``query-dump`` reply.

        :raise Corrupt: it is not what QEMU documents
        """
        try:
            if not isinstance(reply, dict):
                raise fields.BadField("(reply)", "expected an object")
            fields.fields_of(reply, ("status", "completed", "total"))
            return cls(
                fields.choice(reply["status"], "status", DUMP_STATUSES),
                fields.integer(reply["completed"], "completed", 0),
                fields.integer(reply["total"], "total", 0),
            )
        except fields.BadField as err:
            raise Corrupt(f"unexpected reply of QEMU to query-dump: {err}") from None


def dump_guest_memory(
    qmp: Any,
    fd: int,
    vm: str,
    progress: Progress = no_progress,
    *,
    poll_s: float = POLL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Have QEMU write the guest memory of ``vm`` as ELF to ``fd``; return its size.

    :param qmp: a connected :class:`pcocc.vm.qmp.QmpClient` of the VM
    :raise QmpError: QEMU refused the dump (e.g. another one runs)
    :raise PcoccError: the dump failed
    """
    qmp.send_fd(fd)
    qmp.execute("getfd", {"fdname": FD_NAME})
    try:
        qmp.execute("dump-guest-memory", {"paging": False, "protocol": f"fd:{FD_NAME}",
                                          "detach": True, "format": "elf"})
    except BaseException:
        with contextlib.suppress(PcoccError):
            qmp.execute("closefd", {"fdname": FD_NAME})  # not taken by a refused dump
        raise
    while True:
        state = DumpState.from_qmp(qmp.execute("query-dump"))
        progress(state.completed_bytes, state.total_bytes or None)
        if state.status == "completed":
            return state.total_bytes
        if state.status == "failed":
            raise PcoccError(f"QEMU could not write the memory dump of {vm}",
                             hint="check the free space of the destination; the VM's"
                             " qemu.log may say more")
        if state.status != "active":
            raise PcoccError(f"the memory dump of {vm} stopped (QEMU reports '{state.status}')")
        sleep(poll_s)


def dump_vm(view: ClusterView, name: str, dest: str | os.PathLike,
            progress: Progress = no_progress) -> int:
    """Write the memory of VM ``name`` to the new file ``dest`` (0600); return its size.

    :raise UsageError: the VM runs on another host, or ``dest`` is a directory
    :raise AlreadyExists: ``dest`` exists
    :raise NotFound: its directory does not exist
    :raise PermissionDenied: its directory is not writable
    """
    path = Path(dest).absolute()
    if path.is_dir():
        raise UsageError(f"{dest} is a directory", hint="give the name of the file to write")
    if os.path.lexists(path):
        raise AlreadyExists(f"{dest} already exists", hint="remove it or choose another name")
    if not path.parent.is_dir():
        raise NotFound(f"directory {path.parent} does not exist")
    rec = view.vm(name)
    with qmp_session(view, rec) as qmp, atomic_fd(path, 0o600) as fd:
        return dump_guest_memory(qmp, fd, rec.name, progress)
