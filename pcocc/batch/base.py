"""The batch manager interface, and the registry that finds an implementation by name.

``batch.yaml`` selects one (``type: slurm`` or ``type: local``; local is the default when
the file says nothing). A batch manager allocates resources for a virtual cluster, runs
commands inside the allocation and answers questions about jobs. Job ids are strings.
"""

from __future__ import annotations

import abc
import difflib
import importlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pcocc.errors import ConfigError, TimedOut, UsageError

if TYPE_CHECKING:
    from pcocc import proc
    from pcocc.config.model import BatchConfig

#: the job's name, in the environment of a job of the local batch manager
JOB_NAME_VAR = "PCOCC_JOB_NAME"

#: job states reported by ``state``; a finished job is in one of FINAL_STATES
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
     "BOOT_FAIL", "DEADLINE"}
)  # fmt: skip


@dataclass(frozen=True)
class JobSpec:
    """What to allocate: ``ntasks`` tasks (one per VM/container) of ``cpus_per_task`` CPUs.

    ``options`` are passed as they are to the batch system (e.g. ``-p debug -t 10``);
    ``output`` and ``workdir`` apply to submitted jobs. ``one_per_node``: each task on a
    node of its own, allocated exclusively (the task may use all of it).
    """

    ntasks: int
    cpus_per_task: int = 1
    nodes: int | None = None
    one_per_node: bool = False
    job_name: str = "pcocc"
    options: Sequence[str] = ()
    output: str | None = None
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    #: the job's comment, which other users see (``squeue``); None: none
    comment: str | None = None
    #: the job needs root setup on its nodes (the pcocc Slurm plugin, slurm-plugin/)
    node_setup: bool = False

    def __post_init__(self) -> None:
        for name in ("ntasks", "cpus_per_task"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(
                    f"{name.replace('_', '-')} must be a positive integer, not {value!r}"
                )
        if self.nodes is not None and (not isinstance(self.nodes, int) or self.nodes < 1):
            raise UsageError(f"nodes must be a positive integer, not {self.nodes!r}")
        if isinstance(self.options, str):
            raise TypeError("JobSpec.options is a list of arguments, not a string")
        object.__setattr__(self, "options", tuple(self.options))


@dataclass(frozen=True)
class JobInfo:
    """A job as the batch system shows it to anyone (``squeue``): what ``pcocc ps -a`` lists
    of other users' clusters."""

    job_id: str
    user: str
    name: str
    state: str
    nodes: str
    elapsed: str
    partition: str = ""
    time_limit: str = ""


class BatchManager(abc.ABC):
    """Allocate, submit, launch tasks, cancel; one implementation per batch system."""

    #: registry name, set by ``register``
    name: str = ""

    @abc.abstractmethod
    def allocate(self, spec: JobSpec, command: Sequence[str]) -> int:
        """Run ``command`` interactively inside a new allocation; return its exit status."""

    @abc.abstractmethod
    def submit(self, spec: JobSpec, script: str) -> str:
        """Submit ``script`` (text, with or without ``#!``) as a batch job; return its id."""

    @abc.abstractmethod
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
        """Start ``ntasks`` copies of ``argv`` in the job; the Popen ends when all have.

        Each task finds its rank with ``task_rank()``. ``env`` replaces the environment
        (None: inherit ours). ``one_per_node``: one task per node, with all of the job's
        resources on that node (a job allocated with ``JobSpec.one_per_node``). ``nodes``:
        on that many nodes of the job (None: as many as the tasks need, at most ``ntasks``).
        """

    def run_on_nodes(
        self, job_id: str, nodes: Sequence[str], argv: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> proc.Popen:
        """Run ``argv`` once on each of ``nodes`` of the job, beside the job's other steps
        (a running multi-node pod holds its CPUs). One host (the default): once here."""
        return self.launch_tasks(job_id, 1, argv, env)

    @abc.abstractmethod
    def job_id_from_env(self, env: Mapping[str, str] | None = None) -> str | None:
        """The id of the job this process runs in, or None outside a job."""

    def job_name_from_env(self, env: Mapping[str, str] | None = None) -> str:
        """The name of the job this process runs in (``JobSpec.job_name``, or what the
        user's batch options made it), or "" outside a job."""
        env = os.environ if env is None else env
        return env.get(JOB_NAME_VAR, "")

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Cancel a job (pending or running); cancelling a finished job does nothing."""

    @abc.abstractmethod
    def nodes(self, job_id: str) -> list[str]:
        """Host names of the job's nodes, in order."""

    def list_jobs(self, user: str | None, comment: str) -> list[JobInfo] | None:
        """The jobs of ``user`` (None: of every user, as far as the batch system shows
        them) whose comment is ``comment``; None when the batch system cannot tell (no
        batch system: other users' jobs are out of sight)."""
        return None

    def controller_hosts(self) -> list[str]:
        """Hosts (names or addresses) of the batch system's controller, which every node of
        a job reaches; empty when there is none (local mode)."""
        return []

    @abc.abstractmethod
    def state(self, job_id: str) -> str:
        """PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ... (see FINAL_STATES)."""

    def wait(self, job_id: str, timeout_s: float | None = None) -> str:
        """Wait until the job is in a final state and return it.

        :raise TimedOut: still not finished after ``timeout_s``
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.1
        while True:
            state = self.state(job_id)
            if state in FINAL_STATES:
                return state
            if deadline is not None and time.monotonic() >= deadline:
                raise TimedOut(
                    f"job {job_id} is still {state} after {timeout_s:g} s",
                    hint=f"cancel it with 'scancel {job_id}' or wait longer",
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)


def task_rank(env: Mapping[str, str] | None = None) -> int | None:
    """The rank of the task this process is, under any batch manager (None outside)."""
    env = os.environ if env is None else env
    for var in ("PCOCC_TASK_RANK", "SLURM_PROCID"):
        if env.get(var, "").isdigit():
            return int(env[var])
    return None


# registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, type[BatchManager]] = {}
_BUILTIN_MODULES = ("pcocc.batch.local", "pcocc.batch.slurm")


def register(name: str) -> Callable[[type[BatchManager]], type[BatchManager]]:
    """Class decorator: make a BatchManager available as ``type: <name>`` in batch.yaml."""

    def decorate(cls: type[BatchManager]) -> type[BatchManager]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def known_types() -> list[str]:
    """Names of the registered batch managers (importing the built-in ones first)."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return sorted(_REGISTRY)


def get_manager(batch_config: BatchConfig | None = None) -> BatchManager:
    """The batch manager that ``batch.yaml`` (``Config.batch``) selects.

    :raise ConfigError: a ``type`` no batch manager registered
    """
    if batch_config is None:
        from pcocc.config.model import BatchConfig

        batch_config = BatchConfig()
    name = batch_config.type
    names = known_types()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(names)}"
        raise ConfigError(f"batch.yaml: type: unknown batch manager {name!r}", hint=hint)
    return _REGISTRY[name].from_settings(batch_config)  # type: ignore[attr-defined]
