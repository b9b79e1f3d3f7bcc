"""``pcocc run -N/-n --detach``: one pod per task of the allocation, in the background, seen
and stopped as one multi-node pod.

``pcocc run`` starts the detached supervisor (:mod:`pcocc.ctr.detach`) with the task counts;
the supervisor records the multi-node pod (its *group* record: job, nodes, members) and
starts the tasks through the batch manager (srun) with the tasks' standard output on a pipe.
Each task (``pcocc internal ctr-task --group UUID``) runs its pod (a *member*, whose record
names the group and the node) with its output only in the pod's logs, and reports on its
standard output, one JSON line as the single-node supervisor does, plus its ``node``. The
supervisor reports ``started`` with the group's UUID once every task has, or the first
error (then stops the tasks), and stays to hold the step until every member has ended.

``pcocc pod stop`` of a multi-node pod runs ``pcocc internal ctr-group-stop`` on each of its
nodes, in the same job (``srun --overlap``), which stops the members of that node. The
records live in the user's state directory, which every node reads (as the run requests of
:mod:`pcocc.ctr.multinode` do), so that ``pod list`` and ``pod logs`` read every member.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pcocc import proc
from pcocc.ctr.detach import Reporter, parse_report, reporting
from pcocc.ctr.pods import AppRecord, PodRecord, PodStore, process_start_ticks
from pcocc.errors import PcoccError, TimedOut, UsageError

if TYPE_CHECKING:
    from pcocc.batch.base import BatchManager
    from pcocc.config import Config

#: how long the tasks get to end once asked to (a failed start, a stop)
STOP_WAIT_S = 30.0


def allocation(config: Config) -> tuple[BatchManager, str]:
    """The batch manager and the job this process runs in.

    :raise UsageError: outside an allocation (a detached pod cannot allocate for itself:
        the allocation would end with the command)
    """
    from pcocc.batch.base import get_manager

    manager = get_manager(config.batch)
    job_id = manager.job_id_from_env()
    if job_id is None:
        raise UsageError("pcocc run -N/-n --detach must run inside an allocation",
                         hint="start one first, e.g. 'salloc -N 4', then run it there")
    return manager, job_id


# -- the group's supervisor ----------------------------------------------------------------
def supervise_group(
    request_path: str, report_fd: int, config: Config, *, nodes: int | None,
    tasks: int | None,
) -> int:
    """The detached supervisor of a multi-node pod (``pcocc internal ctr-detached -N``)."""
    return reporting(report_fd, lambda reporter: _supervise(
        request_path, reporter, config, nodes=nodes, tasks=tasks))


def _supervise(
    request_path: str, reporter: Reporter, config: Config, *, nodes: int | None,
    tasks: int | None,
) -> int:
    """Start one member pod per task, report the group started (or the first error), then
    hold the tasks until they all end; returns the first failed task's status."""
    from pcocc.ctr.launch import app_names
    from pcocc.ctr.multinode import read_request

    try:
        manager, job_id = allocation(config)
        request = read_request(request_path)
    except BaseException:
        Path(request_path).unlink(missing_ok=True)
        raise
    ntasks = tasks or nodes or 1
    names = app_names([image for image, _ in request.apps])
    store = PodStore()
    group = store.create([AppRecord(n, image, list(args))
                          for n, (image, args) in zip(names, request.apps)],
                         job_id=job_id, detached=True)
    group.pid, group.pid_start = os.getpid(), process_start_ticks(os.getpid())
    store.save(group)
    log_path = store.pod_dir(group.uuid) / "launcher.log"
    r, w = os.pipe()
    try:
        with _stdio(w, log_path):
            launcher = manager.launch_tasks(job_id, ntasks,
                                            task_argv(request_path, group.uuid), nodes=nodes)
    finally:
        os.close(w)
    try:
        with os.fdopen(r, "rb") as reports:
            _collect_starts(group, store, reporter, reports, ntasks, launcher, log_path)
            Path(request_path).unlink(missing_ok=True)  # every task has read it
            for _ in reports:  # the tasks say nothing more: hold the step until it ends
                pass
        status = launcher.wait()
    finally:
        Path(request_path).unlink(missing_ok=True)
        _end(store, group)
    from pcocc.ctr.launch import exit_status

    return next((a.exit_status for a in group.apps if a.exit_status), 0) or exit_status(status)


@contextlib.contextmanager
def _stdio(stdout_fd: int, log_path: Path) -> Iterator[None]:
    """Our standard output on ``stdout_fd`` and standard error into ``log_path`` for the
    programs started meanwhile (the batch manager's launcher inherits them)."""
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.dup2(stdout_fd, 1)
        os.dup2(log_fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)


def _collect_starts(
    group: PodRecord, store: PodStore, reporter: Reporter, reports, ntasks: int,
    launcher: proc.Popen, log_path: Path,
) -> None:
    """Read the tasks' reports until all have started; then record and report the group.
    On the first error (or tasks that end without reporting), report it and stop them."""
    started: list[tuple[str, str]] = []
    try:
        for line in reports:
            msg = parse_report(line)
            node = str(msg.get("node") or "?")
            if "say" in msg:
                reporter.say(f"{node}: {msg['say']}")
            elif "started" in msg:
                started.append((node, str(msg["started"])))
                if len(started) == ntasks:
                    break
            elif "error" in msg:
                err = PcoccError(f"on node {node}: {msg['error']}", hint=msg.get("hint"))
                err.exit_status = int(msg.get("status") or 1)
                raise err
        else:
            said = _last_line(log_path)
            raise PcoccError(
                f"the tasks of pod {group.short_id} ended before their apps started"
                + (f": {said}" if said else ""), hint=f"see {log_path}")
        group.nodes = [n for n, _ in started]
        group.members = [u for _, u in started]
        group.state, group.started = "running", time.time()
        store.save(group)
        reporter.started(group)
    except BaseException as err:
        if not reporter.done:
            reporter.error(err if isinstance(err, PcoccError)
                           else PcoccError(f"the pod's supervisor failed: {err!r}"))
        _stop_launcher(launcher)
        raise


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _stop_launcher(launcher: proc.Popen) -> None:
    """Stop every task: the launcher (srun) passes SIGTERM on to them."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)
    try:
        launcher.wait(STOP_WAIT_S)
    except proc.TimeoutExpired:
        launcher.kill()
        launcher.wait()


def _end(store: PodStore, group: PodRecord) -> None:
    """Record the group exited, with each app's first non-zero status among the members."""
    for i, app in enumerate(group.apps):
        statuses = []
        for uuid in group.members:
            try:
                member = store.load(uuid)
            except PcoccError:
                continue
            if i < len(member.apps) and member.apps[i].exit_status is not None:
                statuses.append(member.apps[i].exit_status)
        app.exit_status = next((s for s in statuses if s), 0 if statuses else None)
    group.state, group.exited = "exited", time.time()
    store.save(group)


# -- a task: one member ----------------------------------------------------------------------
def task_argv(request: str | Path, group: str) -> list[str]:
    from pcocc.selfcmd import pcocc_argv

    return [*pcocc_argv(), "internal", "ctr-task", "--group", group, str(request)]


class TaskReporter(Reporter):
    """A task's reports, each naming its node; ``started`` first marks the member's record
    as part of the group."""

    def __init__(self, fd: int, node: str, group: str):
        super().__init__(fd)
        self.node, self.group = node, group

    def _send(self, msg: dict) -> bool:
        return super()._send({**msg, "node": self.node})

    def started(self, rec: PodRecord) -> None:
        rec.group, rec.task_node = self.group, self.node
        PodStore().save(rec)
        super().started(rec)


def run_member(path: str | Path, group: str, config: Config) -> int:
    """Run this task's member of the multi-node pod ``group``: reports on our standard
    output (the launcher's pipe); the apps' output goes only to their logs."""
    from pcocc.ctr.multinode import read_request, task_hostname
    from pcocc.ctr.pod import run_request

    report_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.close(null)
    node = task_hostname()
    reporter = TaskReporter(report_fd, node, group)
    try:
        request = read_request(path)
        opts = replace(request.options, detach=True,
                       hostname=request.options.hostname or node)
        return run_request(replace(request, options=opts), config, reporter.say,
                           on_started=reporter.started)
    except PcoccError as err:
        if not reporter.done:
            reporter.error(err)
        return err.exit_status


# -- stop ------------------------------------------------------------------------------------
def stop_group(
    store: PodStore, group: PodRecord, config: Config, *, timeout_s: float, force: bool
) -> PodRecord:
    """Stop every member of ``group`` on its node; returns the group's ended record."""
    from pcocc.batch.base import get_manager
    from pcocc.selfcmd import pcocc_argv

    argv = [*pcocc_argv(), "internal", "ctr-group-stop", "--timeout", f"{timeout_s:g}",
            *(["--force"] if force else []), group.uuid]
    nodes = list(dict.fromkeys(group.nodes))
    status = get_manager(config.batch).run_on_nodes(group.job_id, nodes, argv).wait()
    if status != 0:
        raise PcoccError(f"could not stop pod {group.uuid} on every node "
                         f"(status {status} from {', '.join(nodes)})")
    return store.wait(store.load(group.uuid), STOP_WAIT_S)


def stop_members(
    store: PodStore, group: str, node: str, *, timeout_s: float, force: bool
) -> list[PodRecord]:
    """Stop the running members of ``group`` on ``node`` together: SIGTERM to all, up to
    ``timeout_s`` for them to end, then SIGKILL (``force``: at once)."""
    from pcocc.ctr.podctl import KILL_WAIT_S, signal_apps

    running = found = [r for r in store.list()
                       if r.group == group and r.task_node == node and r.state == "running"]
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, KILL_WAIT_S)):
        if force and sig == signal.SIGTERM:
            continue
        for rec in running:
            signal_apps(rec, sig)
        deadline = time.monotonic() + wait_s
        left = []
        for rec in running:
            try:
                store.wait(rec, max(0.0, deadline - time.monotonic()))
            except TimedOut:
                left.append(store.load(rec.uuid))
        running = left
    if running:
        raise PcoccError(f"pods {', '.join(r.uuid for r in running)} still run after SIGKILL")
    return found


def members(store: PodStore, group: PodRecord) -> list[tuple[str, PodRecord | None]]:
    """(node, member record or None when unreadable) of each task of ``group``."""
    out: list[tuple[str, PodRecord | None]] = []
    for node, uuid in zip(group.nodes, group.members):
        try:
            out.append((node, store.load(uuid)))
        except PcoccError:
            out.append((node, None))
    return out


def member_logs(
    store: PodStore, group: PodRecord, app_name: str | None
) -> dict[str, Path]:
    """Label (``NODE``, or ``NODE/APP`` with several apps) -> log file of every app of every
    readable member of ``group`` (``app_name``: of that app only)."""
    from pcocc.ctr.attach import pick_app

    names = [pick_app(group, app_name).name] if app_name else [a.name for a in group.apps]
    logs = {}
    for i, (node, member) in enumerate(members(store, group)):
        node = node if group.nodes.count(node) == 1 else f"{node}#{i}"  # -n > -N
        for name in names:
            if member is not None:
                logs[f"{node}/{name}" if len(names) > 1 else node] = store.log_path(
                    member.uuid, name)
    return logs


def group_logs(store: PodStore, group: PodRecord, app_name: str | None) -> bytes:
    """The logs of every member of ``group``, each line prefixed with ``NODE:`` (and
    ``NODE/APP:`` when several apps are shown), node after node."""
    from pcocc.ctr.attach import pick_app, read_logs

    several = app_name is None and len(group.apps) > 1
    if app_name is not None:
        pick_app(group, app_name)  # :raise UsageError: no such app
    out = []
    for node, member in members(store, group):
        if member is None:
            out.append(f"{node}: (the pod's record is not readable here)\n".encode())
            continue
        for app, data in read_logs(store, member, app_name):
            prefix = (f"{node}/{app}: " if several else f"{node}: ").encode()
            out += [prefix + line for line in data.splitlines(keepends=True)]
            if out and not out[-1].endswith(b"\n"):
                out[-1] += b"\n"
    return b"".join(out)


def remove_pod(store: PodStore, rec: PodRecord) -> None:
    """Remove an exited pod; a multi-node pod's members go first (those still readable).

    :raise PcoccError: the pod (or a member) still runs; nothing is removed then
    """
    from pcocc.ctr.pods import cleanup_containers

    found = [m for _, m in members(store, rec) if m is not None]
    for pod in [*found, rec]:
        if pod.state == "running" or (pod.state == "prepared" and pod.is_alive()):
            raise PcoccError(f"pod {pod.uuid} is {pod.state}",
                             hint="stop it first ('pcocc pod stop')")
    for pod in [*found, rec]:
        cleanup_containers(pod)
        store.remove(pod)
