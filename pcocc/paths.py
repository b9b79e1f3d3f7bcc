"""Every run, state and cache directory of a user, and the one policy they all follow.

A user's directory is private: a real directory (never a symbolic link) owned by the user,
mode 0700. :func:`private_dir` creates it that way and checks it *after* creating it, with
``lstat`` and an ``O_NOFOLLOW`` open, because another user may have made it first (a name
in ``/tmp`` is anyone's to take) or may race us. One of ours that is open to others is made
0700 again, with a notice; anything else is refused with the path and what to do.

Where the directories are:

- runtime dir (containers: runtime state, probe cache, mounts, sockets):
  ``$XDG_RUNTIME_DIR/pcocc`` when ``$XDG_RUNTIME_DIR`` is a private directory of the user,
  else ``${TMPDIR:-/tmp}/pcocc-<uid>``;
- run root (clusters and VMs): ``$PCOCC_RUN_DIR``, else ``$XDG_RUNTIME_DIR/pcocc`` as
  above, else ``~/.pcocc/run`` (it must outlive a login session: use the home);
- state dir (pod records, run requests): ``${XDG_STATE_HOME:-~/.local/state}/pcocc``;
- cache dir (parsed configuration files): ``${XDG_CACHE_HOME:-~/.cache}/pcocc``.

Repositories and the container cache have their paths in repos.yaml: :func:`data_dir`
applies the same modes to them, but follows a link and leaves the admins' directories (and
a group's repository) as their owners made them.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from pcocc.errors import PermissionDenied
from pcocc.fsutil import os_error

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def private_dir(path: str | os.PathLike[str], *, what: str = "directory",
                hint: str | None = None) -> Path:
    """Create ``path`` (missing parents too) mode 0700 if needed, then check that it is a
    private directory of ours: not a symbolic link, owned by us; group or other access is
    removed (with a notice).

    :param what: how to call the directory in messages ("runtime directory")
    :param hint: what to do when it is refused (default: remove it or use another path)
    :raise PermissionDenied: it is a symbolic link, not a directory, or another user's
    """
    path = Path(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise os_error(err, f"cannot create {what} {path}") from err
    except OSError as err:
        raise os_error(err, f"cannot create {what} {path}") from err
    check_private_dir(path, what=what, hint=hint)
    return path


def check_private_dir(path: Path, *, what: str = "directory", hint: str | None = None) -> None:
    """Check an existing ``path`` as :func:`private_dir` does (0700 made again if ours)."""
    problem = _problem(path)
    if problem:
        raise PermissionDenied(
            f"{what} {path} {problem}: pcocc keeps its files only in private directories",
            hint=hint or f"remove {path} (ask its owner or an admin if it is not yours),"
            " or configure another path",
        )
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced meanwhile
            raise PermissionDenied(f"{what} {path} changed while pcocc checked it") from err
        raise os_error(err, f"cannot open {what} {path}") from err
    try:
        _make_private(fd, path, what)
    finally:
        os.close(fd)


def _make_private(fd: int, path: str | os.PathLike[str], what: str) -> None:
    """fchmod 0700 the open directory ``fd`` of ours when others may use it (a notice)."""
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise PermissionDenied(f"{what} {path} changed while pcocc checked it")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
            log.warning(
                "%s %s was open to other users (mode %04o): made it 0700",
                what, path, stat.S_IMODE(st.st_mode),
            )  # fmt: skip
    except OSError as err:
        raise os_error(err, f"cannot make {what} {path} private") from err


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be a private directory of ours (by ``lstat``), or None."""
    try:
        st = os.lstat(path)
    except OSError as err:
        return f"cannot be checked ({err.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.getuid():
        return f"belongs to another user (uid {st.st_uid})"
    return None


def is_private_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory of ours (not a link) that only we may use."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
    )


def data_dir(path: str | os.PathLike[str], *, what: str, foreign_ok: bool) -> Path:
    """Create or check a repository or container cache directory named in repos.yaml.

    Unlike :func:`private_dir`, a symbolic link is followed: the path comes from the user's
    or the admins' configuration, and users link such directories to bigger file systems.
    A new one is 0700 (root's keep the umask: admins make repositories for everyone); one
    of ours open to others is made 0700 (see :func:`tighten`). Another user's directory is
    used as its owner made it when ``foreign_ok`` (a repository of the admins or of a
    group); otherwise only root's is, when others cannot write to it (a cache of the admins).

    :raise PermissionDenied: not a directory, or another user's that we may not use
    """
    path = Path(path)
    mode = 0o777 if os.geteuid() == 0 else 0o700
    try:
        try:
            os.mkdir(path, mode)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as err:
        raise os_error(err, f"cannot create {what} {path}") from err
    try:
        st = os.stat(path)
    except OSError as err:
        raise os_error(err, f"cannot check {what} {path}") from err
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(f"{what} {path} is not a directory", hint="fix its path")
    if st.st_uid != os.getuid():
        if foreign_ok or (st.st_uid == 0 and not st.st_mode & 0o002):
            return path
        raise PermissionDenied(
            f"{what} {path} belongs to another user (uid {st.st_uid})",
            hint="configure a path of yours (cache: path in your repos.yaml)",
        )
    tighten(path, what=what)
    return path


def tighten(path: str | os.PathLike[str], *, what: str) -> None:
    """Make an existing directory of ours (followed if a link) 0700 again when group or
    others may use it, with a notice. root's directories, and others', keep their mode."""
    if os.geteuid() == 0:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # missing: the caller reports it
    try:
        if os.fstat(fd).st_uid == os.getuid():
            _make_private(fd, path, what)
    finally:
        os.close(fd)


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def xdg_runtime_base() -> Path | None:
    """``$XDG_RUNTIME_DIR`` when it is a private directory of ours, else None."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and is_private_dir(xdg):
        return Path(xdg)
    if xdg:
        log.debug("XDG_RUNTIME_DIR=%s is not a private directory of ours: not used", xdg)
    return None


def tmp_dir() -> Path:
    """``${TMPDIR:-/tmp}/pcocc-<uid>``, private (also short enough for socket paths)."""
    base = os.environ.get("TMPDIR") or "/tmp"
    path = Path(base) / f"pcocc-{os.getuid()}"
    return private_dir(
        path,
        what="runtime directory",
        hint=f"set XDG_RUNTIME_DIR to a private directory of yours (mode 700), or have"
        f" {path} removed (by its owner or an admin) and run again",
    )


def runtime_dir() -> Path:
    """The caller's private runtime directory (see the module docstring)."""
    base = xdg_runtime_base()
    if base is None:
        return tmp_dir()
    return private_dir(base / "pcocc", what="runtime directory")


def run_root(*, create: bool = False) -> Path:
    """The directory of the user's cluster run directories (see the module docstring)."""
    path = run_roots()[0]
    return private_dir(path, what="run directory") if create else path


def run_roots() -> list[Path]:
    """The run root of this environment first, then the others a process of this user may
    have used on this host (another shell may have no ``$XDG_RUNTIME_DIR``, for instance)."""
    roots = []
    override = os.environ.get("PCOCC_RUN_DIR")
    if override:
        roots.append(Path(override))
    base = xdg_runtime_base()
    if base is not None:
        roots.append(base / "pcocc")
    roots.append(_home() / ".pcocc" / "run")
    return roots


def state_dir(*, create: bool = False) -> Path:
    """``${XDG_STATE_HOME:-~/.local/state}/pcocc``: pod records and run requests."""
    base = os.environ.get("XDG_STATE_HOME") or _home() / ".local" / "state"
    path = Path(base) / "pcocc"
    return private_dir(path, what="state directory") if create else path


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/pcocc``: pcocc's own caches of the user (each made
    with :func:`private_dir`; the container cache, by default here too, with
    :func:`data_dir`)."""
    base = os.environ.get("XDG_CACHE_HOME") or _home() / ".cache"
    return Path(base) / "pcocc"
