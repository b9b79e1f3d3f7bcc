"""``pcocc run -N/-n``: one pod per task of the allocation, through ``pcocc.batch``.

The run request (images, args, options) is written to a JSON file in the user's state
directory, and the batch manager starts ``pcocc internal ctr-task FILE`` once per task; each
task runs its own pod on its node. The exit status is the launcher's (srun reports the
first failing task's status). Outside an allocation, ``pcocc run -N/-n`` first allocates
(salloc, or the local batch manager) and runs itself again inside.

Each task's pod is named after its node (``--hostname`` wins): ``hostname`` in the
container prints the Slurm node name.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc.ctr.launch import RunOptions, exit_status
from pcocc.ctr.pod import Notify, RunRequest, run_request
from pcocc.ctr.pods import pods_dir
from pcocc.errors import UsageError
from pcocc.fsutil import write_atomic

if TYPE_CHECKING:
    from pcocc.config import Config

REQUEST_VERSION = 1
#: set in the allocation that ``pcocc run -N/-n`` makes for itself
ALLOCATED_VAR = "PCOCC_RUN_ALLOCATED"


def write_request(request: RunRequest) -> Path:
    """Save a run request where every node can read it (the user's state directory)."""
    d = pods_dir().parent / "requests"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / f"{uuidlib.uuid4()}.json"
    data = {
        "version": REQUEST_VERSION,
        "apps": [list(a) for a in request.apps],
        "options": asdict(request.options),
    }
    write_atomic(path, json.dumps(data), mode=0o600)
    return path


def read_request(path: str | Path) -> RunRequest:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read the run request {path}: {err}") from err
    if data.get("version") != REQUEST_VERSION:
        raise UsageError(f"{path}: not a run request of version {REQUEST_VERSION}")
    options: dict[str, Any] = data["options"]
    return RunRequest([(a[0], list(a[1])) for a in data["apps"]], RunOptions(**options))


def pcocc_argv() -> list[str]:
    """How to start this pcocc again (the console script of this environment)."""
    exe = Path(sys.executable).parent / "pcocc"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pcocc.cli.main"]


def task_argv(request: Path) -> list[str]:
    return [*pcocc_argv(), "internal", "ctr-task", str(request)]


def task_hostname(env: Mapping[str, str] | None = None) -> str:
    """Host name of a task's pod: the node's name, so that ``hostname`` in the container
    tells the nodes apart (Slurm's node name, which differs from the host name when several
    slurmd share a host)."""
    env = os.environ if env is None else env
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def run_task(path: str | Path, config: Config, notify: Notify) -> int:
    """Run, on this node, the pod of one task of the run request saved at ``path``; its
    host name is the node's unless the request names one."""
    request = read_request(path)
    if request.options.hostname is None:
        request = replace(request, options=replace(request.options, hostname=task_hostname()))
    return run_request(request, config, notify)


def run_tasks(
    request: RunRequest,
    config: Config,
    *,
    nodes: int | None,
    tasks: int | None,
    rerun_argv: Sequence[str] | None = None,
) -> int:
    """Run one pod per task in the current allocation; returns the launcher's status.

    Outside an allocation, allocate ``nodes`` nodes and ``tasks`` tasks through the batch
    manager (salloc, or the local manager) and run ``rerun_argv`` (this same ``pcocc run``)
    inside it.
    """
    from pcocc.batch.base import get_manager

    manager = get_manager(config.batch)
    job_id = manager.job_id_from_env()
    if request.options.interactive:
        raise UsageError("--interactive cannot be combined with -N/-n")
    ntasks = tasks or nodes or 1
    if nodes is not None and nodes > ntasks:
        raise UsageError(f"-N {nodes} needs at least as many tasks (-n {ntasks})")
    if job_id is None:
        if not rerun_argv or os.environ.get(ALLOCATED_VAR):
            # (the second case: we allocated, yet see no job: never allocate again)
            raise UsageError(
                "pcocc run -N/-n must run inside an allocation",
                hint="start one first, e.g. 'salloc -N 2' then 'pcocc run -N 2 ...'",
            )
        from pcocc.batch.base import JobSpec

        spec = JobSpec(ntasks=ntasks, nodes=nodes, job_name="pcocc-run", env={ALLOCATED_VAR: "1"})
        return exit_status(manager.allocate(spec, list(rerun_argv)))
    saved = write_request(request)
    try:
        popen = manager.launch_tasks(job_id, ntasks, task_argv(saved), env=dict(os.environ))
        return exit_status(popen.wait())
    finally:
        saved.unlink(missing_ok=True)
