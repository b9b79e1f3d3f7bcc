"""Crash-safe file operations: atomic writes and directory swaps, directory fsync, flock-based
locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import time
from collections.abc import Iterator
from typing import Any
from pathlib import Path

from pcocc.errors import Busy, PcoccError, PermissionDenied


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing out the dirty pages of ``fd`` (``length`` bytes from
    ``offset``; 0: to the end), without waiting (``sync_file_range``, which the os module
    lacks): a head start for the fsync that makes the file durable, which is still needed.
    The pages stay cached. Does nothing where the call is missing or fails."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


@functools.cache
def _sync_file_range() -> Any:
    import ctypes  # here: only the writers of large files need it

    fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if fn is not None:
        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return fn


def tmp_name(path: Path) -> Path:
    """A hidden, unique sibling name for writing ``path`` before renaming it in."""
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def write_atomic(
    path: str | os.PathLike, data: bytes | str, mode: int = 0o644, *, sync_dir: bool = True,
    durable: bool = True,
) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The data is written to a sibling temporary file, fsynced, renamed over ``path``, and the
    directory is fsynced (unless ``sync_dir`` is false: then a power loss may undo the
    rename, never leave an empty file). A failure (including a full disk) leaves ``path``
    untouched. ``durable=False`` syncs nothing, for files that do not outlive a boot (the
    runtime directory's): running processes still never see half a file.
    """
    view = memoryview(data.encode() if isinstance(data, str) else data)
    with atomic_fd(path, mode, sync_dir=sync_dir and durable, durable=durable) as fd:
        while view:
            view = view[os.write(fd, view):]


def copy_sparse(src: str | os.PathLike, dst: str | os.PathLike, mode: int = 0o600) -> None:
    """Copy ``src`` to the new file ``dst`` (holes kept where the file system allows),
    then fsync it. ``dst`` must not exist (a disk image copied over another is lost)."""
    from pcocc import proc  # here: only checkpoints copy disks

    if os.path.lexists(dst):
        raise PcoccError(f"cannot copy {src}: {dst} exists")
    proc.run(["cp", "--sparse=always", "--no-dereference", "--", src, dst],
             what=f"copy {src} to {dst}")
    os.chmod(dst, mode)
    with open(dst, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_fd(
    path: str | os.PathLike, mode: int = 0o600, *, sync_dir: bool = True, durable: bool = True
) -> Iterator[int]:
    """A descriptor open for writing on a new hidden sibling of ``path``: when the block
    ends normally, the file is fsynced and renamed to ``path`` (then the directory is
    fsynced, unless ``sync_dir`` is false; with ``durable=False``, nothing is fsynced); on
    any error or interruption it is removed.
    For writers that need a descriptor, e.g. another process that writes the file (QEMU
    through ``getfd``); :func:`write_atomic` for bytes.

    :raise PermissionDenied: the directory of ``path`` is not writable
    :raise PcoccError: it does not exist, or another failure to create the file
    """
    path = Path(path)
    tmp = tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except OSError as err:
        raise os_error(err, f"cannot write {path}") from err
    try:
        try:
            yield fd
            if durable:
                os.fsync(fd)
            os.fchmod(fd, mode)  # umask must not change the wanted mode
            os.replace(tmp, path)
        finally:
            os.close(fd)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise os_error(err, f"cannot write {path}") from err
        raise
    if sync_dir:
        fsync_dir(path.parent)


def remove_tree(path: Path) -> bool:
    """Remove a file, symlink or tree, also one with read-only directories in it (left by
    container runtimes and image unpackers). True when nothing is left."""
    import shutil  # here: most commands never remove a tree

    if not path.is_dir() or path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return not os.path.lexists(path)

    def retry_writable(func, name, _exc) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            if func in (os.open, os.scandir, os.listdir):  # a directory we may not list
                os.chmod(name, 0o700)  # (overlayfs leaves its work/work so, not empty)
                shutil.rmtree(name, onerror=retry_writable)
            else:
                func(name)

    shutil.rmtree(path, onerror=retry_writable)
    return not os.path.lexists(path)


def os_error(err: OSError, what: str) -> PcoccError:
    """Turn an OSError into a one-line pcocc error that says what to do."""
    reason = err.strerror or str(err)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{what}: {reason}", hint="check the permissions of that path")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return PcoccError(f"{what}: {reason}", hint="free some space (see 'pcocc image repo gc')")
    return PcoccError(f"{what}: {reason}")


@contextlib.contextmanager
def locked(
    lock_path: str | os.PathLike,
    *,
    shared: bool = False,
    wait_s: float | None = 60.0,
    what: str = "the lock",
) -> Iterator[None]:
    """Hold an flock on ``lock_path`` (created 0666 so that group repos can share it).

    :param wait_s: give up after this many seconds with ``Busy``; None waits forever
    """
    lock_path = Path(lock_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EROFS) and lock_path.exists():
            fd = os.open(lock_path, os.O_RDONLY)
        else:
            raise os_error(err, f"cannot open {lock_path}") from err
    op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise Busy(
                        f"{what} ({lock_path}) is held by another process",
                        hint="another pcocc command is writing; try again when it ends",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    import ctypes  # here: only the commands that publish a directory need it

    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def exchange_or_rename(src: Path, dst: Path, *, replace: bool) -> None:
    """Move the directory ``src`` to ``dst`` in one rename, then fsync their parent.

    Without ``replace``, ``dst`` must not exist (else FileExistsError, nothing moved). With
    it, an existing ``dst`` is exchanged with ``src``: readers of ``dst`` see the old tree or
    the new one, and the old tree is left at ``src`` for the caller to remove. Where the
    kernel or the file system lacks ``renameat2``, this falls back to plain renames (then
    ``dst`` is missing for an instant, and an empty ``dst`` made meanwhile is replaced).
    """
    try:
        _renameat2(src, dst, _RENAME_EXCHANGE if replace else _RENAME_NOREPLACE)
    except OSError as err:
        if replace and err.errno == errno.ENOENT and os.path.lexists(src):
            # dst went away meanwhile: a plain move will do
            return exchange_or_rename(src, dst, replace=False)
        if err.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        if not replace:
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
            os.rename(src, dst)
        else:
            aside = tmp_name(dst)
            os.rename(dst, aside)
            os.rename(src, dst)
            os.rename(aside, src)
    fsync_dir(dst.parent)
