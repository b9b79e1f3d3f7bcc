"""The fallback backend when no OCI runtime works: util-linux ``unshare`` runs
:mod:`pcocc.ctr.nsinit`, which sets the container up from the bundle and starts the app."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pcocc import proc
from pcocc.ctr.nsjoin import nsenter_argv
from pcocc.ctr.runtimes.base import Runtime, register
from pcocc.errors import PcoccError

NSINIT = Path(__file__).parent.parent / "nsinit.py"


@register
class Unshare(Runtime):
    """util-linux ``unshare`` + :mod:`pcocc.ctr.nsinit`: no seccomp, no capability bounds."""

    name = "unshare"
    binary = "unshare"

    def supports_root_layer(self) -> bool:
        return True  # nsinit mounts it

    def run_argv(self, bundle: Path, container_id: str) -> list[str]:
        spec = json.loads((bundle / "config.json").read_text())
        ns_types = {n["type"] for n in spec.get("linux", {}).get("namespaces", [])}
        argv = [
            proc.which("unshare"),
            "--user",
            "--map-root-user",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--fork",
            "--kill-child",
        ]
        if "network" in ns_types:
            argv.append("--net")
        return [*argv, "--", sys.executable, "-I", "-S", str(NSINIT), str(bundle / "config.json")]

    def exec_context(self, app_pid: int | None) -> dict[str, Any]:
        """The pid of ``unshare`` (whose user namespace to join) and of the container's init."""
        if not app_pid:
            return {}
        return {"init_pid": self.init_pid(app_pid), "runtime_pid": app_pid}

    def exec_argv(self, container_id, argv, *, record, tty=False):
        pid = record.get("init_pid")
        if not pid:
            raise PcoccError(f"container {container_id} has no known process to enter")
        # The namespaces belong to the user namespace unshare made (where we are root); the
        # app may sit in a nested one for its uid, which nsenter cannot join on top. So the
        # command runs as root of the container (the caller on the host).
        return nsenter_argv(pid, Path(record["bundle"]), argv, userns_pid=record.get("runtime_pid"))

    @staticmethod
    def init_pid(unshare_pid: int) -> int | None:
        """The container's first process: the child that ``unshare --fork`` started."""
        try:
            kids = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None
