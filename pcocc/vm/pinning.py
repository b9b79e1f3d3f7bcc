"""Pin the threads of a running QEMU to host CPUs (pcocc 0.7's ``bind-vcpus`` and
``emulator-cores`` template settings).

The CPUs QEMU may use are those of its task (its affinity when it starts: Slurm's cores
of the VM's task, or the whole node without Slurm), in increasing order. ``emulator-cores:
N`` reserves the first N of them for QEMU's own threads (main loop, I/O, virtio workers):
every thread that is not a vCPU is pinned there, and the VM gets N fewer vCPUs than its
task has cores (see :func:`vcpus`). ``bind-vcpus`` pins vCPU i to the i-th CPU after those;
without it the vCPUs float on the CPUs after the reserved ones. QEMU names its vCPU threads
in QMP ``query-cpus-fast``; the others are the rest of ``/proc/PID/task``. Threads QEMU
starts later inherit the affinity of the thread that starts them (the main loop's, so
the emulator CPUs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pcocc.errors import ConfigError, PcoccError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pinning:
    bind_vcpus: bool = False
    emulator_cores: int = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Pinning | None:
        """The pinning a template asks for, or None when it asks for none."""
        pinning = cls(bool(settings.get("bind-vcpus")), int(settings.get("emulator-cores") or 0))
        return pinning if pinning != cls() else None


def vcpus(template: str, cores: int, pinning: Pinning | None) -> int:
    """The vCPUs of a VM whose task has ``cores`` cores.

    :raise ConfigError: the emulator cores leave none for the vCPUs
    """
    reserved = pinning.emulator_cores if pinning else 0
    if cores - reserved < 1:
        raise ConfigError(
            f"template '{template}': emulator-cores {reserved} leaves no core for the vCPUs "
            f"of a VM of {cores} core(s)",
            hint=f"give each VM at least {reserved + 1} cores (-c), or lower emulator-cores",
        )
    return cores - reserved


def plan(cpus: Sequence[int], vcpu_threads: Sequence[int], threads: Sequence[int],
         pinning: Pinning) -> dict[int, set[int]]:
    """Thread id -> the CPUs it may run on (pure: see the module docstring).

    :param cpus: the CPUs QEMU may use
    :param vcpu_threads: thread of each vCPU, by vCPU index
    :param threads: every thread of QEMU
    :raise PcoccError: too few CPUs for the emulator cores and the vCPUs
    """
    cpus = sorted(cpus)
    reserved, rest = cpus[: pinning.emulator_cores], cpus[pinning.emulator_cores:]
    if not rest:
        raise PcoccError(
            f"emulator-cores {pinning.emulator_cores} leaves no CPU for the vCPUs: QEMU may "
            f"use CPUs {','.join(map(str, cpus))} only",
            hint="give each VM more cores (-c), or lower emulator-cores")
    result: dict[int, set[int]] = {}
    if reserved:
        for tid in threads:
            if tid not in vcpu_threads:
                result[tid] = set(reserved)
    for index, tid in enumerate(vcpu_threads):
        result[tid] = {rest[index % len(rest)]} if pinning.bind_vcpus else set(rest)
    return result


def vcpu_thread_ids(qmp: Any) -> list[int]:
    """Thread id of each vCPU, by index, from QMP ``query-cpus-fast``."""
    cpus = qmp.execute("query-cpus-fast")
    return [int(c["thread-id"]) for c in sorted(cpus, key=lambda c: int(c["cpu-index"]))]


def apply(pid: int, qmp: Any, pinning: Pinning) -> dict[int, set[int]]:
    """Pin the threads of QEMU process ``pid`` as ``pinning`` says; returns what was set.

    :raise PcoccError: too few CPUs, or a thread could not be pinned
    """
    cpus = sorted(os.sched_getaffinity(pid))
    threads = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    wanted = plan(cpus, vcpu_thread_ids(qmp), threads, pinning)
    for tid, allowed in wanted.items():
        try:
            os.sched_setaffinity(tid, allowed)
        except ProcessLookupError:
            continue  # a short-lived worker thread that ended meanwhile
        except OSError as err:
            raise PcoccError(f"cannot pin QEMU thread {tid} to CPUs {sorted(allowed)}: "
                             f"{err.strerror}") from err
    log.debug("pinned QEMU %d: %s", pid, wanted)
    return wanted
