"""When is a VM "up": the readiness probes pcocc (and the benchmarks' baselines) poll.

QEMU's hostfwd accepts connections before the guest listens, so a mere TCP connect proves
nothing; an ssh server's banner does (see :mod:`pcocc.vm.machine`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

#: seconds between two readiness probes: a refused connect costs nothing, a late "up" costs
#: the user (benchmarks/alloc_ready.py's QEMU baseline polls at the same pace)
READY_POLL_S = 0.05


def ssh_banner_ready(port: int, timeout_s: float = 1.0, address: str = "127.0.0.1") -> bool:
    """True when something on address:port sends an SSH protocol banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_ready(
    probe: Callable[[], bool], deadline: float, check: Callable[[], None] = lambda: None
) -> bool:
    """Poll ``probe`` every READY_POLL_S until it is true (True) or ``deadline`` passes (False).

    ``check`` runs before each probe and raises when waiting is pointless (QEMU died).
    ``deadline`` is a ``time.monotonic()`` value.
    """
    while True:
        check()
        if probe():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(READY_POLL_S)


def wait_ssh_banner(
    port: int, address: str, deadline: float, check: Callable[[], None] = lambda: None
) -> bool:
    """pcocc's readiness check of a VM with forwarded ssh: the banner on ``address:port``."""
    return wait_ready(lambda: ssh_banner_ready(port, address=address), deadline, check)
