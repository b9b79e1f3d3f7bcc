"""The only place that starts external programs.

``run`` waits for a program and raises typed errors; ``spawn`` starts a long-lived one in its
own session so that the whole process group can be stopped. Arguments are always lists.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pcocc.errors import ToolError, ToolMissing

log = logging.getLogger(__name__)

#: the process handle :func:`spawn` returns and the timeout :meth:`Popen.wait` raises, named
#: here so that callers need not import subprocess for their annotations and handlers
Popen = subprocess.Popen
TimeoutExpired = subprocess.TimeoutExpired
#: the stream settings of :func:`spawn`'s stdin/stdout/stderr
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL

#: Debian package that provides each external program, for ToolMissing hints.
PACKAGE_OF = {
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "crun": "crun",
    "runc": "runc",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "squashfuse": "squashfuse",
    "fusermount": "fuse3",
    "fusermount3": "fuse3",
    "gpg": "gpg",
    "gpgv": "gpgv",
    "genisoimage": "genisoimage",
    "salloc": "slurm-client",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
    "squeue": "slurm-client",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "ssh": "openssh-client",
    "scp": "openssh-client",
    "ssh-keygen": "openssh-client",
    "slirp4netns": "slirp4netns",
    "unshare": "util-linux",
    "newuidmap": "uidmap",
    "newgidmap": "uidmap",
}


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def ended(returncode: int) -> str:
    """How a process ended, for a message: ``exited with status 3`` or, for a Popen return
    code of -N, ``was killed by signal 9 (KILL)``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name.removeprefix("SIG")
        except ValueError:
            return f"was killed by signal {-returncode}"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


def _which(tool: str) -> str | None:
    """:func:`shutil.which` for a command, without importing shutil (which imports zlib, bz2
    and lzma: ~5 ms of a warm ``pcocc run``)."""
    if os.path.dirname(tool):
        candidates = [tool]
    else:
        dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
        candidates = [os.path.join(d or os.curdir, tool) for d in dirs]
    for path in candidates:
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def which(tool: str) -> str:
    """Absolute path of ``tool`` or ToolMissing naming the package to install."""
    path = _which(tool)
    if path is None:
        pkg = PACKAGE_OF.get(tool)
        hint = f"install the Debian package '{pkg}'" if pkg else "install it or fix PATH"
        raise ToolMissing(f"'{tool}' is not installed or not in PATH", tool=tool, hint=hint)
    return path


def _argv(argv: Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(argv, (str, bytes)):
        raise TypeError("commands are lists of arguments, not strings")
    return [os.fspath(a) for a in argv]


def run(
    argv: Sequence[str | os.PathLike],
    *,
    check: bool = True,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    input: str | None = None,
    what: str | None = None,
    capture: bool = True,
    pass_fds: Sequence[int] = (),
) -> Result:
    """Run a program to completion.

    :param what: a short description for error messages ("convert the image")
    :param pass_fds: descriptors the program inherits (e.g. a file it reads as /dev/fd/N)
    :raise ToolMissing: the program does not exist
    :raise ToolError: non-zero exit (with ``check``) or timeout; the message ends with
        the last lines of stderr
    """
    args = _argv(argv)
    exe = which(args[0]) if os.sep not in args[0] else args[0]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.Popen(
            [exe, *args[1:]],
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as err:
        raise ToolMissing(f"'{args[0]}' cannot be started: {err.strerror}", argv=args) from err
    try:
        out, err = proc.communicate(input=input, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise ToolError(
            f"{what or args[0]} did not finish within {timeout_s:g} s",
            argv=args, returncode=None, stderr=err or "",
        ) from None
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    res = Result(args, proc.returncode, out or "", err or "")
    if check and proc.returncode != 0:
        raise ToolError(
            f"{what or os.path.basename(args[0])} failed (exit status {proc.returncode})",
            argv=args, returncode=proc.returncode, stderr=res.stderr,
        )
    return res


def spawn(
    argv: Sequence[str | os.PathLike],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    stdout: int | None | object = subprocess.DEVNULL,
    stderr: int | None | object = subprocess.DEVNULL,
    log_path: str | os.PathLike | None = None,
    stdin: int | None | object = subprocess.DEVNULL,
    new_session: bool = True,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen:
    """Start a long-lived program in its own session; output to ``log_path`` if given."""
    args = _argv(argv)
    exe = which(args[0]) if os.sep not in args[0] else args[0]
    log.debug("spawn: %s", shlex.join(args))
    logf = None
    if log_path is not None:
        logf = open(Path(log_path), "ab", buffering=0)  # noqa: SIM115 - handed to the child
        stdout = stderr = logf
    try:
        return subprocess.Popen(
            [exe, *args[1:]],
            stdin=stdin, stdout=stdout, stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=new_session,
            pass_fds=tuple(pass_fds),
        )
    finally:
        if logf is not None:
            logf.close()


def replace_process(argv: Sequence[str]) -> None:
    """Run ``argv`` in place of this process (``exec``: its exit status is ours); returns
    only when the program cannot be started (ToolMissing, ToolError)."""
    args = _argv(argv)
    exe = which(args[0]) if os.sep not in args[0] else args[0]
    log.debug("exec: %s", shlex.join(args))
    try:
        os.execv(exe, args)
    except OSError as err:
        raise ToolError(f"cannot run {args[0]}: {err.strerror}", argv=args, returncode=-1,
                        stderr="") from err


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group that ``spawn``/``run`` created (never our own group)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    try:
        if pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen, timeout_s: float = 5.0) -> int | None:
    """SIGTERM the group, wait, then SIGKILL; return the exit status."""
    if proc.poll() is not None:
        return proc.returncode
    kill_group(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL)
        return proc.wait()
