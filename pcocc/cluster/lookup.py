"""Find the user's running clusters in etcd, for ``ps``, ``ssh``, ``console`` and friends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pcocc import fields
from pcocc.cluster.ports import Kv
from pcocc.cluster.record import ClusterRecord
from pcocc.cluster.vmstate import RUNNING, VmRecord, parse_forward
from pcocc.errors import Corrupt, NotFound, UsageError
from pcocc.kv import keys

log = logging.getLogger(__name__)

JOB_VARS = ("PCOCC_JOB_ID", "SLURM_JOB_ID")


@dataclass
class ClusterView:
    """One cluster as etcd shows it: the launcher's record, VM states, forwarded ports."""

    batchid: str
    record: ClusterRecord
    vms: dict[int, VmRecord] = field(default_factory=dict)
    #: (rank, guest port) -> (host, port) where it is forwarded
    rnat: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)
    #: rank -> why its state record was refused
    refused: dict[int, Corrupt] = field(default_factory=dict)
    kv: Kv | None = None

    @property
    def size(self) -> int:
        return self.record.definition.size

    @property
    def hosts(self) -> list[str]:
        """Where the VMs run: node names (as the batch system names them) or host names."""
        return sorted({rec.place for rec in self.vms.values()})

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.record.definition.created)

    def running_count(self) -> int:
        return sum(1 for rec in self.vms.values() if rec.status == RUNNING)

    def vm(self, name: str) -> VmRecord:
        """The state of ``vmN`` (or ``N``); NotFound with the valid names otherwise."""
        rank = parse_vm_name(name)
        self.record.definition.vm(rank)  # NotFound when out of range
        rec = self.vms.get(rank)
        if rec is None and rank in self.refused:
            raise self.refused[rank]
        if rec is None:
            raise NotFound(
                f"vm{rank} of cluster {self.batchid} is not running",
                hint=f"the cluster is {self.record.state.value}; see 'pcocc ps'",
            )
        return rec

    def to_json(self) -> dict:
        return {
            "id": self.batchid,
            "name": self.record.name,
            "state": self.record.state.value,
            "vms": self.size,
            "running": self.running_count(),
            "nodes": self.hosts,
            "age_s": round(self.age_s, 1),
            "spec": self.record.definition.spec,
            "batch": self.record.batch,
            "launcher_host": self.record.host,
            "error": self.record.error,
        }


def parse_vm_name(name: str) -> int:
    text = name[2:] if name.startswith("vm") else name
    if not text.isdigit():
        raise UsageError(f"'{name}' is not a VM name", hint="VMs are named vm0, vm1, ...")
    return int(text)


def _split_cluster_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(batchid, rest) of a key under ``prefix`` (:func:`keys.clusters_prefix`), or None."""
    if not key.startswith(prefix):
        return None
    batchid, _, rest = key[len(prefix) :].partition("/")
    return (batchid, rest) if batchid else None


def clusters_of(kv: Kv, user: str) -> list[ClusterView]:
    """Every cluster of ``user`` in this etcd, by batch id.

    Every record goes through its strict parser: a cluster whose record is refused is left
    out (with a warning naming the key and the field); a refused VM record is kept as its
    error, which :meth:`ClusterView.vm` raises; a refused forwarded port is left out.
    """
    prefix = keys.clusters_prefix(user)
    snapshot = kv.get_prefix(prefix)
    parts: dict[str, list[tuple[str, str, str]]] = {}
    for key, value in snapshot.items():
        parsed = _split_cluster_key(prefix, key)
        if parsed is None:
            continue
        batchid, rest = parsed
        try:
            fields.job_id(batchid, "batch id")
        except fields.BadField as err:
            log.warning("ignoring etcd key %r: %s", key[:200], err)
            continue
        parts.setdefault(batchid, []).append((rest, key, value))
    views: dict[str, ClusterView] = {}
    for batchid, entries in parts.items():
        defs = [(k, v) for rest, k, v in entries if rest == "definition"]
        if not defs:
            continue  # a cluster being torn down: its definition goes first
        try:
            record = ClusterRecord.from_json(defs[0][1], key=defs[0][0], batchid=batchid)
        except Corrupt as err:
            log.warning("cluster %s: %s", batchid, err)
            continue
        view = ClusterView(batchid, record, kv=kv)
        for rest, key, value in entries:
            segs = rest.split("/")
            if len(segs) == 3 and segs[0] == "vms" and segs[2] == "state" and _is_number(segs[1]):
                rank = int(segs[1])
                try:
                    view.vms[rank] = VmRecord.from_json(value, key=key, rank=rank)
                except Corrupt as err:
                    log.debug("cluster %s: %s", batchid, err)
                    view.refused[rank] = err
            elif len(segs) == 3 and segs[0] == "rnat" and _is_number(segs[1]) \
                    and _is_number(segs[2]):
                try:
                    view.rnat[(int(segs[1]), int(segs[2]))] = parse_forward(value, key)
                except Corrupt as err:
                    log.warning("cluster %s: %s", batchid, err)
        views[batchid] = view
    return [views[b] for b in sorted(views, key=_batchid_order)]


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 6


def _batchid_order(batchid: str) -> tuple[int, str]:
    return (int(batchid), "") if batchid.isdigit() else (1 << 62, batchid)


def all_clusters(kvs: Sequence[Kv], user: str) -> list[ClusterView]:
    found: list[ClusterView] = []
    for kv in kvs:
        found += clusters_of(kv, user)
    return found


@dataclass(frozen=True)
class ClusterSelection:
    """How the user named the cluster a command acts on: ``-j JOBID``, ``-J NAME``,
    ``--user USER`` (None: not given)."""

    job_id: str | None = None
    job_name: str | None = None
    user: str | None = None


def select_cluster(
    clusters: Sequence[ClusterView],
    job_id: str | None,
    env: Mapping[str, str],
    *,
    job_name: str | None = None,
) -> ClusterView:
    """The cluster a user command acts on.

    ``-j JOBID`` and/or ``-J NAME`` (the job name) first, then ``PCOCC_JOB_ID``/
    ``SLURM_JOB_ID`` (when a cluster runs in that job), else the only cluster of the user.

    :raise NotFound: no such cluster, or none at all
    :raise UsageError: several clusters and nothing says which, or several with that name
    """
    by_id = {c.batchid: c for c in clusters}
    if job_id is not None:
        if job_id not in by_id:
            raise NotFound(
                f"no running cluster with id {job_id}",
                hint=_running_hint(clusters),
            )
        if job_name is not None and by_id[job_id].record.name != job_name:
            raise NotFound(
                f"cluster {job_id} is named '{by_id[job_id].record.name}', not '{job_name}'",
                hint=_running_hint(clusters),
            )
        return by_id[job_id]
    if job_name is not None:
        return _by_name(clusters, job_name)
    for var in JOB_VARS:
        value = env.get(var)
        if value and value in by_id:
            return by_id[value]
        if value and var == "PCOCC_JOB_ID":
            raise NotFound(
                f"cluster {value} (from {var}) is not running", hint=_running_hint(clusters)
            )
    if not clusters:
        raise NotFound(
            "you have no running cluster",
            hint="start one with 'pcocc alloc' or 'pcocc batch'",
        )
    if len(clusters) > 1:
        ids = ", ".join(_label(c) for c in clusters)
        raise UsageError(
            f"you have several running clusters ({ids})",
            hint="choose one with -j JOBID or -J NAME",
        )
    return clusters[0]


def _by_name(clusters: Sequence[ClusterView], job_name: str) -> ClusterView:
    named = [c for c in clusters if c.record.name == job_name]
    if not named:
        raise NotFound(f"no running cluster named '{job_name}'", hint=_running_hint(clusters))
    if len(named) > 1:
        raise UsageError(
            f"{len(named)} running clusters are named '{job_name}':"
            f" {', '.join(c.batchid for c in named)}",
            hint="choose one with -j JOBID",
        )
    return named[0]


def _label(cluster: ClusterView) -> str:
    name = cluster.record.name
    return f"{cluster.batchid} ({name})" if name else cluster.batchid


def _running_hint(clusters: Sequence[ClusterView]) -> str:
    if not clusters:
        return "you have no running cluster; see 'pcocc ps'"
    return "running clusters: " + ", ".join(_label(c) for c in clusters)


def format_age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


#: opens a Kv from an endpoints string
OpenKv = Callable[[str], Kv]
