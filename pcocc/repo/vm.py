"""VM images: import (any qemu-img format -> one qcow2 base layer), export (flatten),
resize (a new qcow2 layer). Layers point at their parent blob by relative path."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pcocc import timing
from pcocc.errors import (
    AlreadyExists,
    NotFound,
    PcoccError,
    PermissionDenied,
    ToolError,
    UsageError,
)
from pcocc.fsutil import fsync_dir, os_error, tmp_name
from pcocc.repo import qcow2hdr, qcow2write, qemu_img
from pcocc.repo.digest import HEX_RE
from pcocc.repo.model import AddBlob, BlobRef, Progress, VmLayers, no_progress
from pcocc.repo.qemu_img import VM_FORMATS

QCOW2_MEDIA_TYPE = "application/vnd.pcocc.qcow2"


#: The first bytes of a VMDK descriptor file: its extents are always other files.
_VMDK_DESCRIPTOR = b"# Disk DescriptorFile"


@dataclass(frozen=True)
class _Source:
    """The file qemu-img reads for an import: ``/dev/fd/N`` of the source opened once
    (``fds`` to pass on), or a private copy of it in the staging directory."""

    path: str
    fds: tuple[int, ...]


@contextlib.contextmanager
def _open_source(path: Path, staging: Path) -> Iterator[_Source]:
    """Open the source once, so that a rename cannot swap it between the header check and
    the conversion. A file that someone else may write (another owner, or group/other
    write bits) is copied first into ``staging``: its header could change after the check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise os_error(err, f"cannot open {path}") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"source image {path} is not a regular file")
        if st.st_uid == os.geteuid() and not st.st_mode & 0o022:
            yield _Source(f"/dev/fd/{fd}", (fd,))
            return
        copy = staging / "source"
        try:
            _sparse_copy(fd, copy, st.st_size)
        except OSError as err:
            raise os_error(err, f"cannot copy {path} into {staging}") from err
        yield _Source(os.fspath(copy), ())
    finally:
        os.close(fd)


def _sparse_copy(fd: int, dest: Path, size: int) -> None:
    """Copy the file ``fd`` to a new private file, skipping holes."""
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        pos = 0
        while pos < size:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = os.lseek(fd, pos, os.SEEK_HOLE)
            while pos < end:
                n = os.copy_file_range(fd, out, end - pos, pos, pos)
                if n == 0:
                    break
                pos += n
        os.ftruncate(out, size)
        os.fsync(out)
    finally:
        os.close(out)


def _check_not_descriptor(src: _Source, path: Path) -> None:
    """Refuse a VMDK descriptor before qemu-img opens (and so touches) its extents."""
    fd = src.fds[0] if src.fds else os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, len(_VMDK_DESCRIPTOR), 0)
    finally:
        if not src.fds:
            os.close(fd)
    if head == _VMDK_DESCRIPTOR:
        raise PermissionDenied(
            f"{path} is refused: it is a VMDK descriptor, whose extents are other files",
            hint=_SELF_CONTAINED_HINT)


_SELF_CONTAINED_HINT = ("pcocc imports self-contained images only: convert it first with "
                        "'qemu-img convert -O qcow2 SOURCE FLAT.qcow2' as a user who may read "
                        "every file it names")


def resolve_import_format(path: Path, fmt: str | None, origin: str,
                          info: qemu_img.ImageInfo) -> str:
    """Choose the format of a VM image file from its probed ``info``.

    Order: the given format (-t, prefix, extension), else the probe. A probe that only finds
    "raw" is ambiguous (any file is raw data): the user must say raw. A declared format
    that the contents contradict is an error, never silently converted; formats pcocc does
    not support are refused even when probed.
    """
    if fmt is not None and fmt not in VM_FORMATS:
        raise UsageError(f"{fmt!r} is not a VM image format")
    probed = info.format
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
        return probed
    if probed != fmt:
        how = {"option": "-t", "prefix": "the format prefix", "extension": "its extension"}
        raise UsageError(
            f"{path} is a {probed} image, not {fmt} as {how.get(origin, 'given')} says",
            hint=f"use '-t {probed}'" if probed in VM_FORMATS else None,
        )
    return fmt


def import_vm(path: Path, fmt: str | None, origin: str, staging: Path, add_blob: AddBlob,
              progress: Progress = no_progress, *, backing_repo: Path | None = None
              ) -> tuple[str, VmLayers]:
    """Check ``path`` and convert it to a standalone qcow2 base layer; return its format
    and the layer.

    The image must name no other file in its header (backing file, external data file,
    vmdk extents): qemu-img would read them with our rights. ``backing_repo`` (the data/
    directory of the destination repository) lets a backing file be a blob stored there;
    the chain is then flattened, every layer named explicitly.
    """
    with _open_source(path, staging) as src:
        _check_not_descriptor(src, path)
        try:
            info = qemu_img.info(src.path, pass_fds=src.fds, where=os.fspath(path))
        except ToolError as err:
            raise PcoccError(f"cannot read image {path}: {err}") from err
        timing.mark("import: header read (qemu-img info)")
        fmt = resolve_import_format(path, fmt, origin, info)
        others = info.other_files()
        if not others:
            opts = qemu_img.image_opts(src.path, fmt, no_backing=True)
        elif backing_repo is not None and info.backing_filename and len(others) == 1:
            chain = _backing_in_repo(path, info, backing_repo)
            opts = qemu_img.chain_opts([*chain, src.path], top_fmt=fmt)
        else:
            raise PermissionDenied(
                f"{path} is refused: its header names another file, which pcocc would read "
                f"with your rights: {', '.join(others)}", hint=_SELF_CONTAINED_HINT)
        out = staging / "base.qcow2"
        add_written = getattr(add_blob, "add_written", None)
        if (fmt == "raw" and not others and add_written is not None
                and qcow2write.supported(info.virtual_size)):
            digest = _write_raw(src, path, info.virtual_size, out, progress)
            size = out.stat().st_size
            # qcow2write.write fsyncs what it wrote: the store need not do it again
            layer = BlobRef(add_written(out, digest, synced=True), size, QCOW2_MEDIA_TYPE)
            return fmt, VmLayers([layer], info.virtual_size)
        try:
            qemu_img.convert(opts, out, "qcow2", progress=progress, what=os.fspath(path),
                             total_bytes=info.virtual_size, pass_fds=src.fds)
        except ToolError as err:
            raise PcoccError(f"cannot convert {path} from {fmt}: {err}") from err
        timing.mark("import: converted to qcow2 (qemu-img convert)")
    size = out.stat().st_size
    digest = add_blob(out)
    timing.mark("import: blob hashed, fsynced, stored")
    return fmt, VmLayers([BlobRef(digest, size, QCOW2_MEDIA_TYPE)], info.virtual_size)


def adopt_base_layer(path: Path, digest: str, store: Callable[[Path, str], str]
                     ) -> VmLayers | None:
    """Store ``path`` itself as the base layer when it already is one, with ``store(path,
    digest)`` (``Repository.store_hashed_blob``): ``path`` is a file we wrote into the
    repository's staging directory and ``digest`` its sha256, computed while writing it.

    It must pass the strict header check of :mod:`pcocc.repo.qcow2hdr`, and ``qemu-img
    info`` and ``check`` must agree (a qcow2 naming no other file, consistent metadata).
    None when any of that fails: the caller imports it the ordinary way (:func:`import_vm`,
    which converts it, or refuses it with the reason).
    """
    try:
        with open(path, "rb") as f:
            first = f.read(24)
            need = qcow2hdr.head_size(first)
            head = first + f.read(need - len(first)) if need else first
        size = path.stat().st_size
    except OSError as err:
        raise os_error(err, f"cannot read {path}") from err
    if not need or qcow2hdr.base_layer_problem(head, size) is not None:
        return None
    try:
        info = qemu_img.info(path, "qcow2")
    except ToolError:
        return None
    if (info.other_files() or qemu_img.layer_problem(info, None)
            or not qemu_img.is_consistent(path)):
        return None
    timing.mark("import: header checked (as is: no conversion)")
    stored = store(path, digest)
    return VmLayers([BlobRef(stored, size, QCOW2_MEDIA_TYPE)], info.virtual_size)


def _write_raw(src: _Source, path: Path, size: int, out: Path, progress: Progress) -> str:
    """Write the raw disk ``src`` as the qcow2 ``out`` (see :mod:`pcocc.repo.qcow2write`),
    hashed as it is written and fsynced; return its digest."""
    fd = src.fds[0] if src.fds else os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        clusters = qcow2write.data_clusters(fd, size)
        timing.mark("import: source scanned")
        try:
            out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise os_error(err, f"cannot create {out}") from err
        try:
            digest = qcow2write.write(fd, size, out_fd, clusters, progress)
        finally:
            os.close(out_fd)
        timing.mark("import: blob written, hashed and fsynced")
        return digest
    except OSError as err:
        raise os_error(err, f"cannot import {path}") from err
    finally:
        if not src.fds:
            os.close(fd)


def _backing_in_repo(path: Path, info: qemu_img.ImageInfo, data_dir: Path) -> list[Path]:
    """The chain (base first) under the backing file of ``path`` when it is a blob of
    ``data_dir`` whose own chain stays there; PermissionDenied otherwise."""
    name = info.backing_filename or ""
    refused = PermissionDenied(
        f"{path} is refused: its backing file {name!r} is not a blob of the destination "
        f"repository ({data_dir})", hint=_SELF_CONTAINED_HINT)
    if not name or _has_protocol(name):
        raise refused
    target = Path(os.path.realpath(path.parent / name))
    data = Path(os.path.realpath(data_dir))
    if target.parent.parent != data or not _is_blob_name(target):
        raise refused
    chain = [target]
    while True:
        try:
            layer = qemu_img.info(chain[0], "qcow2")
        except ToolError as err:
            raise PcoccError(f"cannot read blob {chain[0]}: {err}") from err
        parent = layer.backing_filename
        if parent is not None and (len(chain) > _MAX_CHAIN or not _is_blob_relpath(parent)):
            raise refused
        problem = qemu_img.layer_problem(layer, parent)
        if problem:
            raise PermissionDenied(f"{path} is refused: its backing blob {chain[0]} {problem}")
        if parent is None:
            return chain
        chain.insert(0, data / parent[3:])


_MAX_CHAIN = 1000


def _has_protocol(name: str) -> bool:
    """True when qemu would read ``name`` as a protocol (``nbd:``, ``json:``...)."""
    head = name.split("/", 1)[0]
    return ":" in head


def _is_blob_name(p: Path) -> bool:
    return HEX_RE.match(p.name) is not None and p.parent.name == p.name[:2]


def _is_blob_relpath(name: str) -> bool:
    """``../<2 hex>/<64 hex>``: the only backing file name a repository layer may have."""
    parts = name.split("/")
    return (len(parts) == 3 and parts[0] == ".." and HEX_RE.match(parts[2]) is not None
            and parts[1] == parts[2][:2])


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
    chain = qemu_img.chain_opts(_chain(layers, blob_path))
    tmp = tmp_name(dest)
    try:
        qemu_img.convert(chain, tmp, fmt, progress=progress, what=os.fspath(dest),
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

    The overlay names its parent by the relative ``../xx/<hex>`` form, in qcow2; qemu-img
    opens the chain (to resize) with every layer named explicitly, never by that name.
    """
    parent = layers.layers[-1]
    chain = _chain(layers, blob_path)
    size = layers.virtual_size if new_size is None else new_size
    if new_size is not None and new_size < layers.virtual_size:
        if not shrink:
            raise UsageError(
                f"{new_size} bytes is smaller than the image ({layers.virtual_size} bytes)",
                hint="shrinking loses data: pass --shrink if the partitions end before it",
            )
        used = qemu_img.allocated_end(qemu_img.chain_opts(chain))
        if used > new_size:
            raise PcoccError(
                f"cannot shrink to {new_size} bytes: the image holds data up to byte {used}",
                hint="shrink the file systems and partitions inside the VM first",
            )
    top = staging / "layer.qcow2"
    qemu_img.create_overlay(top, relpath(parent.digest), layers.virtual_size)
    if size != layers.virtual_size:
        qemu_img.resize(qemu_img.chain_opts([*chain, top]), size,
                        shrink=size < layers.virtual_size)
    top_size = top.stat().st_size
    digest = add_blob(top)
    new = BlobRef(digest, top_size, QCOW2_MEDIA_TYPE)
    return VmLayers([*layers.layers, new], size)


def _chain(layers: VmLayers, blob_path: Callable[[str], Path]) -> list[Path]:
    return [blob_path(b.digest) for b in layers.layers]
