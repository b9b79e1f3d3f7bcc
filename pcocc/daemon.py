"""Small tools for processes that pcocc or its helpers start and must stop without leftovers.

A daemon is started with ``pcocc.proc.spawn`` (its own session, so its own process group);
its pid is written to a pid file so that another process (``helpers/devcluster.py stop``)
can stop it later. Stopping kills the group and any descendant that left it, then checks
that nothing is left.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from pcocc.errors import PcoccError


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port on ``address`` that was free a moment ago (callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def free_ports(count: int, address: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports on ``address`` (all held open together, so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((address, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ppid_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def descendants(pids: Iterable[int]) -> set[int]:
    """Every living process below ``pids`` (not including them)."""
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def processes_mentioning(marker: str, *, environ: bool = True) -> list[int]:
    """Living processes whose command line (or environment) contains ``marker``."""
    found = []
    me = os.getpid()
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        for name in ("cmdline", "environ") if environ else ("cmdline",):
            try:
                with open(f"/proc/{entry}/{name}", "rb") as f:
                    if needle in f.read():
                        if is_alive(int(entry)):
                            found.append(int(entry))
                        break
            except OSError:
                continue
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid == pid and pgid != os.getpgrp():
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    else:
        _signal(pid, sig)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(pids: Iterable[int], timeout_s: float) -> set[int]:
    """Wait until ``pids`` are gone (reaping our own children); return those still alive."""
    pending = set(pids)
    deadline = time.monotonic() + timeout_s
    while pending:
        for pid in list(pending):
            _reap(pid)
            if not is_alive(pid):
                pending.discard(pid)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return pending


def stop_pids(pids: Iterable[int], *, timeout_s: float = 5.0, what: str = "daemon") -> None:
    """SIGTERM the groups of ``pids`` and their descendants, then SIGKILL what remains.

    :raise PcoccError: something survived SIGKILL (names the pids)
    """
    roots = [p for p in pids if is_alive(p)]
    targets = set(roots) | descendants(roots)
    if not targets:
        return
    for pid in roots:
        _signal_group(pid, signal.SIGTERM)
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    left = wait_gone(targets, timeout_s)
    if left:
        left |= descendants(left)
        for pid in left:
            _signal_group(pid, signal.SIGKILL)
            _signal(pid, signal.SIGKILL)
        left = wait_gone(left, 5.0)
    if left:
        raise PcoccError(f"{what}: processes {sorted(left)} survived SIGKILL")


def read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
