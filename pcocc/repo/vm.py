"""VM images: import (any qemu-img format -> one qcow2 base layer), export (flatten),
resize (a new qcow2 layer). Layers point at their parent blob by relative path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pcocc.errors import AlreadyExists, NotFound, PcoccError, ToolError, UsageError
from pcocc.fsutil import fsync_dir, os_error, tmp_name
from pcocc.repo import qemu_img
from pcocc.repo.model import AddBlob, BlobRef, Progress, VmLayers, no_progress
from pcocc.repo.qemu_img import VM_FORMATS

QCOW2_MEDIA_TYPE = "application/vnd.pcocc.qcow2"


def resolve_import_format(path: Path, fmt: str | None, origin: str
                          ) -> tuple[str, qemu_img.ImageInfo]:
    """Choose the format of a VM image file and check it against its contents.

    Order: the given format (-t, prefix, extension), else a probe. A probe that only finds
    "raw" is ambiguous (any file is raw data): the user must say raw. A declared format
    that the contents contradict is an error, never silently converted.
    """
    if fmt is not None and fmt not in VM_FORMATS:
        raise UsageError(f"{fmt!r} is not a VM image format")
    try:
        info = qemu_img.info(path)
        probed = info.format
    except ToolError as err:
        raise PcoccError(f"cannot read image {path}: {err}") from err
    if fmt is None:
        if probed == "raw":
            raise UsageError(
                f"cannot tell the format of {path}: it looks like raw data",
                hint=f"for a raw disk say '-t raw' (or 'raw:{path}'); for a container image "
                     f"give its format, e.g. 'docker-archive:{path}'",
            )
        if probed not in VM_FORMATS:
            raise UsageError(f"{path} is a {probed} image, which pcocc does not import",
                             hint="supported VM formats: " + ", ".join(VM_FORMATS))
        return probed, info
    if probed != fmt:
        how = {"option": "-t", "prefix": "the format prefix", "extension": "its extension"}
        raise UsageError(
            f"{path} is a {probed} image, not {fmt} as {how.get(origin, 'given')} says",
            hint=f"use '-t {probed}'" if probed in VM_FORMATS else None,
        )
    return fmt, info


def import_vm(path: Path, fmt: str, staging: Path, add_blob: AddBlob,
              progress: Progress = no_progress, src: qemu_img.ImageInfo | None = None
              ) -> VmLayers:
    """Convert ``path`` to a standalone qcow2 (flattening any backing chain) and add it.

    :param src: ``qemu-img info`` of ``path`` when the caller already has it
    """
    if src is None or src.format != fmt:
        src = qemu_img.info(path, fmt)
    if src.backing_filename:
        full = src.full_backing_filename or src.backing_filename
        if not os.path.exists(full if os.path.isabs(full) else path.parent / full):
            raise NotFound(f"{path}: its backing file {src.backing_filename!r} is missing",
                           hint="import the image together with its backing file")
    out = staging / "base.qcow2"
    try:
        qemu_img.convert(path, fmt, out, "qcow2", progress=progress,
                         total_bytes=src.virtual_size)
    except ToolError as err:
        raise PcoccError(f"cannot convert {path} from {fmt}: {err}") from err
    size = out.stat().st_size
    digest = add_blob(out)
    return VmLayers([BlobRef(digest, size, QCOW2_MEDIA_TYPE)], src.virtual_size)


def export_vm(layers: VmLayers, blob_path: Callable[[str], Path], dest: Path, fmt: str,
              progress: Progress = no_progress) -> None:
    """Flatten the layer chain into ``dest`` in ``fmt``; ``dest`` appears only when complete."""
    if fmt not in VM_FORMATS:
        raise UsageError(f"{fmt!r} is not a VM image format",
                         hint="VM images export to " + ", ".join(VM_FORMATS))
    if os.path.lexists(dest):
        raise AlreadyExists(f"{dest} already exists", hint="remove it or choose another name")
    if not dest.parent.is_dir():
        raise NotFound(f"directory {dest.parent} does not exist")
    top = blob_path(layers.layers[-1].digest)
    tmp = tmp_name(dest)
    try:
        qemu_img.convert(top, "qcow2", tmp, fmt, progress=progress,
                         total_bytes=layers.virtual_size)
        os.replace(tmp, dest)
    except OSError as err:
        raise os_error(err, f"cannot write {dest}") from err
    except ToolError as err:
        raise PcoccError(f"cannot export to {dest}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)


def add_layer(layers: VmLayers, blob_path: Callable[[str], Path], relpath: Callable[[str], str],
              staging: Path, add_blob: AddBlob, *, new_size: int | None = None,
              shrink: bool = False) -> VmLayers:
    """A new top layer over ``layers`` (resized to ``new_size`` when given).

    The overlay is built against the parent's absolute path (qemu-img must open it to resize),
    then its backing name is rewritten to the relative ``../xx/<hex>`` form before it is added.
    """
    parent = layers.layers[-1]
    size = layers.virtual_size if new_size is None else new_size
    if new_size is not None and new_size < layers.virtual_size:
        if not shrink:
            raise UsageError(
                f"{new_size} bytes is smaller than the image ({layers.virtual_size} bytes)",
                hint="shrinking loses data: pass --shrink if the partitions end before it",
            )
        used = qemu_img.allocated_end(blob_path(parent.digest))
        if used > new_size:
            raise PcoccError(
                f"cannot shrink to {new_size} bytes: the image holds data up to byte {used}",
                hint="shrink the file systems and partitions inside the VM first",
            )
    top = staging / "layer.qcow2"
    qemu_img.create_overlay(top, os.fspath(blob_path(parent.digest)), layers.virtual_size)
    if size != layers.virtual_size:
        qemu_img.resize(top, size, shrink=size < layers.virtual_size)
    qemu_img.rebase_unsafe(top, relpath(parent.digest))
    top_size = top.stat().st_size
    digest = add_blob(top)
    new = BlobRef(digest, top_size, QCOW2_MEDIA_TYPE)
    return VmLayers([*layers.layers, new], size)
