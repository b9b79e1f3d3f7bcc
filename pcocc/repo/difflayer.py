"""Image layers written by pcocc: a gzip tar whose uncompressed digest is its diff_id.

:func:`write_layer` writes any layer (the SIF import uses it for a whole root file
system); :func:`write_diff_layer` turns the upper directory of an overlayfs
(:mod:`pcocc.ctr.rootlayer`) into a layer over the image the overlay's lower directory came
from, with the OCI image spec's whiteouts:

- a deleted file or directory is, in the upper directory, a 0/0 character device (or, on
  kernels that write them, a file with the ``overlay.whiteout`` xattr): it becomes an empty
  file ``.wh.NAME`` next to where NAME was;
- a directory made opaque (deleted, then created again: nothing of the lower one shows)
  carries the ``trusted.overlay.opaque`` or ``user.overlay.opaque`` xattr ``y``: its entry
  is followed by an empty ``.wh..wh..opq`` inside it.

The walk never follows a symbolic link (symlinks are stored as links), every member name is
built from directory entries (no ``/``, ``.`` or ``..`` in a component: no path leaves the
layer), and a name that would read as a whiteout on unpacking (``.wh.*``) is refused.
Sockets and device nodes other than whiteouts are left out. Extended attributes are not
stored. Written by a user other than root, every member is owned by root (as unpacking
makes every file the unpacker's) and loses its setuid and setgid bits.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import stat
import tarfile
from collections.abc import Collection, Iterator
from pathlib import Path

from pcocc.errors import Corrupt
from pcocc.repo.digest import HashingWriter

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_XATTR_NS = ("trusted.overlay.", "user.overlay.")
#: overlay features whose meaning a plain tar cannot carry: refused, never guessed
_UNSUPPORTED = ("redirect", "metacopy")


@contextlib.contextmanager
def write_layer(out: Path) -> Iterator[tuple[tarfile.TarFile, HashingWriter]]:
    """A tar stream into the new gzip file ``out`` (reproducible gzip header); after the
    block, ``writer.digest()`` is the layer's diff_id."""
    with (
        open(out, "xb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0, filename="") as gz,
    ):
        hw = HashingWriter(gz)
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            yield tar, hw
    with contextlib.suppress(OSError):
        os.chmod(out, 0o644)


def write_diff_layer(upper: Path, out: Path, mount_points: Collection[str] = ()) -> str:
    """Write the changes recorded in the overlay upper directory ``upper`` as the gzip
    layer ``out``; return its diff_id.

    :param mount_points: where the container had mounts (``/proc``, volumes...): an empty
        directory there was made or touched by the runtime, not by the app (which saw the
        mount instead), and is left out
    :raise Corrupt: a name that cannot be stored, an overlay feature a layer cannot carry
    """
    skip = {p.strip("/") for p in mount_points}
    with write_layer(out) as (tar, hw):
        _DiffWalk(tar, os.geteuid() == 0, skip).walk(str(upper), "")
    return hw.digest()


class _DiffWalk:
    def __init__(self, tar: tarfile.TarFile, is_root: bool, skip: set[str]):
        self.tar = tar
        self.is_root = is_root
        self.skip = skip

    def walk(self, dir_path: str, prefix: str) -> None:
        with os.scandir(dir_path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if name.startswith(WHITEOUT_PREFIX) or "/" in name or name in (".", ".."):
                raise Corrupt(
                    f"cannot export {prefix}{name}: a name starting with "
                    f"'{WHITEOUT_PREFIX}' means a deletion in an image layer",
                    hint="rename or remove that file in the pod, or start from another pod",
                )
            member = prefix + name
            st = entry.stat(follow_symlinks=False)
            attrs = _overlay_xattrs(entry.path)
            bad = [k for k in attrs if k.rsplit(".", 1)[-1] in _UNSUPPORTED]
            if bad:
                raise Corrupt(
                    f"cannot export {member}: it uses the overlayfs feature {bad[0]}",
                    hint="mount overlays without redirect_dir and metacopy",
                )
            if _is_whiteout(st, attrs):
                self._empty(prefix + WHITEOUT_PREFIX + name, st)
            elif stat.S_ISDIR(st.st_mode):
                opaque = any(attrs.get(ns + "opaque") == b"y" for ns in _XATTR_NS)
                if member in self.skip and not opaque and not os.listdir(entry.path):
                    continue
                self._add(entry.path, member, st)
                if opaque:
                    self._empty(f"{member}/{OPAQUE_MARKER}", st)
                self.walk(entry.path, member + "/")
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                self._add(entry.path, member, st)
            else:
                log.info("not exported (socket or device): %s", member)

    def _owned(self, info: tarfile.TarInfo, st: os.stat_result) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        if self.is_root:
            info.uid, info.gid = st.st_uid, st.st_gid
        else:
            info.uid = info.gid = 0
            info.mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return info

    def _add(self, path: str, member: str, st: os.stat_result) -> None:
        info = self._owned(self.tar.gettarinfo(path, arcname=member), st)
        if not info.isreg():
            self.tar.addfile(info)
            return
        # the file walked, not what a swapped-in symlink or fifo would lead to
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not os.path.samestat(os.fstat(fd), st):
                raise Corrupt(f"cannot export {member}: it changed while being read",
                              hint="make sure no process of the pod is left, then retry")
            self.tar.addfile(info, f)

    def _empty(self, member: str, st: os.stat_result) -> None:
        info = tarfile.TarInfo(member)
        info.mode, info.mtime = 0o644, int(st.st_mtime)
        self.tar.addfile(self._owned(info, st))


def _overlay_xattrs(path: str) -> dict[str, bytes]:
    """The overlayfs xattrs of ``path``, not following a symlink:
    ``{"user.overlay.opaque": b"y", ...}``."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for key in names:
        if key.startswith(_XATTR_NS):
            with contextlib.suppress(OSError):
                out[key] = os.getxattr(path, key, follow_symlinks=False)
    return out


def _is_whiteout(st: os.stat_result, attrs: dict[str, bytes]) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return stat.S_ISREG(st.st_mode) and any(ns + "whiteout" in attrs for ns in _XATTR_NS)
