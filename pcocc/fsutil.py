"""Crash-safe file operations: atomic writes, directory fsync, flock-based locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pcocc.errors import Busy, PcoccError, PermissionDenied


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    """A hidden, unique sibling name for writing ``path`` before renaming it in."""
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def write_atomic(
    path: str | os.PathLike, data: bytes | str, mode: int = 0o644, *, sync_dir: bool = True
) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The data is written to a sibling temporary file, fsynced, renamed over ``path``, and the
    directory is fsynced (unless ``sync_dir`` is false: then a power loss may undo the
    rename, never leave an empty file). A failure (including a full disk) leaves ``path``
    untouched.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # umask must not weaken or strengthen the wanted mode
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise os_error(err, f"cannot write {path}") from err
        raise
    if sync_dir:
        fsync_dir(path.parent)


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
