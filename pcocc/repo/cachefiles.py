"""File helpers of the container cache: deleting a tree a non-root unpack left read-only,
the disk usage of an entry, whether a lock file is held."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def rmtree_forced(path: Path) -> None:
    """Delete a tree; as non-root, first give u+rwx to directories left read-only."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    if os.geteuid() != 0:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        for dirpath, dirnames, _ in os.walk(path):  # top-down: fixed before entered
            for d in dirnames:
                p = os.path.join(dirpath, d)
                with contextlib.suppress(OSError):
                    if not os.path.islink(p):
                        os.chmod(p, os.lstat(p).st_mode & 0o7777 | 0o700)
    import shutil  # only here: a warm run does not pay for zlib, bz2 and lzma

    shutil.rmtree(path)


def disk_usage(path: Path) -> int:
    """Bytes used on disk by a file or a tree (hard links counted once)."""
    st = path.lstat()
    if not path.is_dir():
        return st.st_blocks * 512
    seen: set[tuple[int, int]] = set()
    total = st.st_blocks * 512
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            s = os.lstat(os.path.join(dirpath, name))
            if s.st_nlink > 1:
                if (s.st_dev, s.st_ino) in seen:
                    continue
                seen.add((s.st_dev, s.st_ino))
            total += s.st_blocks * 512
    return total


def unheld(path: Path) -> bool:
    """True when no process holds an flock on ``path`` (or it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
