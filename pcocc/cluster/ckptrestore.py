"""Restoring a checkpoint (``pcocc alloc -r DIR``): the checks before anything is allocated
(:func:`check_restore`), and those each node process makes before QEMU loads its VM's files
(:func:`restore_files`, :func:`restore_host_key`). How checkpoints are written is in
:mod:`pcocc.cluster.checkpoint`; their layout on disk in :mod:`pcocc.cluster.ckptdir`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pcocc import fields
from pcocc.cluster import ckptdir
from pcocc.cluster.definition import ClusterDefinition
from pcocc.errors import Corrupt, UsageError

#: definition fields that must be the same for a restore (the others, such as the creation
#: time or the user's ssh key, may differ)
_SAME_VM_FIELDS = ("template", "settings", "image", "cores", "address", "networks")


def check_restore(root: Path, definition: ClusterDefinition,
                  layer_of: Callable[[str], str], running_qemu: str | None) -> ckptdir.Manifest:
    """Refuse to restore ``definition`` from the checkpoint in ``root`` unless it is the
    same cluster, on the same image layers, for the same QEMU.

    :param layer_of: image URI -> digest of its top layer now
    :param running_qemu: the QEMU version installed here (None: not checked)
    :raise NotFound: no checkpoint there
    :raise Corrupt: the manifest is damaged
    :raise UsageError: the definition, a template, an image or QEMU differ (naming it)
    """
    manifest = ckptdir.read_manifest(root)
    from pcocc.cluster.stored import parse_definition

    try:
        saved = parse_definition(manifest.definition)
    except fields.BadField as err:
        raise Corrupt(f"checkpoint '{root}': its definition: field '{err.field}':"
                      f" {err.problem}") from None
    what = f"checkpoint '{root}'"
    if len(manifest.vms) != saved.size:
        raise Corrupt(f"{what}: {len(manifest.vms)} VMs saved for a cluster of {saved.size}")
    if definition.spec != saved.spec or definition.size != saved.size:
        raise UsageError(f"{what} is of cluster '{saved.spec}', not '{definition.spec}'",
                         hint=f"restore it with the same definition: '{saved.spec}'")
    for now, then in zip(definition.vms, saved.vms):
        for name in _SAME_VM_FIELDS:
            if getattr(now, name) != getattr(then, name):
                detail = ""
                if name == "settings":
                    keys_ = sorted({*now.settings, *then.settings})
                    differ = [k for k in keys_ if now.settings.get(k) != then.settings.get(k)]
                    detail = f" ({', '.join(differ)})"
                raise UsageError(
                    f"{what}: {now.name} (template {now.template}): its {name}{detail}"
                    " differs from the checkpoint's",
                    hint="a checkpoint restores only with the same templates and options",
                )
    for attr in ("mounts", "user_data", "networks"):
        if getattr(definition, attr) != getattr(saved, attr):
            raise UsageError(f"{what}: the cluster's {attr.replace('_', '-')} differ from"
                             " the checkpoint's")
    for vm in manifest.vms:
        for name in vm.files:  # their digests are checked by the nodes, before QEMU reads
            path = ckptdir.vm_dir(root, vm.rank) / name
            if not path.is_file() or path.is_symlink():
                raise Corrupt(f"{what}: {path} is missing or not a regular file",
                              hint="the checkpoint is incomplete; restore another one")
        if vm.image is not None and vm.layer is not None:
            current = layer_of(vm.image)
            if current != vm.layer:
                raise UsageError(
                    f"{what}: image '{vm.image}' of vm{vm.rank} changed since the"
                    f" checkpoint (its top layer is now {current[:19]}, was"
                    f" {vm.layer[:19]})",
                    hint="give the image's revision of the checkpoint in the template"
                    " (IMAGE@REV)",
                )
    if running_qemu is not None and running_qemu != manifest.qemu_version:
        raise UsageError(f"{what} was written by QEMU {manifest.qemu_version}, this is"
                         f" QEMU {running_qemu}", hint="restore it where that QEMU runs")
    return manifest


def restore_files(root: Path, rank: int, layer: str | None) -> ckptdir.VmCheckpoint:
    """The checked files of VM ``rank`` (run by its node process before QEMU reads them).

    :param layer: digest of the top layer the VM gets now (None: no image)
    :raise Corrupt: a file is missing or damaged, or the layer differs
    """
    manifest = ckptdir.read_manifest(root)
    if rank >= len(manifest.vms):
        raise Corrupt(f"checkpoint '{root}' has no vm{rank}")
    vm = manifest.vms[rank]
    if vm.layer != layer:
        raise Corrupt(f"checkpoint '{root}': vm{rank} was saved on layer {vm.layer},"
                      f" its image is now {layer}")
    ckptdir.check_vm_files(root, vm)
    return vm


def restore_host_key(root: Path, rank: int, vm_dir: Path) -> Path | None:
    """Copy the saved ssh host key of VM ``rank`` into ``vm_dir`` (with its public half):
    the restored guest still serves it. None when the checkpoint holds none.

    :raise Corrupt: the saved key is not the one the manifest states
    """
    from pcocc import fsutil, proc
    from pcocc.repo.digest import hash_file

    vms = ckptdir.read_manifest(root).vms
    vm = vms[rank] if rank < len(vms) else None
    if vm is None or ckptdir.HOST_KEY not in vm.files:
        return None
    path = vm_dir / ckptdir.HOST_KEY
    for p in (path, path.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    fsutil.copy_sparse(ckptdir.vm_dir(root, rank) / ckptdir.HOST_KEY, path)
    if hash_file(path, fsync=False) != vm.files[ckptdir.HOST_KEY]:
        raise Corrupt(f"checkpoint '{root}': the ssh host key of vm{rank} was modified")
    public = proc.run(["ssh-keygen", "-y", "-f", path], what="read the saved host key").stdout
    fsutil.write_atomic(path.with_suffix(".pub"), public, mode=0o644)
    return path
