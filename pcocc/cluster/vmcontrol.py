"""Operations on the VMs of a running cluster through their sockets on this host: the
monitor (``pcocc reset``, ``pcocc monitor-cmd``), the guest agent (``pcocc exec``), the VM
sets these commands take, and the same-host rule for every run file of a VM
(:func:`local_path`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pcocc.cluster import rundir
from pcocc.cluster.lookup import ClusterView
from pcocc.cluster.vmset import check_in_cluster
from pcocc.cluster.vmstate import VmRecord
from pcocc.errors import NotFound, PcoccError, UsageError
from pcocc.vm.agent import GuestAgent

if TYPE_CHECKING:  # (pcocc exec's module: save, reset & co do not load it)
    from pcocc.cluster.guestexec import ErrorReport, ExecRequest, Output


def local_path(
    view: ClusterView, rec: VmRecord, path: str | None, what: str, *, is_socket: bool = True
) -> str:
    """The path of a socket or log of the VM, on this host, inside the VM's run dir.

    The one place of the same-host rule: every run file of a VM (QMP, guest agent, console,
    display) is reached on the VM's host only.

    :raise NotFound: the VM publishes no ``what`` yet
    :raise UsageError: the VM runs on another host
    """
    if not path:
        raise NotFound(f"{rec.name} has no {what} yet", hint="wait until it runs")
    if rec.host != socket.gethostname():
        raise UsageError(
            f"{rec.name} runs on host {rec.host}; its {what} is only reachable there",
            hint=f"run this command on {rec.host}",
        )
    return rundir.vm_run_file(path, view.batchid, rec.rank, socket=is_socket)


def short_socket_path(path: str) -> tuple[str, int | None]:
    """A connectable name for a unix socket path longer than sockaddr_un allows, and the
    directory descriptor behind it (None if the path fits), which the caller closes."""
    if len(path.encode()) < 100:
        return path, None
    fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


def _qmp(view: ClusterView, rec: VmRecord):
    from pcocc.vm.qmp import QmpClient

    path = local_path(view, rec, rec.qmp_socket, "monitor socket")
    name, fd = short_socket_path(path)
    client = QmpClient(name, name=rec.name)
    return client, fd


@contextlib.contextmanager
def qmp_session(view: ClusterView, rec: VmRecord) -> Iterator[Any]:
    """A connected :class:`pcocc.vm.qmp.QmpClient` of VM ``rec``, on its host only."""
    client, fd = _qmp(view, rec)
    try:
        with client:
            yield client
    finally:
        if fd is not None:
            os.close(fd)


def reset(view: ClusterView, name: str) -> None:
    rec = view.vm(name)
    client, fd = _qmp(view, rec)
    try:
        with client:
            client.system_reset()
    finally:
        if fd is not None:
            os.close(fd)


def select_vms(view: ClusterView, ranks: Sequence[int] | None, *,
               default: Sequence[int] | None) -> tuple[int, ...]:
    """``ranks`` (from :func:`pcocc.cluster.vmset.split_vm_set`), else ``default`` (None:
    every VM of the cluster), checked against the cluster.

    :raise NotFound: a VM the cluster does not have
    """
    if ranks is None:
        ranks = tuple(default) if default is not None else tuple(range(view.size))
    check_in_cluster(ranks, view.size, view.batchid)
    return tuple(ranks)


def reset_vms(view: ClusterView, ranks: Sequence[int]) -> None:
    for rank in ranks:
        reset(view, f"vm{rank}")


def monitor_commands(view: ClusterView, ranks: Sequence[int],
                     words: Sequence[str]) -> list[tuple[int, str]]:
    """:func:`monitor_command` on each VM: (rank, answer) in order."""
    return [(rank, monitor_command(view, f"vm{rank}", words)) for rank in ranks]


def agent_socket(view: ClusterView, rec: VmRecord) -> str:
    """The guest agent socket of a VM running on this host (checked like every run file).

    :raise NotFound: the VM publishes none, or it is gone
    :raise UsageError: the VM runs on another host
    """
    path = rec.extra.get("agent_socket")
    if not isinstance(path, str):
        raise NotFound(f"{rec.name} publishes no guest agent socket",
                       hint="wait until 'pcocc ps' shows it running")
    try:
        return local_path(view, rec, path, "guest agent socket")
    except NotFound as err:
        raise NotFound(f"{rec.name} has no guest agent socket: {err}") from err


@contextlib.contextmanager
def guest_agent(view: ClusterView, rank: int) -> Iterator[GuestAgent]:
    """The guest agent of VM ``rank`` on this host."""
    path = agent_socket(view, view.vm(f"vm{rank}"))
    name, fd = short_socket_path(path)
    try:
        yield GuestAgent(name, label=path)
    finally:
        if fd is not None:
            os.close(fd)


def exec_in_vms(view: ClusterView, ranks: Sequence[int], request: ExecRequest,
                output: Output, on_error: ErrorReport) -> int:
    """``pcocc exec``: :func:`pcocc.cluster.guestexec.run_in_vms` on VMs of ``view``."""
    from pcocc.cluster.guestexec import run_in_vms

    return run_in_vms(lambda rank: guest_agent(view, rank), ranks, request, output, on_error)


def monitor_command(view: ClusterView, name: str, words: Sequence[str]) -> str:
    """Run a QMP command (``{"execute": ...}`` JSON, or a bare command name) or an HMP line."""
    rec = view.vm(name)
    text = " ".join(words).strip()
    if not text:
        raise UsageError("no monitor command given", hint="e.g. 'info status' or 'query-status'")
    client, fd = _qmp(view, rec)
    try:
        with client:
            if text.startswith("{"):
                try:
                    msg = json.loads(text)
                    command, arguments = msg["execute"], msg.get("arguments")
                except (ValueError, KeyError, TypeError) as err:
                    raise UsageError(f"invalid QMP command {text!r}: {err}") from err
                return json.dumps(client.execute(command, arguments), indent=2)
            if len(words) == 1 and words[0].startswith("query-"):
                return json.dumps(client.execute(words[0]), indent=2)
            return client.human_monitor_command(text)
    except PcoccError:
        raise
    finally:
        if fd is not None:
            os.close(fd)
