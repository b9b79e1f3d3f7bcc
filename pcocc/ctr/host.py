"""Facts about this host that the container runtimes depend on: which boot this is, whether
we run rootless, and how the cgroup hierarchies are mounted."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def is_rootless() -> bool:
    return os.geteuid() != 0


def cgroup_layout(mountinfo: str | None = None) -> str:
    """``unified``, ``hybrid`` (v1 + v2 at .../unified), ``legacy`` or ``none``."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return "none"
    types: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) >= 5:
            types[fields[4]] = right.split()[0]
    root = types.get(CGROUP_ROOT)
    if root == "cgroup2":
        return "unified"
    if root is None:
        return "none"
    if types.get(f"{CGROUP_ROOT}/unified") == "cgroup2":
        return "hybrid"
    return "legacy"
