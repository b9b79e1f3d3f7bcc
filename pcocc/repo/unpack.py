"""Safe extraction of OCI image layers into a root filesystem.

Layers come from images that users import from anywhere, so every tar member is checked
before anything is written, and nothing is ever created through a symbolic link:

- member names are relative paths without ``..``; absolute names and ``..`` are refused;
- parent directories are resolved one component at a time below the root with
  ``O_NOFOLLOW``; a symbolic link found on the way is resolved *inside* the root (an
  absolute target or a ``..`` that climbs above the root stays at the root), like a runtime
  does once the root is its ``/``. So ``lib -> /usr/lib`` from a lower layer works, and a
  link never leads a write out of the root;
- a member whose path goes through a symbolic link created *by the same layer* is refused:
  tar tools never produce that, it is the classic "symlink then write" attack;
- hard links must name a path inside the root (same rules as member names) that exists;
- files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` after removing what was there;
- device nodes are never created, whoever runs pcocc: they are skipped with a warning
  (runtimes provide ``/dev``, and a cache must not hold host device nodes);
- OCI whiteouts: ``.wh.NAME`` removes NAME from lower layers, ``.wh..wh..opq`` empties its
  directory of lower-layer content; entries of the same layer are kept.

As a non-root user, ownership is not applied, directories get ``u+rwx`` so that later
layers and cache cleanup can write into them, and modes lose what would hand the user's
identity or files to others (:func:`safe_mode`, as tar does for a non-root user): setuid
and setgid, the sticky bit of non-directories, write permission for group and others.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from pcocc import proc
from pcocc.errors import Corrupt
from pcocc.fsutil import os_error
from pcocc.repo.model import OciImage
from pcocc.repo.ocispec import LAYER_MEDIA_TYPES, compression

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def safe_mode(mode: int, *, is_dir: bool, is_root: bool) -> int:
    """The permission bits to give a member of mode ``mode``.

    root keeps them as they are. Anyone else owns every file it unpacks: a setuid or setgid
    bit would run the file with that user's identity for whoever can reach it, so it is
    dropped, with the sticky bit of non-directories and write access for group and others;
    directories get ``u+rwx`` (the unpacker must be able to fill and clean them).
    """
    mode &= 0o7777
    if is_root:
        return mode
    mode &= ~(stat.S_ISUID | stat.S_ISGID | 0o022)
    if is_dir:
        return mode | 0o700
    return mode & ~stat.S_ISVTX


class UnsafeLayer(Corrupt):
    """A layer member that would write outside the root or is malformed."""


def unpack_image(image: OciImage, blob_path: Callable[[str], Path], rootfs: Path) -> list[str]:
    """Apply every layer of ``image`` in order into the existing directory ``rootfs``.

    :return: the members that were skipped (device nodes), as "layer: member"
    :raise UnsafeLayer: a member is unsafe; the message names the layer and the member
    """
    skipped: list[str] = []
    for i, layer in enumerate(image.manifest.get("layers", [])):
        media_type = layer.get("mediaType", "")
        digest = layer["digest"]
        if media_type and media_type not in LAYER_MEDIA_TYPES:
            raise Corrupt(
                f"layer {i} ({digest}) of image {image.manifest_digest}: "
                f"unsupported media type '{media_type}'"
            )
        skipped += apply_layer(blob_path(digest), rootfs, name=f"layer {i} ({digest[:19]})")
    return skipped


def apply_layer(layer: Path, rootfs: Path, *, name: str | None = None) -> list[str]:
    """Apply one layer tarball (plain, gzip or zstd) on top of ``rootfs``.

    :param name: how to call the layer in messages (default: the file name)
    :return: the members that were skipped (device nodes)
    :raise UnsafeLayer: naming the layer and the member
    """
    label = name or layer.name
    try:
        root_fd = os.open(rootfs, _DIR_FLAGS)
    except OSError as err:
        raise os_error(err, f"cannot open the root filesystem {rootfs}") from err
    applier = _Applier(root_fd, label)
    try:
        with _tar_stream(layer, label) as tar:
            for member in tar:
                try:
                    applier.apply(tar, member)
                except OSError as err:
                    raise os_error(err, f"{label}: cannot extract member '{member.name}'") from err
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise Corrupt(f"{label}: not a valid tar archive: {err}", hint=_HINT) from err
    finally:
        applier.close()
        os.close(root_fd)
    return applier.skipped


# --- reading the stream -------------------------------------------------------------------


@contextlib.contextmanager
def _tar_stream(layer: Path, label: str) -> Iterator[tarfile.TarFile]:
    with open(layer, "rb") as f:
        kind = compression(f.read(4))
        f.seek(0)
        if kind == "gzip":
            with tarfile.open(fileobj=f, mode="r|gz") as tar:
                yield tar
        elif kind == "zstd":
            with _zstd_reader(f, label) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
                yield tar
        else:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                yield tar


@contextlib.contextmanager
def _zstd_reader(f: IO[bytes], label: str) -> Iterator[IO[bytes]]:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        zstandard = None
    if zstandard is not None:
        with zstandard.ZstdDecompressor().stream_reader(f) as reader:
            yield io.BufferedReader(reader)
        return
    os.lseek(f.fileno(), 0, os.SEEK_SET)  # the buffered reader may have read ahead
    child = proc.spawn(["zstd", "-dc"], stdin=f.fileno(), stdout=proc.PIPE)
    assert child.stdout is not None
    try:
        yield child.stdout
        while child.stdout.read(1 << 20):
            pass
    except BaseException:
        child.stdout.close()
        proc.stop(child, timeout_s=5.0)
        raise
    child.stdout.close()
    try:
        status = child.wait(timeout=60)
    except proc.TimeoutExpired:
        status = proc.stop(child, timeout_s=5.0)
    if status != 0:
        raise Corrupt(f"{label}: zstd could not decompress the layer (exit status {status})")


# --- applying members ---------------------------------------------------------------------


def split_member_name(name: str, label: str, what: str = "member") -> list[str]:
    """Components of a tar member name, refusing absolute paths and ``..``."""
    if name.startswith("/"):
        raise UnsafeLayer(f"{label}: {what} '{name}' is an absolute path", hint=_HINT)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"{label}: {what} '{name}' contains '..'", hint=_HINT)
    return parts


_HINT = "the image is malformed or malicious; rebuild it or get it from a trusted source"


class _Applier:
    """State of one layer being applied: which paths it wrote, which links it made."""

    def __init__(self, root_fd: int, label: str):
        self.root_fd = root_fd
        self.label = label
        self.is_root = os.geteuid() == 0
        self.written: set[tuple[str, ...]] = set()
        self.new_symlinks: set[tuple[str, ...]] = set()
        self.skipped: list[str] = []
        self._cached: tuple[tuple[str, ...], tuple[str, ...], int] | None = None

    def close(self) -> None:
        self._drop_cache()

    def _drop_cache(self) -> None:
        if self._cached is not None:
            os.close(self._cached[2])
            self._cached = None

    def _fail(self, member: str, why: str) -> UnsafeLayer:
        return UnsafeLayer(f"{self.label}: member '{member}' {why}", hint=_HINT)

    # Parent directories are resolved inside the root; the result is (fd, real path).
    def _resolve_dir(
        self, parts: Sequence[str], member: str, *, create: bool
    ) -> tuple[int, tuple[str, ...]] | None:
        key = tuple(parts)
        if self._cached is not None and self._cached[0] == key:
            return os.dup(self._cached[2]), self._cached[1]
        stack: list[str] = []
        fd = os.dup(self.root_fd)
        todo = list(parts)
        hops = 0
        try:
            while todo:
                comp = todo.pop(0)
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if stack:
                        stack.pop()
                        os.close(fd)
                        fd = self._open_path(stack)
                    continue
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    self.written.add((*stack, comp))
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise self._fail(
                            member, f"needs '{'/'.join((*stack, comp))}' to be a directory"
                        ) from None
                    if (*stack, comp) in self.new_symlinks:
                        raise self._fail(
                            member,
                            f"is written through the symbolic link "
                            f"'{'/'.join((*stack, comp))}' created by the same layer",
                        ) from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise self._fail(member, "goes through too many symbolic links") from None
                    target = os.readlink(comp, dir_fd=fd)
                    if target.startswith("/"):
                        stack = []
                        os.close(fd)
                        fd = os.dup(self.root_fd)
                    todo = target.split("/") + todo
                    continue
                os.close(fd)
                fd = nfd
                stack.append(comp)
        except BaseException:
            os.close(fd)
            raise
        self._drop_cache()
        self._cached = (key, tuple(stack), os.dup(fd))
        return fd, tuple(stack)

    def _open_path(self, stack: Sequence[str]) -> int:
        fd = os.dup(self.root_fd)
        for comp in stack:
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = nfd
        return fd

    def _remove(self, pfd: int, name: str, *, keep_dir: bool) -> bool:
        """Remove ``name`` unless it is a directory and ``keep_dir``; True if a dir is kept."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode) and keep_dir:
            return True
        self._drop_cache()  # the cached parent may have gone through what we remove
        if stat.S_ISDIR(st.st_mode):
            self._make_writable(pfd, name)
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return False

    def _make_writable(self, pfd: int, name: str) -> None:
        """As non-root, give u+rwx to a tree so that rmtree can empty it."""
        if self.is_root:
            return
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        try:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o700)
            for entry in os.scandir(fd):
                if entry.is_dir(follow_symlinks=False):
                    self._make_writable(fd, entry.name)
        finally:
            os.close(fd)

    def apply(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = split_member_name(m.name, self.label)
        if not parts:
            return  # the root directory itself: keep ours
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, m.name)
            return
        resolved = self._resolve_dir(parts[:-1], m.name, create=True)
        assert resolved is not None
        pfd, pstack = resolved
        key = (*pstack, base)
        try:
            if m.isdir():
                self._dir(pfd, base, m)
            elif m.isreg():
                self._file(tar, pfd, base, m)
            elif m.issym():
                self._remove(pfd, base, keep_dir=False)
                os.symlink(m.linkname, base, dir_fd=pfd)
                self._own(pfd, base, m)
                self.new_symlinks.add(key)
            elif m.islnk():
                self._hardlink(pfd, base, m)
            elif m.isfifo():
                self._remove(pfd, base, keep_dir=False)
                os.mkfifo(base, 0o600, dir_fd=pfd)
                self._own(pfd, base, m)
                self._chmod(pfd, base, m.mode)
            elif m.ischr() or m.isblk():
                log.warning("%s: skipping device node '%s'", self.label, m.name)
                self.skipped.append(f"{self.label}: {m.name}")
                return
            else:
                raise self._fail(m.name, f"has an unsupported tar type {m.type!r}")
        finally:
            os.close(pfd)
        self.written.add(key)

    def _whiteout(self, parts: list[str], member: str) -> None:
        resolved = self._resolve_dir(parts[:-1], member, create=False)
        if resolved is None:
            return  # nothing below to hide
        pfd, pstack = resolved
        try:
            if parts[-1] == OPAQUE_WHITEOUT:
                for name in os.listdir(pfd):
                    if (*pstack, name) not in self.written:
                        self._remove(pfd, name, keep_dir=False)
            else:
                name = parts[-1][len(WHITEOUT_PREFIX) :]
                if not name or name in (".", ".."):
                    raise self._fail(member, "is an invalid whiteout")
                if (*pstack, name) not in self.written:
                    self._remove(pfd, name, keep_dir=False)
        finally:
            os.close(pfd)

    def _dir(self, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        if not self._remove(pfd, base, keep_dir=True):
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, _DIR_FLAGS, dir_fd=pfd)
        try:
            if self.is_root:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, safe_mode(m.mode, is_dir=True, is_root=self.is_root))
        finally:
            os.close(fd)

    def _file(self, tar: tarfile.TarFile, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        self._remove(pfd, base, keep_dir=False)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=pfd)
        with os.fdopen(fd, "wb") as out:
            src = tar.extractfile(m)
            if src is not None:
                shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            if self.is_root:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, safe_mode(m.mode, is_dir=False, is_root=self.is_root))
            os.utime(fd, (m.mtime, m.mtime))

    def _hardlink(self, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        tparts = split_member_name(m.linkname, self.label, what=f"hard link target of '{m.name}'")
        if not tparts:
            raise self._fail(m.name, "is a hard link to the root directory")
        resolved = self._resolve_dir(tparts[:-1], m.name, create=False)
        if resolved is None:
            raise self._fail(m.name, f"is a hard link to '{m.linkname}', which does not exist")
        tfd, _ = resolved
        try:
            try:
                st = os.stat(tparts[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise self._fail(
                    m.name, f"is a hard link to '{m.linkname}', which does not exist"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise self._fail(m.name, f"is a hard link to the directory '{m.linkname}'")
            if _exists(pfd, base) and os.path.samestat(
                st, os.stat(base, dir_fd=pfd, follow_symlinks=False)
            ):
                return  # already the same file
            self._remove(pfd, base, keep_dir=False)
            os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _own(self, pfd: int, base: str, m: tarfile.TarInfo) -> None:
        if self.is_root:
            os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)

    def _chmod(self, pfd: int, base: str, mode: int) -> None:
        # chmod through dir_fd would follow a link; base was just created and is no link.
        os.chmod(base, safe_mode(mode, is_dir=False, is_root=self.is_root), dir_fd=pfd)


def _exists(pfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
