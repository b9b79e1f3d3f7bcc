"""Files that root reads or writes for a user, never through a path that user controls.

``pcocc admin etcd-user add USER --password-file ~USER/.pcocc/etcd-password`` runs as root on
a path in USER's home. Had root followed it, a ``~/.pcocc`` linked to a directory of root's
would have given USER a file of theirs in it, and a link in place of the file would have
made root read (or write) a file of root's. So the path is walked from ``/`` one component
at a time, each opened with ``O_NOFOLLOW`` relative to the one before:

- a symbolic link is followed only where root owns it and the directory that holds it, and
  only before the walk enters a directory of the user (a site's ``/home -> /export/home``);
- every directory belongs to root until one belongs to the user; from there on, every one
  belongs to the user, and so does the one that holds the file (to root when the file stays
  root's, for a user without a local account: then every directory is root's);
- missing directories are made 0700 (and given to the user below root's directories);
- the file is read only if it is a regular file of its owner, and written as a new file
  (``O_CREAT | O_EXCL | O_NOFOLLOW``, given to its owner with ``fchown``) renamed into place.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from pcocc.errors import PcoccError, PermissionDenied
from pcocc.fsutil import os_error, tmp_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINKS = 40


@dataclass(frozen=True)
class Owner:
    """Who a file and the directories that lead to it belong to."""

    name: str
    uid: int
    gid: int


ROOT = Owner("root", 0, 0)


def local_owner(user: str) -> Owner | None:
    """The local account ``user``, or None when there is none."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return Owner(user, entry.pw_uid, entry.pw_gid)


class _Walk:
    def __init__(self, path: Path, owner: Owner, what: str):
        self.path = path
        self.owner = owner
        self.what = what

    def refuse(self, where: str, why: str) -> PermissionDenied:
        return PermissionDenied(
            f"{self.what} {self.path}: {where} {why}; root does not follow a path that"
            f" {self.owner.name} controls",
            hint=f"make {where} a real directory of {self.owner.name} (no symbolic link),"
            " or give another path",
        )

    def open_parent(self, *, create: bool) -> int:
        """A descriptor of the directory that holds the file (the caller closes it)."""
        todo = list(Path(os.path.abspath(self.path)).parts[1:-1])
        done: list[str] = []
        fd = os.open("/", _DIR_FLAGS)
        in_user_dirs = False  # entered a directory of the user: no link followed after that
        links = 0
        try:
            while todo:
                name = todo.pop(0)
                where = "/" + "/".join([*done, name])
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise
                    st = self._mkdir(fd, name, in_user_dirs)
                if stat.S_ISLNK(st.st_mode):
                    if in_user_dirs or st.st_uid != 0 or os.fstat(fd).st_uid != 0:
                        raise self.refuse(where, "is a symbolic link")
                    links += 1
                    if links > MAX_LINKS:
                        raise self.refuse(where, "leads through too many symbolic links")
                    target = os.readlink(name, dir_fd=fd)
                    # root's links in root's directories: re-walk their target from /
                    full = os.path.normpath(os.path.join("/", *done, target))
                    todo = list(Path(full).parts[1:]) + todo
                    done = []
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise self.refuse(where, "is not a directory")
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                nst = os.fstat(nfd)
                os.close(fd)
                fd = nfd
                if (nst.st_dev, nst.st_ino) != (st.st_dev, st.st_ino):
                    raise self.refuse(where, "changed while root walked it")
                if nst.st_uid == self.owner.uid and self.owner.uid != 0:
                    in_user_dirs = True
                elif nst.st_uid != 0 or in_user_dirs:
                    raise self.refuse(where, f"belongs to uid {nst.st_uid}")
                done.append(name)
            if os.fstat(fd).st_uid != self.owner.uid:
                where = "/" + "/".join(done)
                raise self.refuse(where, f"does not belong to {self.owner.name}")
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _mkdir(self, fd: int, name: str, in_user_dirs: bool) -> os.stat_result:
        """Make a missing directory 0700; the user's unless the file stays root's."""
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        except FileExistsError:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)  # checked by the caller
        nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            if self.owner.uid != 0:
                os.fchown(nfd, self.owner.uid, self.owner.gid)
            return os.fstat(nfd)
        finally:
            os.close(nfd)


def read_file(path: Path, owner: Owner, *, what: str, limit: int = 65536) -> tuple[int, bytes]:
    """The mode and the first ``limit`` bytes of ``owner``'s regular file ``path``.

    :raise FileNotFoundError: the file (or a directory on the way) does not exist
    :raise PermissionDenied: a link, or a directory or file of someone else, on the way
    """
    walk = _Walk(path, owner, what)
    try:
        dfd = walk.open_parent(create=False)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise os_error(err, f"cannot read {what} {path}") from err
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path.name, flags, dir_fd=dfd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise walk.refuse(str(path), "is a symbolic link") from None
            if err.errno == errno.ENOENT:
                raise
            raise os_error(err, f"cannot read {what} {path}") from err
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PcoccError(f"{what} {path} is not a regular file")
            if st.st_uid != owner.uid:
                raise walk.refuse(str(path), f"belongs to uid {st.st_uid}")
            return st.st_mode, f.read(limit)
    finally:
        os.close(dfd)


def write_file(path: Path, data: bytes, owner: Owner, *, what: str, mode: int = 0o600) -> None:
    """Write ``owner``'s file ``path`` (mode ``mode``), creating missing directories 0700.

    :raise PermissionDenied: a link, or a directory of someone else, on the way
    """
    walk = _Walk(path, owner, what)
    tmp = tmp_name(path).name
    try:
        dfd = walk.open_parent(create=True)
    except OSError as err:
        raise os_error(err, f"cannot write {what} {path}") from err
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                if owner.uid != os.geteuid():
                    os.fchown(f.fileno(), owner.uid, owner.gid)
                os.fchmod(f.fileno(), mode)
            os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    except OSError as err:
        raise os_error(err, f"cannot write {what} {path}") from err
    finally:
        os.close(dfd)
