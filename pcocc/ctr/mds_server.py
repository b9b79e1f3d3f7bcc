"""The metadata service process (``pcocc internal mds-serve``), see :mod:`pcocc.ctr.mds`.

State is only on disk (the records), so a service killed with -9 is started again by the
next ``pcocc run`` and serves the pods that still run: it rebinds their sockets in the
directories they have mounted. It drops the record of a pod whose supervisor is gone and
exits once no record is left for :data:`IDLE_EXIT_S`.

A new pod's sockets are bound by its ``pcocc run`` and handed over (``adopt`` on the control
socket, or ``--adopt`` when ``run`` starts the service): they wait, *pending*, until the
pod's record is there. Before it binds a socket of its own, the service takes what waits on
the control socket, so that it never replaces a socket handed over to it.

HTTP API on an app's socket (GET only; anything else is refused):

- ``/pcocc/v1/pod`` (JSON), ``/pcocc/v1/pod/uuid``, ``/pcocc/v1/pod/annotations``,
  ``/pcocc/v1/pod/annotations/KEY``, ``/pcocc/v1/pod/identity`` (a signed token)
- ``/pcocc/v1/app/name``, ``/pcocc/v1/app/image/id``, ``/pcocc/v1/app/annotations[/KEY]``
- ``/pcocc/v1/pods/UUID``: the pod's own record; 403 for any other UUID
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pcocc import paths
from pcocc.ctr.mds import (
    SOCKET_NAME, MdsRecord, hand_over, load_record, mds_dir, parse_adopt, sign_token,
    socket_dir, unix_socket,
)
from pcocc.ctr.pods import process_start_ticks
from pcocc.errors import Corrupt

log = logging.getLogger(__name__)

IDLE_EXIT_S = 3.0
RESCAN_S = 1.0
#: how often the records are read while handed-over sockets wait for theirs
PENDING_SCAN_S = 0.02
#: a handed-over socket whose record never came (its run died) is closed after that
PENDING_MAX_S = 5.0
MAX_REQUEST = 8192
CLIENT_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 431: "Request Header Fields Too Large"}


def handle(rec: MdsRecord, app: str, method: str, target: str) -> tuple[int, str, str]:
    """Answer one request of ``app`` of ``rec``: (status, content type, body)."""
    if method != "GET":
        return 405, "text/plain", "only GET\n"
    path = target.split("?", 1)[0]
    parts = path.split("/")
    if parts[:3] != ["", "pcocc", "v1"] or any(p in ("", ".", "..") for p in parts[3:]):
        return 404, "text/plain", "not found\n"
    rest = parts[3:]
    me = next((a for a in rec.apps if a.name == app), None)
    if me is None:
        return 404, "text/plain", "not found\n"
    text = {
        ("pod", "uuid"): rec.uuid,
        ("app", "name"): me.name,
        ("app", "image", "id"): me.image_id,
    }
    if tuple(rest) in text:
        return 200, "text/plain", text[tuple(rest)]
    if rest == ["pod"]:
        return 200, "application/json", json.dumps(rec.public(app))
    if rest == ["pod", "identity"]:
        return 200, "text/plain", sign_token(bytes.fromhex(rec.key), rec.uuid, app)
    if len(rest) == 2 and rest[0] == "pods":
        if rest[1] != rec.uuid:
            return 403, "text/plain", "a pod reads only its own record\n"
        return 200, "application/json", json.dumps(rec.public(app))
    for prefix, notes in ((["pod", "annotations"], rec.annotations),
                          (["app", "annotations"], me.annotations)):
        if rest == prefix:
            return 200, "application/json", json.dumps(notes)
        if len(rest) == 3 and rest[:2] == prefix and rest[2] in notes:
            return 200, "text/plain", notes[rest[2]]
    return 404, "text/plain", "not found\n"


def parse_request(data: bytes) -> tuple[str, str] | int:
    """(method, target) of a request head, or an HTTP error status."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return 431 if len(data) >= MAX_REQUEST else 400
    try:
        line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        return 400
    fields = line.split(" ")
    if len(fields) != 3 or not fields[2].startswith("HTTP/1.") or not fields[1].startswith("/"):
        return 400
    return fields[0], fields[1]


def _serve_client(conn: socket.socket, rec: MdsRecord, app: str) -> None:
    with conn:
        conn.settimeout(CLIENT_TIMEOUT_S)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                chunk = conn.recv(MAX_REQUEST - len(data))
                if not chunk:
                    break
                data += chunk
            req = parse_request(data)
            if isinstance(req, int):
                status, ctype, body = req, "text/plain", _REASONS[req] + "\n"
            else:
                status, ctype, body = handle(rec, app, *req)
            raw = body.encode()
            conn.sendall(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n".encode() + raw
            )
        except OSError:
            pass


class Service:
    def __init__(self, root: Path, pending: dict[tuple[str, str], socket.socket] | None = None):
        self.root = root
        self.sel = selectors.DefaultSelector()
        #: (uuid, app) -> listening socket
        self.listeners: dict[tuple[str, str], socket.socket] = {}
        self.records: dict[str, MdsRecord] = {}
        #: (uuid, app) -> (socket handed over, when), until the pod's record is read
        self.pending = {k: (s, time.monotonic()) for k, s in (pending or {}).items()}
        self.control: socket.socket | None = None
        #: a ``sync`` came: read the records again
        self.stale = False

    def rescan(self) -> None:
        """Serve exactly the pods with a record whose supervisor still runs."""
        self._take_control()
        recs: dict[str, MdsRecord] = {}
        for path in (self.root / "records").glob("*.json"):
            try:
                rec = load_record(path)
            except (OSError, Corrupt) as err:
                log.warning("%s", err)
                continue
            if process_start_ticks(rec.pid) != rec.pid_start:
                path.unlink(missing_ok=True)  # its pcocc run died: forget the key
                continue
            recs[rec.uuid] = rec
        remove_orphan_temps(self.root / "records")
        self.records = recs
        wanted = {(r.uuid, a.name) for r in recs.values() for a in r.apps}
        for key in set(self.listeners) - wanted:
            sock = self.listeners.pop(key)
            self.sel.unregister(sock)
            sock.close()
        for uuid, app in wanted - set(self.listeners):
            handed = self.pending.pop((uuid, app), None)
            if handed is not None:
                sock = handed[0]
            else:
                path = socket_dir(self.root, uuid, app) / SOCKET_NAME
                try:
                    path.unlink(missing_ok=True)  # left by a killed service
                    sock = unix_socket(path, listen=True)
                except OSError as err:
                    log.warning("cannot serve pod %s app %s: %s", uuid, app, err)
                    continue
            self.listeners[(uuid, app)] = sock
            self.sel.register(sock, selectors.EVENT_READ, (uuid, app))
        for key, (sock, since) in list(self.pending.items()):
            if key in self.listeners or time.monotonic() - since > PENDING_MAX_S:
                del self.pending[key]
                sock.close()

    def _bind_control(self) -> None:
        cpath = self.root / "control.sock"
        cpath.unlink(missing_ok=True)
        self.control = unix_socket(cpath, listen=True)
        self.sel.register(self.control, selectors.EVENT_READ, None)

    def _take_control(self) -> None:
        """Handle every connection that waits on the control socket, without blocking."""
        if self.control is None:
            return
        self.control.setblocking(False)
        try:
            while True:
                try:
                    conn, _ = self.control.accept()
                except OSError:  # nothing more waits
                    return
                self._control(conn)
        finally:
            self.control.setblocking(True)

    def run(self) -> None:
        self._bind_control()
        self.rescan()
        idle_since = time.monotonic()
        last_scan = time.monotonic()
        while True:
            wait = PENDING_SCAN_S if self.pending else RESCAN_S
            for key, _ in self.sel.select(timeout=wait):
                try:
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                if key.data is None:
                    self._control(conn)
                    continue
                uuid, app = key.data
                rec = self.records.get(uuid)
                if rec is None:
                    conn.close()
                    continue
                threading.Thread(target=_serve_client, args=(conn, rec, app), daemon=True).start()
            if self.pending or self.stale or time.monotonic() - last_scan >= RESCAN_S:
                self.stale = False
                self.rescan()
                last_scan = time.monotonic()
            if self.records or self.pending:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= IDLE_EXIT_S and self._exit():
                log.info("no pod left: metadata service exits")
                return

    def _exit(self) -> bool:
        """Stop taking requests; False (and serve on) if a hand-over came in meanwhile."""
        (self.root / "control.sock").unlink(missing_ok=True)
        self._take_control()  # what was queued before the unlink
        if not self.pending:
            return True
        assert self.control is not None
        self.sel.unregister(self.control)
        self.control.close()
        self._bind_control()
        return False

    def _control(self, conn: socket.socket) -> None:
        with conn:
            if read_control(conn, self._adopt):
                self.stale = True  # a sync: read again by the main loop (no answer)

    def _adopt(self, key: tuple[str, str], sock: socket.socket) -> None:
        """Keep a listening socket a ``pcocc run`` handed over until its record is read."""
        if key in self.listeners or key in self.pending:
            log.warning("refused socket %s:%s handed over: already served", *key)
            sock.close()
        else:
            self.pending[key] = (sock, time.monotonic())


def read_control(
    conn: socket.socket, adopt: Callable[[tuple[str, str], socket.socket], None]
) -> bool:
    """Read one message of the control socket: ``adopt`` each socket of an ``adopt``
    message (what is not a listening socket is refused); True for a ``sync``."""
    conn.settimeout(2.0)
    try:
        msg, fds, _, _ = socket.recv_fds(conn, 4096, 64)
    except OSError:
        return False
    keys: list[tuple[str, str]] = []
    if msg.startswith(b"adopt "):
        try:
            keys = parse_adopt(msg[6:].decode("ascii", "replace"))
            if len(keys) != len(fds):
                raise ValueError(f"{len(keys)} names for {len(fds)} sockets")
        except ValueError as err:
            log.warning("refused a hand-over: %s", err)
            keys = []
    for i, fd in enumerate(fds):
        sock = listening_socket(fd) if keys else None
        if sock is not None:
            adopt(keys[i], sock)
        elif keys:
            log.warning("refused socket %s:%s handed over: not a listening socket", *keys[i])
        elif fd >= 0:
            os.close(fd)
    return msg.startswith(b"sync")


def listening_socket(fd: int) -> socket.socket | None:
    """The socket of ``fd`` if it is a listening unix stream socket, else None (closed)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.close()
        return None
    sock.set_inheritable(False)
    return sock


#: a record being written by :func:`pcocc.fsutil.write_atomic` (``.NAME.PID.HEX.tmp``)
_TEMP_RE = re.compile(r"\.[0-9a-f-]{36}\.json\.([0-9]{1,10})\.[0-9a-f]{8}\.tmp")


def remove_orphan_temps(records: Path) -> None:
    """Remove the temporary files of record writers that are gone (a ``pcocc run`` killed
    with -9 while it wrote its record): nothing else ever would."""
    for path in records.iterdir():
        m = _TEMP_RE.fullmatch(path.name)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except (ProcessLookupError, OverflowError):  # gone, or never a pid
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # a live process (of another user, after pid reuse): not known to be gone


def serve(adopt_fd: int | None = None) -> int:
    """Run the user's service, serving first the sockets that ``pcocc run`` bound and sent
    on ``adopt_fd`` (an ``adopt`` message). If another service holds the lock, hand them to
    it (or wait for it to exit and serve them) and return."""
    root = paths.private_dir(mds_dir(), what="metadata service directory")
    for sub in ("records", "sockets"):
        paths.private_dir(root / sub, what="metadata service directory")
    pending: dict[tuple[str, str], socket.socket] = {}
    if adopt_fd is not None:
        with socket.socket(fileno=adopt_fd) as conn:
            read_control(conn, pending.__setitem__)
    lock = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + 10.0
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            # another service runs (or is exiting): it takes the sockets, or we do once
            # it is gone
            if not pending or hand_over(root, pending) or time.monotonic() > deadline:
                return 0
            time.sleep(0.05)
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())
    Service(root, pending).run()
    return 0
