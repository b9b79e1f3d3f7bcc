"""Bind the cluster runtime's :class:`~pcocc.cluster.ports.Batch` port to a
:class:`pcocc.batch.base.BatchManager` (glue; Slurm and the local manager are in pcocc.batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pcocc import proc
from pcocc.cluster.ports import AllocRequest

if TYPE_CHECKING:
    from pcocc.config import Config


class PopenTasks:
    """:class:`~pcocc.cluster.ports.TaskGroup` over the Popen that ``launch_tasks`` returns."""

    def __init__(self, popen: proc.Popen):
        self.popen = popen

    def poll(self) -> int | None:
        """The exit status, 128+N when signal N ended it (as srun and the runner say)."""
        status = self.popen.poll()
        return 128 - status if status is not None and status < 0 else status

    def stop(self, timeout_s: float = 10.0) -> None:
        proc.stop(self.popen, timeout_s=timeout_s)


class BatchAdapter:
    """:class:`~pcocc.cluster.ports.Batch` over a :class:`pcocc.batch.base.BatchManager`."""

    def __init__(self, manager: Any):
        self.manager = manager
        self.name = manager.name

    def _spec(self, request: AllocRequest, env: Mapping[str, str] | None = None) -> Any:
        from pcocc.batch.base import JobSpec

        return JobSpec(
            ntasks=request.ntasks,
            cpus_per_task=request.cpus_per_task,
            one_per_node=request.one_per_node,
            job_name=request.job_name,
            options=tuple(request.extra_args),
            env=dict(env or {}),
            comment=request.comment,
            node_setup=request.node_setup,
        )

    def allocate(
        self, request: AllocRequest, command: Sequence[str], env: Mapping[str, str] | None = None
    ) -> int:
        return self.manager.allocate(self._spec(request, env), list(command))

    def submit(self, request: AllocRequest, script: str) -> str:
        return self.manager.submit(self._spec(request), script)

    def launch_tasks(
        self,
        job_id: str,
        ntasks: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        one_per_node: bool = False,
    ) -> PopenTasks:
        return PopenTasks(
            self.manager.launch_tasks(
                job_id, ntasks, list(argv), dict(env), one_per_node=one_per_node
            )
        )

    def job_id_from_env(self, env: Mapping[str, str]) -> str | None:
        return self.manager.job_id_from_env(env)

    def job_name_from_env(self, env: Mapping[str, str]) -> str:
        return self.manager.job_name_from_env(env)

    def cancel(self, job_id: str) -> None:
        self.manager.cancel(job_id)

    def nodes(self, job_id: str) -> list[str]:
        return self.manager.nodes(job_id)

    def controller_hosts(self) -> list[str]:
        return self.manager.controller_hosts()

    def list_jobs(self, user: str | None, comment: str) -> list[Any] | None:
        return self.manager.list_jobs(user, comment)


def batch_manager(config: Config) -> BatchAdapter:
    from pcocc.batch.base import get_manager

    return BatchAdapter(get_manager(config.batch))


def task_rank(env: Mapping[str, str]) -> int | None:
    from pcocc.batch.base import task_rank as rank_of

    return rank_of(env)
