"""Checkpoint a running virtual cluster (``pcocc ckpt``): the save protocol through etcd.

The VMs run on the nodes of the job, so each node process saves its own VM; ``pcocc ckpt``
only asks and decides, through etcd (it works the same on one host or many, provided the
checkpoint directory is on a file system that every node sees, as a job's working
directory usually is):

1. ``pcocc ckpt`` makes a staging directory next to ``DIR`` (:mod:`pcocc.cluster.ckptdir`)
   and puts the request ``ckpt/request`` = {id, phase: save, dir: staging}.
2. Each node process (watching the cluster's keys) pauses its VM, writes the VM's state, its
   overlay and its ssh host key under ``staging/vmN/``, hashes them, and answers in
   ``ckpt/<rank>`` (leased: a dead node's answer vanishes) with status ``saved`` or
   ``failed``. The VM stays paused.
3. Once every VM has saved, ``pcocc ckpt`` writes the manifest and renames the staging
   directory to ``DIR``; then it sets the request's phase to ``stop`` (each node stops its
   VM and says so in its state record, and the launcher ends the cluster, exit status 0) or
   ``resume`` (``--no-stop``: the VMs run on, their clocks set by the guest agent). On any
   failure or Ctrl-C before the rename, the phase becomes ``abort``: the VMs resume and the
   staging directory is removed. A node that hears nothing for :data:`DECISION_TIMEOUT_S`
   resumes its VM.

Restoring (``pcocc alloc -r DIR``) checks the checkpoint before anything is allocated, and
each node process checks the digests of its VM's files before QEMU loads them: see
:mod:`pcocc.cluster.ckptrestore`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pcocc import fields
from pcocc.cluster import ckptdir
from pcocc.cluster.definition import ClusterDefinition
from pcocc.errors import Corrupt, PcoccError, TimedOut, UsageError
from pcocc.kv import keys

log = logging.getLogger(__name__)

SAVE, STOP, RESUME, ABORT = "save", "stop", "resume", "abort"
PHASES = (SAVE, STOP, RESUME, ABORT)
SAVED, FAILED, STOPPED, RESUMED = "saved", "failed", "stopped", "resumed"
STATUSES = (SAVED, FAILED, STOPPED, RESUMED)
#: how long a node with a saved VM waits for the decision before it resumes its VM
DECISION_TIMEOUT_S = 600.0
#: key of a VM record's ``extra``: the checkpoint its VM was stopped after
CKPT_NOTE = "checkpointed"


# -- the records in etcd -------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    id: str
    phase: str
    #: the staging directory the nodes write into
    dir: str
    #: the checkpoint's final name (what the VM records say once stopped)
    dest: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes, key: str | None = None) -> Request:
        def parse(text: str | bytes) -> Request:
            data = fields.load_object(text)
            fields.fields_of(data, ("id", "phase", "dir", "dest"))
            ident = fields.text(data["id"], "id", 64, empty=False)
            if not ident.isalnum():
                raise fields.BadField("id", "expected letters and digits")
            return cls(ident, fields.choice(data["phase"], "phase", PHASES),
                       fields.abs_path(data["dir"], "dir"),
                       fields.abs_path(data["dest"], "dest"))

        return fields.parse_record("checkpoint request", key, raw, parse)


@dataclass(frozen=True)
class Report:
    id: str
    status: str
    host: str
    error: str | None = None
    #: file name -> digest, the top layer the VM booted on, the QEMU version
    files: dict[str, str] = field(default_factory=dict)
    layer: str | None = None
    qemu_version: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        if self.error is not None:
            data["error"] = fields.one_line(self.error)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes, key: str | None = None) -> Report:
        def parse(text: str | bytes) -> Report:
            from pcocc.repo.digest import is_digest

            f = fields
            data = f.load_object(text)
            f.fields_of(data, ("id", "status", "host"),
                        ("error", "files", "layer", "qemu_version"))
            files = data.get("files") or {}
            if not isinstance(files, dict):
                raise f.BadField("files", "expected an object")
            for name, digest in files.items():
                if name not in ckptdir.VM_FILES or not is_digest(digest):
                    raise f.BadField("files", f"unexpected entry {str(name)[:40]!r}")
            layer = data.get("layer")
            if layer is not None and not is_digest(layer):
                raise f.BadField("layer", "expected sha256:<64 hex>")
            return cls(
                id=f.text(data["id"], "id", 64),
                status=f.choice(data["status"], "status", STATUSES),
                host=f.hostname(data["host"], "host"),
                error=f.optional(f.text, data.get("error"), "error"),
                files=dict(files),
                layer=layer,
                qemu_version=f.optional(f.text, data.get("qemu_version"), "qemu_version", 32),
            )

        return fields.parse_record("checkpoint report", key, raw, parse)


# -- the node process's side ---------------------------------------------------------------
class CheckpointableVm(Protocol):
    """What a node process's VM offers to a checkpoint (see adapters.MachineVm)."""

    def save_checkpoint(self, dest: Path) -> Report: ...

    def resume_after_checkpoint(self) -> None: ...


def pending_request(snapshot: Mapping[str, str], user: str, batchid: str,
                    done: str | None) -> Request | None:
    """A ``save`` request in the cluster's keys that this node has not answered yet."""
    key = keys.ckpt_request(user, batchid)
    raw = snapshot.get(key)
    if raw is None:
        return None
    try:
        request = Request.from_json(raw, key)
    except Corrupt as err:
        log.warning("%s", err)
        return None
    return request if request.phase == SAVE and request.id != done else None


def save_vm(vm: CheckpointableVm, request: Request, rank: int, host: str) -> Report:
    """Save VM ``rank`` into the request's staging directory; a failure is a report."""
    staging = Path(request.dir)
    try:
        if not hasattr(vm, "save_checkpoint"):
            raise PcoccError("this kind of VM cannot be checkpointed")
        if not staging.is_dir():
            raise PcoccError(f"the checkpoint directory {staging} is not visible on {host}",
                             hint="checkpoint into a directory that every node of the job"
                             " sees (a shared file system)")
        dest = ckptdir.vm_dir(staging, rank)
        dest.mkdir(mode=0o700)
        return vm.save_checkpoint(dest)
    except PcoccError as err:
        return Report(request.id, FAILED, host, error=f"vm{rank}: {err.message}")
    except OSError as err:
        return Report(request.id, FAILED, host, error=f"vm{rank}: {err}")


def wait_decision(kv: Any, user: str, batchid: str, request: Request,
                  timeout_s: float = DECISION_TIMEOUT_S, tick_s: float = 0.5) -> str:
    """The phase ``pcocc ckpt`` decides for a saved VM: stop, resume or abort (also when
    the request vanishes or no decision comes in time)."""
    key = keys.ckpt_request(user, batchid)

    def decided(snapshot: dict[str, str]) -> str | None:
        raw = snapshot.get(key)
        if raw is None:
            return ABORT
        try:
            current = Request.from_json(raw, key)
        except Corrupt:
            return ABORT
        if current.id != request.id:
            return ABORT
        return None if current.phase == SAVE else current.phase

    try:
        return kv.wait_for(key, decided, timeout_s, tick_s)
    except TimedOut:
        log.warning("vm checkpoint %s: no decision in %g s; resuming", request.id, timeout_s)
        return ABORT


# -- the side of 'pcocc ckpt' --------------------------------------------------------------
def check_checkpointable(definition: ClusterDefinition) -> None:
    """Refuse a cluster whose VMs QEMU cannot save.

    :raise UsageError: the VMs share host directories (virtio-fs cannot be migrated)
    """
    if definition.mounts or any(vm.settings.get("mount-points") for vm in definition.vms):
        raise UsageError(
            "this cluster shares host directories with its VMs (--mount or mount-points):"
            " QEMU cannot save the state of virtio-fs devices",
            hint="start the cluster without shared directories to checkpoint it",
        )


def checkpoint_cluster(
    kv: Any,
    user: str,
    batchid: str,
    definition: ClusterDefinition,
    dest: Path,
    *,
    force: bool = False,
    stop: bool = True,
    timeout_s: float = 1800.0,
    report: Callable[[str], None] = lambda msg: None,
    tick_s: float = 0.5,
) -> Path:
    """Checkpoint every VM of the cluster into ``dest`` (see the module's docstring).

    :raise UsageError: ``dest`` exists (without ``force``), the VMs cannot be saved
    :raise PcoccError: a VM could not be saved (the VMs resume, nothing is left)
    """
    dest = Path(os.path.abspath(dest))
    check_checkpointable(definition)
    ckptdir.check_destination(dest, force)
    staging = ckptdir.make_staging(dest)
    request = Request(os.urandom(8).hex(), SAVE, str(staging), str(dest))
    key = keys.ckpt_request(user, batchid)
    committed = False
    try:
        kv.delete_prefix(keys.ckpt_prefix(user, batchid))
        kv.put(key, request.to_json())
        report(f"saving {definition.size} VM{'s' if definition.size > 1 else ''}")
        reports = _wait_reports(kv, user, batchid, request, definition.size, SAVED,
                                timeout_s, tick_s)
        versions = {r.qemu_version for r in reports.values()}
        if len(versions) != 1 or None in versions:
            raise PcoccError("the VMs run different QEMU versions"
                             f" ({', '.join(map(str, versions))}): their states could not"
                             " be restored together")
        vms = tuple(
            ckptdir.VmCheckpoint(rank=rank, image=definition.vm(rank).image,
                                 layer=reports[rank].layer, files=reports[rank].files)
            for rank in range(definition.size)
        )
        manifest = ckptdir.Manifest(batchid=batchid, qemu_version=versions.pop() or "",
                                    definition=json.loads(definition.to_json()), vms=vms)
        from pcocc import fsutil

        fsutil.write_atomic(staging / ckptdir.MANIFEST, manifest.to_json(), mode=0o600)
        ckptdir.commit(staging, dest, force)
        committed = True
    finally:
        if not committed:
            _decide(kv, key, request, ABORT)
            _settle(kv, user, batchid, request, definition.size, tick_s)
            ckptdir.discard(staging)
    _decide(kv, key, request, STOP if stop else RESUME)
    _wait_reports(kv, user, batchid, request, definition.size, STOPPED if stop else RESUMED,
                  120.0, tick_s)
    if not stop:  # a stopped cluster's keys go with it
        kv.delete_prefix(keys.ckpt_prefix(user, batchid))
    return dest


def _decide(kv: Any, key: str, request: Request, phase: str) -> None:
    try:
        kv.put(key, Request(request.id, phase, request.dir, request.dest).to_json())
    except PcoccError as err:  # the nodes resume on their own after DECISION_TIMEOUT_S
        log.warning("could not tell the nodes to %s: %s", phase, err.message)


def _settle(kv: Any, user: str, batchid: str, request: Request, size: int,
            tick_s: float, timeout_s: float = 60.0) -> None:
    """Wait (a while) until no node writes into the staging directory any more: each VM
    has failed or resumed, or is gone."""

    def settled(snapshot: dict[str, str]) -> bool | None:
        busy = set()
        for key, value in snapshot.items():
            try:
                parsed = keys.parse_cluster_key(key)
            except Corrupt:
                continue
            if parsed.kind == "vm_state" and parsed.rank is not None and parsed.rank < size:
                busy.add(parsed.rank)
        for key, value in snapshot.items():
            try:
                parsed = keys.parse_cluster_key(key)
                if parsed.kind == "ckpt_report":
                    rep = Report.from_json(value, key)
                    if rep.id == request.id and rep.status in (FAILED, RESUMED):
                        busy.discard(parsed.rank)
            except Corrupt:
                continue
        return True if not busy else None

    try:
        kv.wait_for(keys.cluster_prefix(user, batchid), settled, timeout_s, tick_s)
    except (TimedOut, PcoccError) as err:
        log.debug("checkpoint %s: not every node answered the abort: %s", request.id, err)


def _wait_reports(kv: Any, user: str, batchid: str, request: Request, size: int,
                  wanted: str, timeout_s: float, tick_s: float) -> dict[int, Report]:
    """Every VM's report of ``request`` once all say ``wanted``; for ``stopped``, also
    once the cluster is gone (the launcher removes its keys as the VMs stop).

    :raise PcoccError: a VM failed (its message), a VM's node or the cluster vanished
    """
    definition_key = keys.cluster_definition(user, batchid)

    def all_there(snapshot: dict[str, str]) -> dict[int, Report] | None:
        if definition_key not in snapshot:
            if wanted == STOPPED:
                return {}
            raise PcoccError(f"checkpoint: cluster {batchid} ended meanwhile")
        found: dict[int, Report] = {}
        running: set[int] = set()
        for key, value in snapshot.items():
            try:
                parsed = keys.parse_cluster_key(key)
            except Corrupt:
                continue
            if parsed.kind == "vm_state" and parsed.rank is not None:
                running.add(parsed.rank)
            if parsed.kind != "ckpt_report" or parsed.rank is None or parsed.rank >= size:
                continue
            rep = Report.from_json(value, key)
            if rep.id != request.id:
                continue
            if rep.status == FAILED:
                raise PcoccError(f"checkpoint failed: {rep.error or 'no reason given'}"
                                 f" (on {rep.host})")
            if rep.status == wanted:
                found[parsed.rank] = rep
        gone = [f"vm{r}" for r in range(size) if r not in running and r not in found]
        if gone and wanted != STOPPED:
            raise PcoccError(f"checkpoint failed: {', '.join(gone)} stopped meanwhile")
        return found if len(found) == size else None

    try:
        return kv.wait_for(keys.cluster_prefix(user, batchid), all_there, timeout_s, tick_s)
    except TimedOut:
        raise PcoccError(f"checkpoint: not every VM answered within {timeout_s:g} s",
                         hint="check that the cluster still runs ('pcocc ps')") from None
