"""``pcocc save``: write the disk of a running VM into an image repository.

The VM's boot disk is a private qcow2 overlay (``disk0``) over the top layer of the image
revision it booted from. Saving copies that overlay's clusters, as they are at one instant,
into a new layer whose backing file is that revision's top blob (or, with ``full``, the
whole flattened disk into a standalone layer) and commits it as a new revision of the image
(or as a new image with ``dest``) through the repository's usual protocol: the blob is
written in the repository's ``tmp/``, stored, then the metadata committed under the lock.
The VM keeps running. The guest's file systems are frozen through its agent for the
instant the copy's content is fixed (see :mod:`pcocc.vm.fsfreeze`).

A layer is copied by pcocc itself: a temporary snapshot (:mod:`pcocc.vm.snapshot`) stops
QEMU writing the overlay, whose clusters are then written into the new layer in one
sequential pass, hashed as written (:mod:`pcocc.repo.qcow2map`, :mod:`pcocc.repo.qcow2write`),
and the snapshot is merged back while the layer's writeback runs; the blob is fsynced and
moved into the repository without being read again. A whole disk (``full``), or an overlay
whose format that reader does not know, is copied by QEMU (``blockdev-backup``, see
:mod:`pcocc.vm.blockjobs`) and hashed afterwards.

Everything is refused before the guest is touched: a VM without an image, a read-only
destination, an existing ``dest``, a VM on another host, a guest agent that does not
answer (unless ``skip_freeze``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pcocc import timing
from pcocc.cluster import vmcontrol
from pcocc.cluster.lookup import ClusterView
from pcocc.errors import NotFound, PcoccError, UsageError
from pcocc.fsutil import start_writeback
from pcocc.repo import ops, qcow2map, qcow2write, qemu_img
from pcocc.repo.digest import HEX_RE
from pcocc.repo.meta import ImageMeta
from pcocc.repo.model import Progress, no_progress
from pcocc.repo.store import Repository
from pcocc.repo.reposet import RepoSet
from pcocc.vm import blockjobs, fsfreeze, snapshot
from pcocc.vm.agent import GuestAgent

log = logging.getLogger(__name__)

#: the block device of the VM's boot disk (see pcocc.vm.machine: the image's overlay)
DISK_DEVICE = "disk0"
#: how long a save waits for another save (or a checkpoint) of the same VM to end
SAVE_WAIT_S = 600.0
#: how long the guest agent may take to answer the ping before the freeze
AGENT_PING_S = 10.0


def booted_revision(revisions: Sequence[ImageMeta], top_digest: str) -> ImageMeta | None:
    """The revision (the highest of several) whose top layer is ``top_digest``."""
    found = [m for m in revisions if m.vm and m.vm_layers().layers[-1].digest == top_digest]
    return max(found, key=lambda m: m.revision) if found else None


def backing_digest(backing: str | None, vm: str) -> str:
    """The blob digest that the overlay's backing file name ends with."""
    name = os.path.basename(backing or "")
    if not HEX_RE.match(name):
        raise PcoccError(f"the disk of {vm} is not an overlay on a repository image "
                         f"(its backing file is {backing!r})")
    return f"sha256:{name}"


def _find_booted(repo: Repository, named: ImageMeta, backing: str | None, vm: str
                 ) -> ImageMeta:
    digest = backing_digest(backing, vm)
    if os.path.realpath(backing or "") != os.path.realpath(repo.blob_path(digest)):
        raise PcoccError(f"{vm} booted from {backing}, which is not a blob of repository "
                         f"'{repo.name}' where {named.ref} is")
    booted = booted_revision(repo.images(f"^{re.escape(named.name)}$", all_revisions=True),
                             digest)
    if booted is None:
        raise NotFound(f"the revision of {repo.name}:{named.name} that {vm} booted from is no "
                       "longer in the repository", hint="save the whole disk into a new image "
                       "with --full -d [REPO:]NAME")
    return booted


@contextlib.contextmanager
def _frozen(agent: GuestAgent, vm: str) -> Iterator[None]:
    """The guest frozen (see :func:`pcocc.vm.fsfreeze.frozen`), then the agent's kept
    connection released: the copy goes on without holding it."""
    try:
        with fsfreeze.frozen(agent, vm):
            yield
    finally:
        agent.release()


def _pinging(stack: contextlib.ExitStack, agent: GuestAgent) -> Callable[[], bool]:
    """Ping ``agent`` in a thread (a few round trips through the guest) while the caller
    talks to QEMU; return the function that waits for its answer. ``stack`` waits for the
    thread before it releases the agent."""
    answer: list[bool] = []
    thread = threading.Thread(
        target=lambda: answer.append(agent.ping(timeout_s=AGENT_PING_S)),
        name="pcocc-agent-ping", daemon=True)
    thread.start()
    stack.callback(thread.join)

    def answered() -> bool:
        thread.join()
        return answer == [True]

    return answered


def save_vm(view: ClusterView, vm: str, repos: RepoSet, *, dest: str | None = None,
            full: bool = False, skip_freeze: bool = False, description: str = "",
            progress: Progress = no_progress,
            notify: Callable[[str], None] = lambda _msg: None) -> ImageMeta:
    """Save the boot disk of ``vm`` (see the module docstring); return the new revision.

    :raise UsageError: the VM boots no image, or runs on another host
    :raise PermissionDenied: the destination repository is read-only for us
    :raise AlreadyExists: ``dest`` exists
    :raise PcoccError: the guest agent does not answer, or the copy failed (nothing is
        left in the repository but what gc reclaims)
    """
    rec = view.vm(vm)
    name = rec.name
    entry = view.record.definition.vm(rec.rank)
    if not entry.image:
        raise UsageError(f"{name} boots a kernel without an image: it has no disk to save",
                         hint=f"give its template an 'image' (template '{entry.template}')")
    src_repo, named = repos.resolve(entry.image)
    dst_repo, dst_name, new_image = ops.save_destination(repos, src_repo, named, dest)
    with contextlib.ExitStack() as stack:
        agent = None
        if not skip_freeze:  # ping, freeze and thaw on one connection
            agent = stack.enter_context(stack.enter_context(
                vmcontrol.guest_agent(view, rec.rank)).kept())
            answered = _pinging(stack, agent)
        client = stack.enter_context(vmcontrol.qmp_session(view, rec))
        run_dir = Path(vmcontrol.local_path(view, rec, rec.qmp_socket,
                                            "monitor socket")).parent
        stack.enter_context(snapshot.locked(run_dir, name, wait_s=SAVE_WAIT_S))
        temp = run_dir / snapshot.TEMP_OVERLAY
        disk = snapshot.settled(client, DISK_DEVICE, temp)
        booted = _find_booted(src_repo, named, disk.backing_filename, name)
        if agent is not None and not answered():
            raise PcoccError(
                f"the guest agent of {name} does not answer: its file systems cannot be "
                "frozen for the save",
                hint="start qemu-guest-agent in the guest, or pass -s to save without "
                     "freezing (the saved disk may then need a file system check)")
        timing.mark("save: disk and guest agent checked")
        quiesce = (_frozen(agent, name) if agent is not None else contextlib.nullcontext())
        top = booted.vm_layers().layers[-1].digest
        backing = dst_repo.layout.blob_relpath_from_blob(top)
        with dst_repo.staging("save") as staging:
            layer = staging / "layer.qcow2"
            # (QEMU runs in the run dir: it may name the overlay relative to it)
            disk = dataclasses.replace(disk, filename=str(run_dir / disk.filename))
            why = None if full else _unreadable(disk.filename)
            if not full and why is None:
                notify(f"saving the disk changes of {name} (booted from {booted.ref})")
                with quiesce:
                    snap = snapshot.take(client, disk, temp)
                timing.mark("save: snapshot taken")
                try:
                    digest = _copy_layer(disk, layer, backing, progress)
                    timing.mark("save: layer written and hashed")
                finally:
                    snapshot.merge(client, snap)
                    timing.mark("save: snapshot merged back")
                return ops.commit_saved_disk(
                    src_repo, booted, layer, dst_repo, dst_name, new_image=new_image,
                    full=False, virtual_size=disk.virtual_size, description=description,
                    digest=digest)
            if why is not None:
                log.info("copying the overlay of %s with QEMU: %s", name, why)
            if full:
                qemu_img.create_empty(layer, disk.virtual_size)
            else:
                qemu_img.create_overlay(layer, backing, disk.virtual_size)
            notify(f"saving the {'whole disk' if full else 'disk changes'} of {name} "
                   f"(booted from {booted.ref})")
            with open(layer, "rb") as held:
                def report(done: int, total: int | None) -> None:
                    start_writeback(held.fileno())  # the final fsync has less to do
                    progress(done, total)

                blockjobs.backup(client, DISK_DEVICE, layer, sync="full" if full else "top",
                                 quiesce=quiesce, progress=report)
            timing.mark("save: copy done (block job concluded)")
            return ops.commit_saved_disk(
                src_repo, booted, layer, dst_repo, dst_name, new_image=new_image,
                full=full, virtual_size=disk.virtual_size, description=description)


def _unreadable(path: str) -> str | None:
    """Why pcocc cannot read the overlay ``path`` itself (None: it can)."""
    try:
        with open(path, "rb") as f:
            return qcow2map.unsupported(f.read(104))
    except OSError as err:
        return f"cannot read {path}: {err.strerror}"


def _copy_layer(disk: blockjobs.DiskState, layer: Path, backing: str,
                progress: Progress) -> str:
    """Write the clusters of the frozen overlay of ``disk`` into the new file ``layer``, a
    qcow2 over ``backing``; return its digest. Its writeback is started, not waited for."""
    src = os.open(disk.filename, os.O_RDONLY | os.O_CLOEXEC)
    try:
        found = qcow2map.read_map(src)
        if found.virtual_size != disk.virtual_size:
            raise PcoccError(f"the overlay {disk.filename} changed size while it was saved")
        out = os.open(layer, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            return qcow2write.write(src, found.virtual_size, out, [g for g, _ in found.data],
                                    progress, offsets=[h for _, h in found.data],
                                    zeros=found.zeros, backing=backing, fsync=False)
        finally:
            os.close(out)
    except qcow2map.MapError as err:
        raise PcoccError(f"cannot save the overlay {disk.filename}: {err}") from err
    finally:
        os.close(src)
