"""``pcocc run -N/-n``: one pod per task of the allocation, through ``pcocc.batch``.

The run request (images, args, options) is written to a JSON file in the user's state
directory, and the batch manager starts ``pcocc internal ctr-task FILE`` once per task; each
task runs its own pod on its node. The exit status is that of the first task that failed
on its own (:mod:`pcocc.ctr.taskends`), not srun's, which reports the tasks it stopped.
Outside an allocation, ``pcocc run -N/-n`` first allocates (salloc, or the local batch
manager) and runs itself again inside.

Each task's pod is named after its node (``--hostname`` wins): ``hostname`` in the
container prints the Slurm node name.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc import paths
from pcocc.ctr import taskends
from pcocc.ctr.launch import RunOptions, exit_status
from pcocc.ctr.pod import Notify, RunRequest, run_request
from pcocc.errors import UsageError
from pcocc.fsutil import write_atomic
from pcocc.selfcmd import pcocc_argv

if TYPE_CHECKING:
    from pcocc.config import Config

log = logging.getLogger(__name__)

REQUEST_VERSION = 1
#: set in the allocation that ``pcocc run -N/-n`` makes for itself
ALLOCATED_VAR = "PCOCC_RUN_ALLOCATED"


def write_request(request: RunRequest) -> Path:
    """Save a run request where every node can read it (the user's state directory)."""
    d = paths.private_dir(paths.state_dir(create=True) / "requests", what="state directory")
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


def task_argv(request: Path, log_args: Sequence[str] = ()) -> list[str]:
    """argv of one task; ``log_args`` (--debug, -v, -q) as given to this pcocc."""
    return [*pcocc_argv(), *log_args, "internal", "ctr-task", str(request)]


def task_hostname(env: Mapping[str, str] | None = None) -> str:
    """Host name of a task's pod: the node's name, so that ``hostname`` in the container
    tells the nodes apart (Slurm's node name, which differs from the host name when several
    slurmd share a host)."""
    env = os.environ if env is None else env
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def run_task(path: str | Path, config: Config, notify: Notify) -> int:
    """Run, on this node, the pod of one task of the run request saved at ``path``; its
    host name is the node's unless the request names one.

    Records how the task ended (:mod:`pcocc.ctr.taskends`). A signal (srun stopping the
    task because another failed, scancel) ends it quietly with 128+N: the run reports the
    task that failed, not the ones stopped because of it.
    """
    from pcocc.batch.base import task_rank
    from pcocc.signals import Interrupted

    path = Path(path)
    request = read_request(path)
    node = task_hostname()
    if request.options.hostname is None:
        request = replace(request, options=replace(request.options, hostname=node))
    rank = task_rank()

    def record(status: int, signalled: bool) -> None:
        if rank is not None:
            taskends.record_end(path, taskends.TaskEnd(rank, node, status, signalled,
                                                       time.time()))

    from pcocc.ctr.fanout import from_env

    fanout = from_env(shared=config.cache is None or config.cache.shared)
    try:
        status = run_request(request, config, notify, fanout=fanout)
    except Interrupted as stop:
        record(stop.exit_status, True)
        log.info("task %s on %s: %s", rank, node, stop.message)
        return stop.exit_status
    record(status, False)
    return status


def run_tasks(
    request: RunRequest,
    config: Config,
    *,
    nodes: int | None,
    tasks: int | None,
    rerun_argv: Sequence[str] | None = None,
    notify: Notify = lambda message: None,
    log_args: Sequence[str] = (),
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
        popen = manager.launch_tasks(job_id, ntasks, task_argv(saved, log_args),
                                     env=dict(os.environ), nodes=nodes)
        status = exit_status(popen.wait())
        return run_status(status, taskends.read_ends(saved), notify)
    finally:
        saved.unlink(missing_ok=True)
        taskends.remove_ends(saved)


def run_status(launcher_status: int, ends: list[taskends.TaskEnd], notify: Notify) -> int:
    """The exit status of a multi-node run: the first task that failed on its own, named
    in one line; else the launcher's (0, or 128+N when the whole run was signalled)."""
    failed = taskends.first_failure(ends)
    if failed is None:
        return launcher_status
    stopped = sum(1 for e in ends if e.signalled)
    others = f"; the other tasks were stopped ({stopped} reported)" if stopped else ""
    notify(f"task {failed.task} on {failed.node} exited with status {failed.status}{others}")
    return failed.status
