"""The metadata service of a user's pods: records, identity tokens, registration.

One service per user (:mod:`pcocc.ctr.mds_server`), started on demand by ``pcocc run``
and gone when no pod of the user is left. Everything lives in the user's private runtime
directory (:func:`pcocc.paths.runtime_dir`, 0700)::

    mds/lock                  flock held by the running service (one per user)
    mds/control.sock          "adopt UUID:APP..." with the listening sockets of a new pod;
                              "sync": the service rereads the records (no answer)
    mds/service.log           the service's output
    mds/records/<uuid>.json   a pod's record with its HMAC key (0600, never mounted)
    mds/sockets/<uuid>/<app>/api.sock
                              the app's socket; the directory is bound at /dev/pcocc/mds

The service tells callers apart by the socket they connected through: a socket serves
one app of one pod, and only that pod's record. A socket's *directory* is bound into the
container, so a service restarted after a crash binds a fresh socket that the pod sees.

Tokens are ``base64url(payload).base64url(HMAC-SHA256(key, payload))`` with a random
per-pod key that only the service and the user's own pcocc read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pcocc import paths
from pcocc.errors import Corrupt, PcoccError, UsageError
from pcocc.fsutil import write_atomic

#: where an app finds its socket: in the container's own /dev tmpfs (every spec has one),
#: so that the mount point is made even in a read-only or another user's root filesystem
CONTAINER_DIR = "/dev/pcocc/mds"
SOCKET_NAME = "api.sock"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def mds_dir() -> Path:
    return paths.runtime_dir() / "mds"


def parse_annotations(values: Sequence[str]) -> dict[str, str]:
    """``--annotation K=V`` values -> {K: V}; K is a plain name (letters, digits, ``._-/``)."""
    out: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,252}", key):
            raise UsageError(
                f"--annotation '{text}': expected KEY=VALUE",
                hint="KEY is letters, digits and . _ - / (e.g. org.example/team=hpc)",
            )
        out[key] = value
    return out


def image_id(image_config: Mapping[str, Any]) -> str:
    """The image's ID: the SHA-256 of its canonical config."""
    canon = json.dumps(image_config, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


@dataclass
class MdsApp:
    name: str
    image: str
    image_id: str
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class MdsRecord:
    """What the service knows of one pod (the key never leaves the service's files)."""

    uuid: str
    key: str  # hex
    apps: list[MdsApp]
    annotations: dict[str, str] = field(default_factory=dict)
    #: the pod's supervisor (``pcocc run``): the record dies with it
    pid: int = 0
    pid_start: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str, where: str) -> MdsRecord:
        """Parse a record file; anything unexpected is :class:`Corrupt`."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            apps = [MdsApp(**a) for a in data.pop("apps")]
            rec = cls(**data, apps=apps)
            bytes.fromhex(rec.key)
        except (ValueError, TypeError, KeyError) as err:
            raise Corrupt(f"{where}: bad metadata record: {err}") from err
        if not _UUID_RE.match(rec.uuid) or not all(_NAME_RE.match(a.name) for a in rec.apps):
            raise Corrupt(f"{where}: bad metadata record: bad pod UUID or app name")
        return rec

    def public(self, app: str | None = None) -> dict[str, Any]:
        """The record as the pod may read it (no key)."""
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "annotations": self.annotations,
            "apps": [asdict(a) for a in self.apps],
        }
        if app is not None:
            out["app"] = app
        return out


# -- tokens --------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: a character outside the alphabet or a non-canonical form is a ValueError."""
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def sign_token(key: bytes, uuid: str, app: str, now: float | None = None) -> str:
    payload = json.dumps(
        {"uuid": uuid, "app": app, "iat": int(time.time() if now is None else now)},
        sort_keys=True, separators=(",", ":"),
    ).encode()  # fmt: skip
    return f"{_b64(payload)}.{_b64(hmac.new(key, payload, hashlib.sha256).digest())}"


def token_claims(token: str) -> dict[str, Any]:
    """The unverified claims of ``token`` (to find its pod's key)."""
    try:
        head, _, _ = token.strip().partition(".")
        claims = json.loads(_unb64(head))
        if not isinstance(claims, dict) or not _UUID_RE.match(str(claims.get("uuid"))):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise UsageError("not a pcocc identity token", hint="pass the token a pod got "
                         f"from {CONTAINER_DIR}/{SOCKET_NAME}") from None
    return claims


def verify_token(key: bytes, token: str) -> dict[str, Any] | None:
    """The claims of ``token`` if its signature is right under ``key``, else None."""
    try:
        head, _, sig = token.strip().partition(".")
        payload = _unb64(head)
        good = hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), _unb64(sig))
    except ValueError:
        return None
    return json.loads(payload) if good else None


def verify_identity(token: str, root: Path | None = None) -> dict[str, Any]:
    """Check a token against the key of its pod; returns its claims.

    :raise PcoccError: the pod is unknown (not registered, or gone) or the signature is bad
    """
    claims = token_claims(token)
    root = root or mds_dir()
    try:
        rec = load_record(root / "records" / f"{claims['uuid']}.json")
    except FileNotFoundError:
        raise PcoccError(f"identity token refused: pod {claims['uuid']} is not registered "
                         "with your metadata service (gone or never registered)") from None
    good = verify_token(bytes.fromhex(rec.key), token)
    if good is None or good.get("app") not in {a.name for a in rec.apps}:
        raise PcoccError("identity token refused: bad signature")
    return good


# -- records -------------------------------------------------------------------------------
def load_record(path: Path) -> MdsRecord:
    return MdsRecord.from_json(path.read_text(), str(path))


def socket_dir(root: Path, uuid: str, app: str) -> Path:
    return root / "sockets" / uuid / app


def register_pod(
    uuid: str,
    apps: Sequence[MdsApp],
    annotations: Mapping[str, str],
    *,
    pid: int,
    pid_start: int | None,
) -> dict[str, Path]:
    """Record the pod and have the service serve it, without waiting for the service.

    The app sockets are bound here, before any app starts, and handed to the service
    (:func:`hand_over`; started in the background when it does not run): an app that
    connects before the service took its socket waits in the socket's backlog, never finds
    it missing. The hand-over goes first, the record second: a service that sees the
    record has the hand-over queued on its control socket (it reads those first).

    :return: app name -> host directory to bind at :data:`CONTAINER_DIR`
    """
    root = paths.private_dir(mds_dir(), what="metadata service directory")
    for sub in ("records", "sockets"):
        paths.private_dir(root / sub, what="metadata service directory")
    rec = MdsRecord(uuid, os.urandom(32).hex(), list(apps), dict(annotations), pid, pid_start)
    dirs: dict[str, Path] = {}
    socks: list[socket.socket] = []
    (root / "sockets" / uuid).mkdir(mode=0o700, exist_ok=True)
    try:
        for app in apps:
            d = socket_dir(root, uuid, app.name)
            d.mkdir(mode=0o700, exist_ok=True)
            (d / SOCKET_NAME).unlink(missing_ok=True)
            socks.append(unix_socket(d / SOCKET_NAME, listen=True))
            dirs[app.name] = d
        if not hand_over(root, {(uuid, a.name): s for a, s in zip(apps, socks)}):
            start_service(root, {(uuid, a.name): s for a, s in zip(apps, socks)})
        # not synced: the runtime directory does not outlive a boot, nor does the pod
        write_atomic(root / "records" / f"{uuid}.json", json.dumps(rec.to_json()), 0o600,
                     durable=False)
    finally:
        for sock in socks:
            sock.close()
    return dirs


def adopt_message(socks: Mapping[tuple[str, str], socket.socket]) -> tuple[bytes, list[int]]:
    """``adopt UUID:APP ...`` and the sockets' descriptors, in the same order."""
    keys = list(socks)
    return (("adopt " + " ".join(f"{u}:{a}" for u, a in keys) + "\n").encode(),
            [socks[k].fileno() for k in keys])


def parse_adopt(text: str) -> list[tuple[str, str]]:
    """(uuid, app) of each ``UUID:APP`` word. :raise ValueError: a word is not one"""
    keys = []
    for word in text.split():
        uuid, _, app = word.partition(":")
        if not _UUID_RE.match(uuid) or not _NAME_RE.match(app):
            raise ValueError(f"bad socket name {word[:80]!r}")
        keys.append((uuid, app))
    return keys


def hand_over(root: Path, socks: Mapping[tuple[str, str], socket.socket]) -> bool:
    """Send the listening ``socks`` to the running service in one message, without waiting
    for an answer; False if no service listens."""
    try:
        conn = unix_socket(root / "control.sock", timeout_s=5.0)
    except OSError:
        return False
    with conn:
        msg, fds = adopt_message(socks)
        try:
            socket.send_fds(conn, [msg], fds)
        except OSError:
            return False
    return True


def start_service(root: Path, socks: Mapping[tuple[str, str], socket.socket]) -> None:
    """Start the service in the background with ``socks`` to serve (not waited for): they
    go, as an ``adopt`` message, on a socket pair whose other end the service reads first
    (so that no pod's UUID is in the service's command line)."""
    from pcocc import proc
    from pcocc.selfcmd import module_argv

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        fd = theirs.fileno()
        proc.spawn([*module_argv(), "internal", "mds-serve", "--adopt-fd", str(fd)],
                   log_path=root / "service.log", pass_fds=[fd])
        msg, fds = adopt_message(socks)
        socket.send_fds(ours, [msg], fds)


def unregister_pod(uuid: str) -> None:
    """Forget the pod (its key goes with it); the service is told to drop its sockets (one
    write, no answer waited for: it also notices on its next scan)."""
    import shutil

    root = mds_dir()
    try:
        os.unlink(root / "records" / f"{uuid}.json")
    except FileNotFoundError:
        return
    shutil.rmtree(root / "sockets" / uuid, ignore_errors=True)
    try:
        with unix_socket(root / "control.sock", timeout_s=1.0) as conn:
            conn.sendall(b"sync\n")
    except OSError:
        pass


def unix_socket(path: Path, *, listen: bool = False, timeout_s: float | None = None
                ) -> socket.socket:
    """A socket connected to (or, with ``listen``, bound at) ``path``, however long
    (:func:`pcocc.ctr.planmds.unix_socket`)."""
    from pcocc.ctr.planmds import unix_socket as reach

    return reach(str(path), listen=listen, timeout_s=timeout_s,
                 sock=socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
