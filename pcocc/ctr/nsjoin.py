"""Joining the namespaces of a running container: the apps of a pod share some of them
(through the spec), and ``pcocc pod enter`` joins all of them (through ``nsenter``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pcocc import proc

#: namespaces the apps of a pod share (the pid and mount namespaces stay per app)
SHARED_NAMESPACES = {"user": "user", "ipc": "ipc", "uts": "uts", "network": "net"}


def join_namespaces(spec: dict[str, Any], paths: Mapping[str, str]) -> dict[str, Any]:
    """``spec`` joining the namespaces in ``paths`` (OCI type -> namespace file)."""
    spec = copy.deepcopy(spec)
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns["type"] in paths:
            ns["path"] = paths[ns["type"]]
    return spec


def nsenter_argv(
    pid: int,
    bundle: Path,
    argv: Sequence[str],
    *,
    userns_pid: int | None = None,
    ids: tuple[int, int] | None = None,
) -> tuple[list[str], dict]:
    """Join the namespaces of ``pid`` (not its cgroup one) with the app's env.

    :param userns_pid: take the user namespace of this process instead of ``pid``'s
    :param ids: (uid, gid) to switch to; None keeps our own (mapped) credentials
    """
    spec = json.loads((bundle / "config.json").read_text())
    env = dict(e.split("=", 1) for e in spec["process"].get("env", []) if "=" in e)
    private = {n["type"] for n in spec.get("linux", {}).get("namespaces", [])}
    # Joining a namespace we already share with the container (the host network) would
    # need privileges over the host's: skip it.
    flags = {"mount": "--mount", "uts": "--uts", "ipc": "--ipc", "pid": "--pid", "network": "--net"}
    user = f"--user=/proc/{userns_pid}/ns/user" if userns_pid else "--user"
    creds = (
        ["--setuid", str(ids[0]), "--setgid", str(ids[1])] if ids else ["--preserve-credentials"]
    )
    nsenter = [
        proc.which("nsenter"),
        "-t",
        str(pid),
        user,
        *(flag for ns, flag in flags.items() if ns in private),
        "--root",
        "--wd",
        *creds,
    ]
    return [*nsenter, *argv], env
