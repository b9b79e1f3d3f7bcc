"""The ``vm`` backend: each app in its own small QEMU VM (never chosen by ``auto``)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from pcocc import proc
from pcocc.ctr.runtimes.base import Runtime, register
from pcocc.errors import PcoccError


@register
class VmRuntime(Runtime):
    """Each app in its own small QEMU VM booted from the host's cloud kernel.

    The work is done by :mod:`pcocc.ctr.vmrun` (host side) and :mod:`pcocc.vm.stage1`
    (guest side). ``pcocc pod enter`` is not supported.
    """

    name = "vm"
    binary = "qemu-system-x86_64"
    probe_runs_container = False

    def check_installed(self) -> None:
        """:raise ToolMissing: QEMU or mksquashfs missing
        :raise PcoccError: no cloud kernel or no static busybox"""
        from pcocc.ctr.vmrun import find_static_busybox
        from pcocc.vm.initramfs import find_kernel

        proc.which("qemu-system-x86_64")
        proc.which("mksquashfs")
        find_kernel()
        find_static_busybox()

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check now what the VM cannot do, before the pod starts: writable file volumes,
        and writable directory volumes when virtiofsd cannot share them here.

        :raise UsageError: naming the volume or the environment entry
        :raise ToolMissing: virtiofsd (or newuidmap for a user) is needed and missing
        """
        from pcocc.ctr.vmrun import bind_volumes
        from pcocc.vm import virtiofs
        from pcocc.vm.stage1 import guest_app

        if any(not readonly for _, _, readonly in bind_volumes(spec)):
            virtiofs.find_virtiofsd()
            virtiofs.check_unprivileged()
        guest_app(spec.get("process") or {})
        return spec

    def run_argv(self, bundle: Path, container_id: str) -> list[str]:
        return [sys.executable, "-I", "-m", "pcocc.ctr.vmrun", str(bundle), container_id]

    def kill(self, container_id: str, popen: proc.Popen | None) -> None:
        """SIGTERM first: the host side then stops QEMU and removes its files."""
        if popen is None:
            return
        proc.kill_group(popen, signal.SIGTERM)
        try:
            popen.wait(timeout=10)
        except proc.TimeoutExpired:
            proc.kill_group(popen)

    def exec_argv(self, container_id, argv, *, record, tty=False):
        raise PcoccError(
            "apps of the 'vm' container runtime cannot be entered",
            hint="run the command as the app itself: pcocc run --runtime vm IMAGE -- COMMAND",
        )
