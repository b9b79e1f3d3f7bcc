"""The narrow interfaces the cluster runtime needs from other packages.

The launcher and the node process are written against these protocols, so that unit tests
can run them with fakes; :mod:`pcocc.kv.connect` binds ``Kv`` to the etcd client,
:mod:`pcocc.cluster.adapters` the others to the batch managers and the QEMU machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Lease(Protocol):
    """A granted etcd lease; keys put with it vanish when it expires or is revoked."""

    id: int

    def check(self) -> None:
        """Raise (ServiceUnavailable, naming etcd) once the lease is known to be lost."""
        ...


class Kv(Protocol):
    """The part of the etcd client the cluster runtime uses. Values are text (JSON)."""

    def put(self, key: str, value: str, lease: Lease | None = None) -> None: ...

    def get(self, key: str) -> str | None: ...

    def get_prefix(self, prefix: str) -> dict[str, str]: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def lease(self, ttl_s: int) -> AbstractContextManager[Lease]:
        """Grant a lease kept alive in the background until the block ends, then revoke it."""
        ...

    def wait_for(
        self,
        prefix: str,
        predicate: Callable[[dict[str, str]], T | None],
        timeout_s: float | None,
        tick_s: float = 0.5,
    ) -> T:
        """Watch ``prefix`` and return the first non-None ``predicate(snapshot)``.

        The predicate sees the whole prefix (key -> value) after every change, and also every
        ``tick_s`` seconds so it can check things etcd does not know (a child process, its
        lease). An etcd outage does not end the wait: it goes on with the last known keys
        (a predicate that checks its lease ends it once the lease is lost).
        :raise pcocc.errors.TimedOut: after ``timeout_s`` seconds.
        """
        ...


class TaskGroup(Protocol):
    """The node processes started by ``launch_tasks`` (srun, or local children)."""

    def poll(self) -> int | None: ...

    def stop(self, timeout_s: float = 10.0) -> None: ...


@dataclass(frozen=True)
class AllocRequest:
    """What a virtual cluster asks of the batch system: one task per VM."""

    ntasks: int
    cpus_per_task: int
    job_name: str = "pcocc"
    extra_args: tuple[str, ...] = ()
    #: each task on a node of its own, allocated exclusively (full-node templates)
    one_per_node: bool = False
    #: the job's comment (``pcocc ps -a`` finds the clusters of other users by it)
    comment: str | None = None
    #: root setup on the nodes by the pcocc Slurm plugin (ethernet networks)
    node_setup: bool = False


class Batch(Protocol):
    """The batch manager (Slurm or local) as the cluster runtime uses it."""

    name: str

    def allocate(self, request: AllocRequest, command: Sequence[str]) -> int: ...

    def submit(self, request: AllocRequest, script: str) -> str: ...

    def launch_tasks(
        self,
        job_id: str,
        ntasks: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        one_per_node: bool = False,
    ) -> TaskGroup: ...

    def job_id_from_env(self, env: Mapping[str, str]) -> str | None: ...

    def cancel(self, job_id: str) -> None: ...


@dataclass
class MachineInfo:
    """What a started VM exposes to the rest of the cluster (published in etcd)."""

    pid: int
    ssh_port: int | None
    qmp_socket: str
    console_socket: str
    console_log: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: guest port -> host port of every listening forward (ssh, public), on the node's address
    forwards: dict[int, int] = field(default_factory=dict)


class VmHandle(Protocol):
    """One QEMU VM, started and stopped by the node process."""

    #: path of the serial console log, known before the VM starts (for error messages)
    console_log: str

    def launch(self) -> MachineInfo:
        """Start QEMU (unless ``start()`` did) and block until the guest answers; raise
        PcoccError otherwise. A handle may also have ``start()``: QEMU starts, nothing waits
        (the node process then does its etcd work while the guest boots)."""
        ...

    def wait(self, timeout_s: float | None) -> int | None:
        """QEMU's exit status, or None if it still runs after ``timeout_s``."""
        ...

    def shutdown(self) -> None:
        """Stop QEMU (gracefully, then by force) and remove what it created."""
        ...
