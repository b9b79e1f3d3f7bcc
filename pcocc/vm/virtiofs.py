"""Host directories shared into a VM with virtio-fs (one virtiofsd process per share), or
with QEMU's own virtio-9p server (:func:`ninep_args`) for guests without virtio-fs.

QEMU talks to virtiofsd over a vhost-user unix socket, and virtiofsd reads and writes the
guest's RAM directly, so the guest RAM must be a shared memory backend (see
:func:`memory_args`).

virtiofsd wants to be root: it switches to the guest's uid for each request and drops its
supplementary groups (``setgroups``) at startup. When pcocc runs as an ordinary user it
starts virtiofsd in a new user namespace (``unshare --map-root-user --map-auto``) where the
user is root and the user's ranges of /etc/subuid and /etc/subgid (mapped through
``newuidmap``/``newgidmap``, package ``uidmap``) give the other ids. A namespace mapped with
``--map-root-user`` alone forbids ``setgroups``, which virtiofsd cannot run without. Files
that the guest's root creates are then owned on the host by the user; files of other guest
users get ids from the user's subordinate ranges.

pcocc creates the listening socket itself and hands it over (``--fd``): the C virtiofsd of
QEMU otherwise takes a lock in /var/run/virtiofsd, which ordinary users cannot write.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pcocc import proc
from pcocc.errors import PcoccError, ToolMissing

#: Where Debian puts virtiofsd: the Rust one (package virtiofsd, Debian 13 and later) and
#: QEMU's C one (package qemu-system-common, Debian 12).
VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
VIRTIOFSD_PACKAGE = "qemu-system-common"
#: Memory backend id of the guest RAM when the VM has shares.
MEMORY_BACKEND = "pcocc-mem"
MAX_TAG = 36  # the virtio-fs tag field holds 36 bytes


@dataclass(frozen=True)
class Share:
    """A host directory that the guest mounts by its tag: ``mount -t virtiofs TAG TARGET``,
    or for ``type`` virtio-9p ``mount -t 9p -o trans=virtio TAG TARGET``."""

    tag: str
    source: str
    readonly: bool = False
    type: str = "virtio-fs"  # or "virtio-9p": served by QEMU itself (see ninep_args)


def socket_name(index: int) -> str:
    """Name of the vhost-user socket of share ``index`` in the VM's run directory."""
    return f"fs{index}.sock"


def log_name(index: int) -> str:
    return f"virtiofsd{index}.log"


def check_tag(tag: str) -> None:
    if not tag or len(tag.encode()) > MAX_TAG or any(c in tag for c in ", \t\n\0"):
        raise PcoccError(f"invalid virtio-fs tag '{tag}'",
                         hint=f"use at most {MAX_TAG} characters, no commas or blanks")


def find_virtiofsd() -> str:
    """Path of virtiofsd: from PATH, else where Debian installs it.

    :raise ToolMissing: naming the package to install
    """
    found = shutil.which("virtiofsd")
    if found:
        return found
    for path in VIRTIOFSD_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise ToolMissing(
        "'virtiofsd' is not installed: it is needed to share host directories (--mount)",
        tool="virtiofsd",
        hint=f"install the Debian package '{VIRTIOFSD_PACKAGE}' (or 'virtiofsd')",
    )


def _has_subordinate_ids(path: Path, user: str, uid: int) -> bool:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    return any(ln.split(":", 1)[0] in (user, str(uid)) for ln in lines if ":" in ln)


def check_unprivileged(
    uid: int | None = None,
    user: str | None = None,
    subuid: Path = Path("/etc/subuid"),
    subgid: Path = Path("/etc/subgid"),
) -> None:
    """Raise when an ordinary user could not start virtiofsd here (nothing to do as root).

    :raise ToolMissing: unshare or newuidmap is missing
    :raise PcoccError: the user has no subordinate uid or gid range
    """
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return
    user = user or getpass.getuser()
    for tool in ("unshare", "newuidmap", "newgidmap"):
        proc.which(tool)
    for path in (subuid, subgid):
        if not _has_subordinate_ids(path, user, uid):
            raise PcoccError(
                f"user {user} has no range in {path}: virtiofsd cannot run without one",
                hint=f"ask an administrator to add one, e.g. 'usermod --add-subuids "
                     f"100000-165535 --add-subgids 100000-165535 {user}'",
            )


def virtiofsd_argv(
    binary: str, fd: int, source: str, *, as_root: bool, readonly: bool = False
) -> list[str]:
    """The command that serves ``source`` on the listening socket ``fd``.

    virtiofsd has no read-only mode: a read-only share is a read-only bind mount of
    ``source`` onto itself, in a mount namespace of its own.
    """
    argv = [binary, f"--fd={fd}", "-o", f"source={source}", "-o", "cache=auto",
            # keep the open files limit: raising it needs a privilege a user namespace lacks
            "--rlimit-nofile=0"]
    unshare = ["unshare"] if as_root else ["unshare", "--map-root-user", "--map-auto"]
    if readonly:
        return [*unshare, "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
                source, *argv]
    return argv if as_root else [*unshare, *argv]


def start_virtiofsd(
    binary: str,
    share: Share,
    socket_path: str | os.PathLike,
    log_path: str | os.PathLike,
    *,
    new_session: bool = True,
) -> proc.Popen:
    """Listen on ``socket_path`` (made 0600) and start virtiofsd serving ``share`` on it.

    The socket exists and listens when this returns, so QEMU may connect at once.

    :param socket_path: where to bind (a ``/proc/self/fd/N/name`` form works for long ones)
    :param new_session: False keeps virtiofsd in our process group (killed with it)
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.fspath(socket_path))
        os.chmod(socket_path, 0o600)
        listener.listen(1)
        argv = virtiofsd_argv(binary, listener.fileno(), share.source,
                              as_root=os.getuid() == 0, readonly=share.readonly)
        return proc.spawn(argv, log_path=log_path, pass_fds=[listener.fileno()],
                          new_session=new_session)
    finally:
        listener.close()  # virtiofsd holds the socket now


def log_tail(log_path: str | os.PathLike, max_chars: int = 300) -> str:
    """The last messages of a virtiofsd log, on one line."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in lines if ln.strip())[-max_chars:]


def memory_args(memory_mib: int) -> list[str]:
    """Guest RAM as a shared memfd: virtiofsd maps it to serve the guest's requests."""
    return ["-object", f"memory-backend-memfd,id={MEMORY_BACKEND},size={memory_mib}M,share=on",
            "-numa", f"node,memdev={MEMORY_BACKEND}"]


def ninep_args(shares: Sequence[Share]) -> list[str]:
    """QEMU's own 9p server for each ``virtio-9p`` share (guests without virtio-fs).

    ``security_model=none``: files are read and written as the user who runs QEMU, as a
    user's own files; ``readonly=on`` makes QEMU refuse every write of the guest.
    """
    args: list[str] = []
    for index, share in enumerate(shares):
        check_tag(share.tag)
        path = share.source.replace(",", ",,")
        fsdev = f"local,id=p9fs{index},path={path},security_model=none"
        if share.readonly:
            fsdev += ",readonly=on"
        args += ["-fsdev", fsdev,
                 "-device", f"virtio-9p-pci,fsdev=p9fs{index},mount_tag={share.tag}"]
    return args


def device_args(tags: Sequence[str], sockets: Sequence[str | os.PathLike]) -> list[str]:
    """The vhost-user-fs devices, one per share, each on its socket."""
    args: list[str] = []
    for index, (tag, sock) in enumerate(zip(tags, sockets, strict=True)):
        check_tag(tag)
        path = os.fspath(sock).replace(",", ",,")
        args += ["-chardev", f"socket,id=fs{index},path={path}",
                 "-device", f"vhost-user-fs-pci,chardev=fs{index},tag={tag}"]
    return args
