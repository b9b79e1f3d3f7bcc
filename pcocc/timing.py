"""Phase timestamps of a cluster start, for benchmarks/alloc_ready.py.

When ``$PCOCC_TIMING`` names a file, ``mark(phase)`` appends ``<epoch seconds> <pid> <phase>``
to it (one ``O_APPEND`` write: lines of concurrent processes do not mix). Otherwise it does
nothing. The variable reaches the launcher and the node processes through their environment
(local mode, srun). Not a log: no levels, no formatting, nothing imported.
"""

from __future__ import annotations

import os
import time

ENV = "PCOCC_TIMING"


def _write(lines: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return  # timing is a diagnostic: never fail a cluster for it
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)


def process_start() -> float | None:
    """Epoch seconds at which this process started (from /proc, to 10 ms), None if unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def mark(phase: str, *, started: str | None = None) -> None:
    """Note that ``phase`` ends now; with ``started``, also when this process started."""
    if not os.environ.get(ENV):
        return
    now, pid = time.time(), os.getpid()
    lines = ""
    if started is not None:
        begin = process_start()
        if begin is not None:
            lines += f"{begin:.3f} {pid} {started}\n"
    _write(lines + f"{now:.6f} {pid} {phase}\n")
