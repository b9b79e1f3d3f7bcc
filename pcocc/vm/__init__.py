"""QEMU virtual machines: command line, accelerator choice, QMP, guest agent, seed, lifetime.

The names below load their module on first use: the commands that only need a submodule
(``pcocc alloc`` and the launcher need ``pcocc.vm.pinning``) do not pay for QMP's asyncio and
the seed's yaml on their way to the first VM.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    "Machine": "pcocc.vm.machine",
    "VmBootError": "pcocc.vm.machine",
    "Drive": "pcocc.vm.qemu",
    "VmSpec": "pcocc.vm.qemu",
    "build_argv": "pcocc.vm.qemu",
    "HostKey": "pcocc.vm.seed",
    "SeedSpec": "pcocc.vm.seed",
}

__all__ = ["Drive", "HostKey", "Machine", "SeedSpec", "VmBootError", "VmSpec", "build_argv"]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'pcocc.vm' has no attribute {name!r}")


if TYPE_CHECKING:
    from pcocc.vm.machine import Machine, VmBootError
    from pcocc.vm.qemu import Drive, VmSpec, build_argv
    from pcocc.vm.seed import HostKey, SeedSpec
