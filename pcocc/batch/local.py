"""No batch system: jobs and their tasks are child processes on this host.

This is the default when batch.yaml selects nothing. A job is a directory under the state
directory (``state-dir`` in batch.yaml, default ``~/.pcocc/local-jobs``) named by its id,
holding ``pid``, ``status`` (exit status, once finished), ``cancelled``, ``script`` and
``output``, so that another pcocc process can query or cancel it.

Tasks are started by a small runner (``python -m pcocc.batch.local --tasks N -- argv``) that
plays srun's part: it gives each task ``PCOCC_TASK_RANK``, ends every task as soon as one
fails, forwards SIGTERM/SIGINT, and exits with the first failing status. A single task
needs none of that: it is started directly.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc import proc
from pcocc.batch.base import JOB_NAME_VAR, BatchManager, JobSpec, register
from pcocc.errors import ConfigError, NotFound
from pcocc.fsutil import write_atomic
from pcocc import daemon

if TYPE_CHECKING:
    from pcocc.config.model import BatchConfig

JOB_ID_VAR = "PCOCC_JOB_ID"

log = logging.getLogger(__name__)


def _warn_options(spec: JobSpec) -> None:
    """Batch options (``pcocc alloc -p debug ...``) mean nothing without a batch system:
    say so rather than drop them unseen. Root setup on the nodes (the Slurm plugin) cannot
    happen at all: refuse before starting anything."""
    if spec.node_setup:
        raise ConfigError("this job's networks need root setup on the nodes by the pcocc "
                          "Slurm plugin, which needs a Slurm batch system (batch.yaml: "
                          "type local has none)",
                          hint="use networks that do not need it, or run pcocc with Slurm")
    if spec.options:
        log.warning("no batch system (batch.yaml: type local): ignoring the batch options %s",
                    " ".join(spec.options))


def _default_state_dir() -> Path:
    return Path(os.environ.get("HOME") or os.path.expanduser("~")) / ".pcocc" / "local-jobs"


@register("local")
class LocalManager(BatchManager):
    """Run virtual clusters on this host only (batch.yaml: ``local: {state-dir: DIR}``)."""

    def __init__(self, state_dir: str | os.PathLike | None = None):
        self.state_dir = Path(state_dir) if state_dir else _default_state_dir()

    @classmethod
    def from_settings(cls, batch: BatchConfig) -> LocalManager:
        return cls(batch.local.state_dir)

    # job records ----------------------------------------------------------------------------
    def _new_job(self) -> tuple[str, Path]:
        """Reserve the next free job id (mkdir makes it atomic between processes)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name) for p in self.state_dir.iterdir() if p.name.isdigit()]
        candidate = max(existing, default=0) + 1
        while True:
            try:
                (self.state_dir / str(candidate)).mkdir()
            except FileExistsError:
                candidate += 1
                continue
            return str(candidate), self.state_dir / str(candidate)

    def _job_dir(self, job_id: str) -> Path:
        path = self.state_dir / str(job_id)
        if not str(job_id).isdigit() or not path.is_dir():
            raise NotFound(
                f"local job {job_id} not found in {self.state_dir}",
                hint=f"list {self.state_dir} for the jobs of this host",
            )
        return path

    def _job_env(self, job_id: str, spec: JobSpec) -> dict[str, str]:
        env = dict(os.environ)
        env.update(spec.env)
        env[JOB_ID_VAR] = job_id
        env[JOB_NAME_VAR] = spec.job_name
        env["PCOCC_JOB_NTASKS"] = str(spec.ntasks)
        env["PCOCC_JOB_CPUS_PER_TASK"] = str(spec.cpus_per_task)
        return env

    # interface ------------------------------------------------------------------------------
    def allocate(self, spec: JobSpec, command: Sequence[str]) -> int:
        _warn_options(spec)
        job_id, job_dir = self._new_job()
        # the command keeps our terminal and process group, like salloc's
        child = proc.spawn(
            command,
            env=self._job_env(job_id, spec),
            stdin=None, stdout=None, stderr=None,
            new_session=False,
        )  # fmt: skip
        write_atomic(job_dir / "pid", f"{child.pid}\n".encode(), mode=0o644)
        try:
            return child.wait()
        except KeyboardInterrupt:
            # The command shares our process group, so it got the same SIGINT and is tearing
            # its cluster down: give it the time to finish, as salloc does, before forcing.
            try:
                child.wait(timeout=60)
            except (proc.TimeoutExpired, KeyboardInterrupt):
                proc.stop(child)
            raise
        except BaseException:
            proc.stop(child)
            raise
        finally:
            write_atomic(job_dir / "status", f"{child.returncode}\n".encode(), mode=0o644)

    def submit(self, spec: JobSpec, script: str) -> str:
        _warn_options(spec)
        job_id, job_dir = self._new_job()
        script_path = job_dir / "script"
        if not script.startswith("#!"):
            script = "#!/bin/sh\n" + script
        write_atomic(script_path, script.encode(), mode=0o755)
        output = spec.output.replace("%j", job_id) if spec.output else str(job_dir / "output")
        if spec.workdir and not os.path.isabs(output):
            output = os.path.join(spec.workdir, output)
        status = job_dir / "status"
        # the wrapper records the exit status atomically, even if the submitter is gone
        wrapper = [
            "/bin/sh", "-c", '"$1"; s=$?; echo $s > "$2.tmp" && mv "$2.tmp" "$2"',
            "pcocc-job", str(script_path), str(status),
        ]  # fmt: skip
        child = proc.spawn(
            wrapper, env=self._job_env(job_id, spec), cwd=spec.workdir, log_path=output
        )
        write_atomic(job_dir / "pid", f"{child.pid}\n".encode(), mode=0o644)
        return job_id

    def launch_tasks(
        self,
        job_id: str,
        ntasks: int,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        one_per_node: bool = False,
        nodes: int | None = None,
    ) -> proc.Popen:
        # one host only: one_per_node and nodes change nothing (full-node clusters here
        # have one VM)
        self._job_dir(job_id)
        task_env = dict(os.environ if env is None else env)
        task_env[JOB_ID_VAR] = str(job_id)
        if ntasks == 1:
            # nothing to coordinate: the task itself, in a session of its own, without the
            # runner's Python start (a tenth of a second before a cluster's VM starts); a
            # signalled task's status is negative, as for any Popen
            task_env.update(PCOCC_TASK_RANK="0", PCOCC_NTASKS="1")
            return proc.spawn(list(argv), env=task_env, stdout=None, stderr=None)
        runner = [sys.executable, "-m", "pcocc.batch.local", "--tasks", str(ntasks), "--", *argv]
        return proc.spawn(runner, env=task_env, stdout=None, stderr=None)

    def job_id_from_env(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        return env.get(JOB_ID_VAR) or None

    def cancel(self, job_id: str) -> None:
        job_dir = self._job_dir(job_id)
        if (job_dir / "status").exists():
            return
        write_atomic(job_dir / "cancelled", b"", mode=0o644)
        pid = daemon.read_pid_file(job_dir / "pid")
        if pid is not None:
            daemon.stop_pids([pid], what=f"local job {job_id}")

    def nodes(self, job_id: str) -> list[str]:
        self._job_dir(job_id)
        return [socket.gethostname()]

    def state(self, job_id: str) -> str:
        job_dir = self._job_dir(job_id)
        if (job_dir / "cancelled").exists():
            return "CANCELLED"
        status = daemon.read_pid_file(job_dir / "status")
        if status is not None:
            return "COMPLETED" if status == 0 else "FAILED"
        pid = daemon.read_pid_file(job_dir / "pid")
        if pid is None:
            return "PENDING"
        if daemon.is_alive(pid):
            return "RUNNING"
        # our own child that already exited: reap it, then the status file is there
        daemon.wait_gone([pid], 0)
        time.sleep(0.05)
        if (job_dir / "status").exists():
            return self.state(job_id)
        return "FAILED"


# the task runner ----------------------------------------------------------------------------
def run_tasks(ntasks: int, argv: Sequence[str]) -> int:
    """Run ``ntasks`` copies of ``argv``; end all when one fails; return the first failure."""
    children: list[proc.Popen] = []

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.returncode is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _start_and_wait(ntasks, argv, children)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_and_wait(ntasks: int, argv: Sequence[str], children: list[proc.Popen]) -> int:
    finished: queue.Queue[proc.Popen] = queue.Queue()
    for rank in range(ntasks):
        env = dict(os.environ, PCOCC_TASK_RANK=str(rank), PCOCC_NTASKS=str(ntasks))
        child = proc.spawn(argv, env=env, stdin=None, stdout=None, stderr=None, new_session=False)
        children.append(child)
        # one waiter per task: wait for exactly our children, never for any child
        threading.Thread(target=lambda c=child: (c.wait(), finished.put(c)), daemon=True).start()
    first_failure = 0
    for _ in range(ntasks):
        child = _get(finished)
        status = child.returncode if child.returncode >= 0 else 128 - child.returncode
        if status != 0 and first_failure == 0:
            first_failure = status
            for other in children:
                if other.returncode is None:
                    other.terminate()
    return first_failure


def _get(finished: queue.Queue) -> proc.Popen:
    # a timeout keeps the main thread responsive to signals while it waits
    while True:
        try:
            return finished.get(timeout=1.0)
        except queue.Empty:
            continue


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[0] != "--tasks" or args[2] != "--" or not args[1].isdigit():
        print("usage: python -m pcocc.batch.local --tasks N -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return run_tasks(int(args[1]), args[3:])


if __name__ == "__main__":
    sys.exit(main())
