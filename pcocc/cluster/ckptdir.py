"""A checkpoint directory on disk: its manifest, its files, and how it appears atomically.

Layout (``DIR`` as the user names it; the names of the files are fixed here, never read
from the manifest, so a manifest cannot point anywhere else)::

    DIR/manifest.json            what the checkpoint is (see :class:`Manifest`)
    DIR/vm<rank>/state           QEMU's migration stream: memory and device state
    DIR/vm<rank>/disk0.qcow2     the VM's overlay (its disk's top layer), when it has an image
    DIR/vm<rank>/ssh_host_ed25519_key   the guest's ssh host key (the guest keeps it)

A checkpoint is written into a hidden sibling staging directory (``.DIR.ckpt-<pid>-<rand>``)
and renamed to ``DIR`` once complete: a crash or Ctrl-C leaves no ``DIR`` half written (the
staging directory of a dead writer is removed by the next checkpoint into ``DIR``). An
existing checkpoint is replaced (``-F``) by an atomic exchange of the two directories, and
only a directory that is a checkpoint (or empty) is ever replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pcocc import fields, fsutil
from pcocc.errors import Corrupt, NotFound, UsageError

FORMAT = "pcocc-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state"
DISK = "disk0.qcow2"
HOST_KEY = "ssh_host_ed25519_key"
#: the files a VM's directory may hold, in the order they are checked
VM_FILES = (STATE, DISK, HOST_KEY)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.ckpt-(?P<pid>[0-9]+)-[0-9a-f]{8}$")
_VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def vm_dir(root: Path, rank: int) -> Path:
    return root / f"vm{rank}"


@dataclass(frozen=True)
class VmCheckpoint:
    """What the checkpoint holds of one VM."""

    rank: int
    #: the image URI of the definition, and the digest of the top layer the VM booted on
    image: str | None
    layer: str | None
    #: file name (one of :data:`VM_FILES`) -> ``sha256:<hex>`` of its content
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    batchid: str
    #: the QEMU version that wrote the states (``major.minor.micro``)
    qemu_version: str
    #: the cluster definition as stored (:meth:`ClusterDefinition.to_json`'s object)
    definition: dict[str, Any]
    vms: tuple[VmCheckpoint, ...]
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        data = asdict(self)
        data["vms"] = [asdict(vm) for vm in self.vms]
        return json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **data},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes, where: str) -> Manifest:
        """The strict reading of a manifest; anything unexpected is :class:`Corrupt`
        naming ``where`` (the file) and the field."""
        try:
            return _parse(fields.load_object(raw, MAX_MANIFEST_BYTES))
        except fields.BadField as err:
            raise Corrupt(
                f"checkpoint manifest {where}: field '{err.field}': {err.problem}",
                hint="this is not a checkpoint written by this version of pcocc",
            ) from None


def _parse(data: dict[str, Any]) -> Manifest:
    from pcocc.cluster.stored import MAX_VMS
    from pcocc.repo.digest import is_digest

    f = fields
    f.fields_of(data, ("format", "version", "batchid", "qemu_version", "definition", "vms",
                       "created"))
    if data["format"] != FORMAT:
        raise f.BadField("format", f"expected {FORMAT!r}")
    if data["version"] != FORMAT_VERSION:
        raise f.BadField("version", f"format version {data['version']!r}, expected"
                         f" {FORMAT_VERSION}")
    qemu_version = f.text(data["qemu_version"], "qemu_version", 32)
    if not _VERSION_RE.match(qemu_version):
        raise f.BadField("qemu_version", f"expected MAJOR.MINOR.MICRO, got {qemu_version!r}")
    if not isinstance(data["definition"], dict):
        raise f.BadField("definition", "expected an object")
    raw_vms = data["vms"]
    if not isinstance(raw_vms, list) or not 1 <= len(raw_vms) <= MAX_VMS:
        raise f.BadField("vms", f"expected a list of 1 to {MAX_VMS} VMs")
    vms = []
    for index, entry in enumerate(raw_vms):
        where = f"vms[{index}]"
        if not isinstance(entry, dict):
            raise f.BadField(where, "expected an object")
        try:
            f.fields_of(entry, ("rank", "image", "layer", "files"))
            rank = f.integer(entry["rank"], "rank", 0, MAX_VMS)
            if rank != index:
                raise f.BadField("rank", f"{rank} at position {index}")
            image = f.optional(f.text, entry["image"], "image", 512)
            layer = entry["layer"]
            if layer is not None and not is_digest(layer):
                raise f.BadField("layer", "expected null or sha256:<64 hex>")
            files = entry["files"]
            if not isinstance(files, dict) or STATE not in files:
                raise f.BadField("files", f"expected an object naming at least {STATE!r}")
            for name, digest in files.items():
                if name not in VM_FILES:
                    raise f.BadField(f"files.{str(name)[:40]}", "unknown file")
                if not is_digest(digest):
                    raise f.BadField(f"files.{name}", "expected sha256:<64 hex>")
            if (DISK in files) != (layer is not None):
                raise f.BadField("files", f"{DISK} goes with a layer, and only with one")
        except f.BadField as err:
            raise err.within(where) from None
        vms.append(VmCheckpoint(rank=rank, image=image, layer=layer, files=dict(files)))
    return Manifest(
        batchid=f.job_id(data["batchid"], "batchid"),
        qemu_version=qemu_version,
        definition=data["definition"],
        vms=tuple(vms),
        created=f.number(data["created"], "created", 0),
    )


def read_manifest(root: str | os.PathLike) -> Manifest:
    """The manifest of the checkpoint in ``root``.

    :raise NotFound: no such directory, or no manifest in it
    :raise Corrupt: the manifest is not one
    """
    path = Path(root) / MANIFEST
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        what = "no such directory" if not Path(root).is_dir() else f"it has no {MANIFEST}"
        raise NotFound(f"checkpoint '{root}': {what}",
                       hint="give the DIR that 'pcocc ckpt DIR' wrote") from None
    except OSError as err:
        raise fsutil.os_error(err, f"cannot read {path}") from err
    return Manifest.from_json(raw, str(path))


def check_vm_files(root: Path, vm: VmCheckpoint) -> None:
    """Check that the files of ``vm`` are there with the content the manifest states.

    :raise Corrupt: a file is missing, not a regular file, or its digest differs
    """
    from pcocc.repo.digest import hash_file

    for name, digest in vm.files.items():
        path = vm_dir(root, vm.rank) / name
        try:
            st = os.lstat(path)
        except OSError as err:
            raise Corrupt(f"checkpoint '{root}': {path.name} of vm{vm.rank} is missing"
                          f" ({err.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise Corrupt(f"checkpoint '{root}': {path} is not a regular file")
        if hash_file(path, fsync=False) != digest:
            raise Corrupt(f"checkpoint '{root}': {path} does not have the content the"
                          " manifest states (damaged or modified)",
                          hint="restore from another checkpoint")


# -- the directory -----------------------------------------------------------------------
def is_checkpoint_or_empty(path: Path) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return not names or MANIFEST in names


def check_destination(dest: Path, force: bool) -> None:
    """Refuse, before anything is done, a destination that may not receive a checkpoint.

    :raise UsageError: ``dest`` exists (without ``force``), or is not a checkpoint
    """
    if not dest.parent.is_dir():
        raise UsageError(f"checkpoint directory '{dest}': its parent {dest.parent} does"
                         " not exist", hint="create it first")
    if not os.path.lexists(dest):
        return
    if not force:
        raise UsageError(f"checkpoint directory '{dest}' already exists",
                         hint="give -F to replace it, or choose another DIR")
    if dest.is_symlink() or not dest.is_dir() or not is_checkpoint_or_empty(dest):
        raise UsageError(f"'{dest}' exists and is not a checkpoint: -F only replaces a"
                         " checkpoint", hint="choose another DIR")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(dest: Path) -> None:
    """Remove staging directories of ``dest`` left by writers that died on this host."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(dest.parent):
            m = _STAGING_RE.match(entry.name)
            if m and m["name"] == dest.name and not _alive(int(m["pid"])):
                fsutil.remove_tree(Path(entry.path))


def make_staging(dest: Path) -> Path:
    """A new private (0700) staging directory next to ``dest``."""
    remove_stale_staging(dest)
    staging = dest.parent / f".{dest.name}.ckpt-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        staging.mkdir(mode=0o700)
    except OSError as err:
        raise fsutil.os_error(err, f"cannot create the checkpoint directory next to"
                              f" {dest}") from err
    return staging


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """renameat2(2); OSError(ENOSYS/EINVAL) where the kernel, libc or file system lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd = -100
    if func(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def commit(staging: Path, dest: Path, force: bool) -> None:
    """Make the complete checkpoint in ``staging`` appear as ``dest`` in one step.

    Without ``force`` a ``dest`` that appeared meanwhile is never replaced; with it, an
    existing checkpoint is exchanged with the new one, then removed.

    :raise UsageError: ``dest`` exists (without ``force``) or is not a checkpoint
    """
    fsutil.fsync_dir(staging)
    if force and os.path.lexists(dest):
        check_destination(dest, force=True)
        try:
            _renameat2(staging, dest, _RENAME_EXCHANGE)
        except OSError as err:
            if err.errno not in (errno.ENOSYS, errno.EINVAL):
                raise fsutil.os_error(err, f"cannot replace {dest}") from err
            # no exchange here: move the old one aside first (a crash between the two
            # renames leaves it there, under a hidden name, and no half checkpoint)
            aside = staging.with_name(staging.name + ".old")
            os.rename(dest, aside)
            os.rename(staging, dest)
            staging = aside
        fsutil.fsync_dir(dest.parent)
        fsutil.remove_tree(staging)  # the old checkpoint now
        return
    try:
        _renameat2(staging, dest, _RENAME_NOREPLACE)
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise UsageError(f"checkpoint directory '{dest}' already exists",
                             hint="give -F to replace it, or choose another DIR") from None
        if err.errno not in (errno.ENOSYS, errno.EINVAL):
            raise fsutil.os_error(err, f"cannot rename the checkpoint to {dest}") from err
        if os.path.lexists(dest):
            raise UsageError(f"checkpoint directory '{dest}' already exists",
                             hint="give -F to replace it, or choose another DIR") from None
        os.rename(staging, dest)
    fsutil.fsync_dir(dest.parent)


def discard(staging: Path) -> None:
    fsutil.remove_tree(staging)

