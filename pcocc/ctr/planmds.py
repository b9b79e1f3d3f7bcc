"""The metadata service's part of a run replayed from its plan (:mod:`pcocc.ctr.planexec`):
register the pod and forget it, as :func:`pcocc.ctr.mds.register_pod` and
:func:`~pcocc.ctr.mds.unregister_pod` do, with the C module ``_socket`` (:mod:`socket`
imports :mod:`enum` and :mod:`selectors`, several milliseconds). A service that does not
run yet is started through :mod:`pcocc.ctr.mds` itself (:mod:`pcocc.ctr.planexec`).
"""

import _socket
import os
import sys

from pcocc.ctr.runplan import remove_tree

SOCKET_NAME = "api.sock"  # as pcocc.ctr.mds.SOCKET_NAME


def unix_socket(path: str, *, listen: bool = False, timeout_s: float | None = None,
                sock: object = None) -> _socket.socket:
    """``sock`` (default: a new ``_socket`` one) connected to, or with ``listen`` bound at,
    ``path``, however long: sockaddr_un holds 108 bytes, so go through a descriptor of the
    directory (:func:`pcocc.ctr.mds.unix_socket` passes a :mod:`socket` one)."""
    if sock is None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    path = str(path)
    try:
        dir_fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            short = f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}"
            if listen:
                sock.bind(short)
                sock.listen(16)
            else:
                sock.connect(short)
        finally:
            os.close(dir_fd)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_app(root: str, uuid: str, app: str) -> _socket.socket:
    """The app's listening socket, in its own directory under ``sockets/UUID/``."""
    pod = os.path.join(root, "sockets", uuid)
    os.mkdir(pod, 0o700)
    os.mkdir(os.path.join(pod, app), 0o700)
    return unix_socket(os.path.join(pod, app, SOCKET_NAME), listen=True)


def hand_over(root: str, uuid: str, app: str, sock: _socket.socket) -> bool:
    """Send ``sock`` to the running service (``adopt UUID:APP``), as
    :func:`pcocc.ctr.mds.hand_over`; False if no service listens."""
    try:
        conn = unix_socket(os.path.join(root, "control.sock"), timeout_s=5.0)
    except OSError:
        return False
    try:
        fds = sock.fileno().to_bytes(4, sys.byteorder, signed=True)
        conn.sendmsg([f"adopt {uuid}:{app}\n".encode()],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    except OSError:
        return False
    finally:
        conn.close()
    return True


def unregister(root: str, uuid: str) -> None:
    """Forget the pod: its record and sockets; tell the service (no answer waited for)."""
    try:
        os.unlink(os.path.join(root, "records", f"{uuid}.json"))
    except FileNotFoundError:
        return
    remove_tree(os.path.join(root, "sockets", uuid))
    try:
        conn = unix_socket(os.path.join(root, "control.sock"), timeout_s=1.0)
    except OSError:
        return
    try:
        conn.sendall(b"sync\n")
    except OSError:
        pass
    finally:
        conn.close()

