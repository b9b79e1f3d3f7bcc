"""Save a VM's memory and device state to a file and load it back, over QMP.

QEMU 7.2 has no ``file:`` migration URI; the file is opened here and its descriptor passed
to QEMU over the QMP socket (``getfd``), then used as ``fd:NAME``: no shell, no path in
QEMU's hands. Loading needs a QEMU started with ``-incoming defer``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pcocc.errors import PcoccError, TimedOut
from pcocc.vm.qmp import QmpClient

log = logging.getLogger(__name__)

FD_NAME = "pcocc-ckpt"
#: the QEMU option that makes QEMU wait for migrate-incoming
INCOMING_ARGS = ("-incoming", "defer")
_DONE = ("completed", "failed", "cancelled")


class MigrationError(PcoccError):
    """QEMU could not save or load a VM state."""


def _migrate(qmp: QmpClient, command: str, path: Path, flags: int, name: str,
             timeout_s: float) -> None:
    """Open ``path``, hand it to QEMU, run ``command`` (migrate or migrate-incoming) on it
    and wait until the migration completes."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        qmp.send_fd(fd)
        qmp.execute("getfd", {"fdname": FD_NAME})
    finally:
        os.close(fd)
    qmp.execute(command, {"uri": f"fd:{FD_NAME}"})
    _wait(qmp, name, timeout_s)


def _wait(qmp: QmpClient, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in _DONE:
            raise MigrationError(f"{name}: QEMU's migration {status}:"
                                 f" {info.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            raise TimedOut(f"{name}: the VM state was not written within {timeout_s:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def qemu_version(qmp: QmpClient) -> str:
    """``major.minor.micro`` of the QEMU behind ``qmp``."""
    info = qmp.execute("query-version")
    try:
        q = info["qemu"]
        return f"{int(q['major'])}.{int(q['minor'])}.{int(q['micro'])}"
    except (KeyError, TypeError, ValueError) as err:
        raise MigrationError(f"unexpected reply to query-version: {info!r}"[:200]) from err


def installed_qemu_version(binary: str = "qemu-system-x86_64") -> str | None:
    """``major.minor.micro`` of ``binary --version``; None when it does not say."""
    import re

    from pcocc import proc

    out = proc.run([binary, "--version"], what="ask QEMU its version").stdout
    m = re.search(r"version ([0-9]+)\.([0-9]+)\.([0-9]+)", out)
    return ".".join(m.groups()) if m else None


def save_state(qmp: QmpClient, path: Path, name: str, timeout_s: float = 1800.0) -> None:
    """Pause the VM and write its state to the new file ``path`` (0600). The VM stays
    paused (QEMU's ``postmigrate``): :func:`resume` or quit it.

    :raise MigrationError: QEMU failed to write it (``path`` is removed)
    """
    qmp.execute("stop")
    try:
        _migrate(qmp, "migrate", path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, name, timeout_s)
    except FileExistsError:
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def load_state(qmp: QmpClient, path: Path, name: str, timeout_s: float = 1800.0) -> None:
    """Load the state in ``path`` into a QEMU started with :data:`INCOMING_ARGS`, then run
    the VM.

    :raise MigrationError: QEMU refused the state (another QEMU version or machine)
    """
    _migrate(qmp, "migrate-incoming", path, os.O_RDONLY, name, timeout_s)
    resume(qmp)


def resume(qmp: QmpClient) -> None:
    """Run a paused VM (also after a completed outgoing migration)."""
    if qmp.query_status() != "running":
        qmp.execute("cont")


def set_guest_time(agent, name: str) -> bool:
    """Set the guest's clock to the host's through its agent (the clock stood still while
    the VM was saved); False when the agent does not answer."""
    try:
        agent.execute("guest-set-time", {"time": time.time_ns()}, timeout_s=5.0)
    except PcoccError as err:
        log.warning("%s: could not set the guest's clock: %s", name, err)
        return False
    return True
