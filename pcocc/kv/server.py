"""A private, single-member etcd v3 server in a directory of its own, on free ports.

It listens on 127.0.0.1 and, when given one, on another address of this host (the one the
nodes of a multi-host job reach, see :mod:`pcocc.kv.private`); its endpoint is on that
address. It also listens on a unix socket inside its directory, and its peer (raft) port is
a unix socket there too: no other user can reach either.

With ``auth=True`` (every private etcd of a job) it never serves a TCP client without
authentication: it first runs on its unix socket alone, where a root user with a random
password, a job user (role limited to ``grants``) and authentication are set up; then it
restarts on the same data with its TCP listeners. A client that connected in between could
otherwise keep a watch opened before authentication was on: etcd does not close it. The
health checks go through the unix socket: an answer there also proves that etcd bound its
TCP ports (it binds every listener before it serves), so no other process holds them.
The passwords go to etcd over the unix socket only, and never into argv.

Used by local mode (``pcocc.kv.private``) and by the development cluster helpers. The server
is a plain child process in its own session; ``stop`` leaves no process behind, also when it
is called from another process (the pid is kept in ``<dir>/etcd.pid``).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pcocc import daemon, fsutil, proc
from pcocc.errors import PcoccError, ServiceUnavailable

log = logging.getLogger(__name__)

_ADDRESS_IN_USE = "address already in use"
LOOPBACK = "127.0.0.1"
#: etcd wants ``host:port`` even for a unix socket: the socket is the file ``host:port``,
#: relative to etcd's working directory (its own directory)
CLIENT_SOCKET = "client.sock:0"
PEER_SOCKET = "peer.sock:0"
#: the user the processes of a job log in as
JOB_USER = "pcocc-job"
#: the password hashes of random 192-bit passwords need no slow bcrypt (etcd's default
#: cost 10 makes every user creation and login take tens of milliseconds)
_BCRYPT_COST = "4"


@dataclass(frozen=True)
class Grant:
    """A permission of the job's role: READ, WRITE or READWRITE on every key under ``prefix``."""

    prefix: str
    perm: str = "READWRITE"


@dataclass(frozen=True)
class TlsServerFiles:
    """Server certificate and key; with ``ca``, clients must show a certificate it signed."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class JobLogin:
    """The login of the job's processes (a user with a limited role)."""

    user: str
    password: str = field(repr=False)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over etcd's unix socket, opened through the directory (paths may be long)."""

    def __init__(self, directory: Path, name: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._directory = directory
        self._name = name

    def connect(self) -> None:
        dir_fd = os.open(self._directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(f"/proc/self/fd/{dir_fd}/{self._name}")
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(dir_fd)
        self.sock = sock


class EtcdServer:
    """Start, use, always stop: ``with EtcdServer(path) as etcd: etcd.endpoints``."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        start_timeout_s: float = 30.0,
        address: str = LOOPBACK,
        auth: bool = False,
        grants: Sequence[Grant] = (),
        tls: TlsServerFiles | None = None,
    ):
        """``auth``: start with authentication on, the job user allowed ``grants`` only
        (see the module doc); ``tls``: serve TCP clients over TLS (https endpoint)."""
        self.directory = Path(directory)
        self.auth = auth
        self.grants = tuple(grants)
        self.tls = tls
        #: set by ``start`` with ``auth``
        self.login: JobLogin | None = None
        #: the address of the endpoint (it listens on 127.0.0.1 too)
        self.address = address
        self.start_timeout_s = start_timeout_s
        self.client_port: int | None = None
        self._proc = None

    # paths ---------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.directory / "etcd-data"

    @property
    def log_path(self) -> Path:
        return self.directory / "etcd.log"

    @property
    def pid_path(self) -> Path:
        return self.directory / "etcd.pid"

    @property
    def info_path(self) -> Path:
        return self.directory / "etcd.json"

    @property
    def root_password_path(self) -> Path:
        return self.directory / "root-password"

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def endpoint(self) -> str:
        if self.client_port is None:
            raise PcoccError(f"etcd in {self.directory} is not started")
        return f"{self.scheme}://{self.address}:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint]

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        return daemon.read_pid_file(self.pid_path)

    # lifecycle -----------------------------------------------------------------------------
    def _argv(self, exe: str, *, tcp: bool = True, new: bool = True) -> list[str]:
        """etcd's command line (no secret in it: ``ps`` shows it to every user)."""
        unix = f"unix://{CLIENT_SOCKET}"
        client = f"{self.scheme}://{self.address}:{self.client_port}"
        listen = [client] if tcp else []
        if tcp and self.address != LOOPBACK:
            listen.append(f"{self.scheme}://{LOOPBACK}:{self.client_port}")
        listen.append(unix)
        peer = f"unix://{PEER_SOCKET}"
        argv = [
            exe,
            "--name", "pcocc",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", ",".join(listen),
            "--advertise-client-urls", client if tcp else unix,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"pcocc={peer}",
            "--initial-cluster-state", "new" if new else "existing",
            "--initial-cluster-token", f"pcocc-{os.getpid()}-{id(self):x}",
            # one member, no peer to wait for: elect it at once (the default 1 s election
            # timeout is most of etcd's start-up time)
            "--heartbeat-interval", "5",
            "--election-timeout", "25",
            "--bcrypt-cost", _BCRYPT_COST,
        ]  # fmt: skip
        if self.tls is not None:
            argv += ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key)]
            if self.tls.ca is not None:
                argv += ["--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]
        return argv

    def start(self) -> EtcdServer:
        """Start etcd and wait until it answers its health check.

        :raise ToolMissing: etcd is not installed
        :raise ServiceUnavailable: it did not become healthy (names the log file)
        """
        exe = proc.which("etcd")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        if self.auth:
            self.client_port = 0
            self._run(self._argv(exe, tcp=False))
            try:
                self._set_up_auth()
            finally:
                self.stop()
        for attempt in range(3):
            (self.client_port,) = daemon.free_ports(1, self.address)
            try:
                self._run(self._argv(exe, new=not self.auth))
            except ServiceUnavailable:
                clash = _ADDRESS_IN_USE in self.log_path.read_text(errors="replace")
                self.stop()
                if clash and attempt < 2:
                    log.debug("etcd port clash, retrying on other ports")
                    continue
                raise
            self.info_path.write_text(json.dumps({"endpoints": self.endpoints, "pid": self.pid}))
            return self
        raise AssertionError("unreachable")

    def _run(self, argv: list[str]) -> None:
        """Start etcd with ``argv`` and wait until it is healthy (stopped if it is not)."""
        # etcd reads ETCD_* variables as flags: do not let the caller's leak in
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        for name in (CLIENT_SOCKET, PEER_SOCKET):  # a killed etcd leaves them; etcd won't bind
            (self.directory / name).unlink(missing_ok=True)
        self._proc = proc.spawn(argv, env=env, log_path=self.log_path, cwd=self.directory)
        self.pid_path.write_text(f"{self._proc.pid}\n")
        self._wait_healthy()

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """One request to etcd's JSON gateway over its unix socket."""
        conn = _UnixHTTPConnection(self.directory, CLIENT_SOCKET, timeout=5)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(data or b"{}")
        except ValueError:
            return response.status, {"message": data[:200].decode(errors="replace")}

    def _set_up_auth(self) -> None:
        """Create root and the job user with random passwords, then turn auth on."""
        from pcocc.kv.credentials import new_password
        from pcocc.kv.gateway import prefix_end

        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        root_password = new_password()
        login = JobLogin(JOB_USER, new_password())
        calls: list[tuple[str, dict[str, Any]]] = [
            ("user/add", {"name": "root", "password": root_password}),
            ("user/grant", {"user": "root", "role": "root"}),
            ("role/add", {"name": "job"}),
        ]
        for grant in self.grants:
            end = prefix_end(grant.prefix)
            perm = {"permType": grant.perm, "key": b64(grant.prefix), "range_end": b64(end)}
            calls.append(("role/grant", {"name": "job", "perm": perm}))
        calls += [
            ("user/add", {"name": login.user, "password": login.password}),
            ("user/grant", {"user": login.user, "role": "job"}),
            ("enable", {}),
        ]
        for call, body in calls:
            try:
                status, answer = self._request("POST", f"/v3/auth/{call}", body)
            except OSError as err:
                status, answer = 0, {"message": str(err)}
            if status != 200:
                raise ServiceUnavailable(
                    f"cannot set up authentication of etcd in {self.directory} ({call}):"
                    f" {answer.get('message') or status}",
                    hint=f"see {self.log_path}",
                )
        fsutil.write_atomic(self.root_password_path, root_password + "\n", mode=0o600)
        self.login = login

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                last = f"etcd {proc.ended(self._proc.returncode)}"
                break
            if self.is_healthy():
                return
            time.sleep(0.005)
        raise ServiceUnavailable(
            f"etcd in {self.directory} did not become healthy ({last})",
            hint=f"see {self.log_path}",
        )

    def is_healthy(self) -> bool:
        """etcd answers healthy on its unix socket (then it also holds its TCP ports)."""
        try:
            status, answer = self._request("GET", "/health")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and answer.get("health") == "true"

    def stop(self) -> None:
        """Stop etcd (started here or by another process); no process is left behind."""
        if self._proc is not None:
            proc.stop(self._proc)  # our child: waiting for it is quicker than polling
        pid = self.pid
        if pid is not None:
            daemon.stop_pids([pid], what=f"etcd in {self.directory}")
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        self.pid_path.unlink(missing_ok=True)

    @classmethod
    def attach(cls, directory: str | os.PathLike) -> EtcdServer:
        """The server that another process started in ``directory``."""
        server = cls(directory)
        try:
            info = json.loads(server.info_path.read_text())
            host_port = info["endpoints"][0].split("://", 1)[-1]
            host, _, port = host_port.rpartition(":")
            server.address, server.client_port = host, int(port)
        except (OSError, ValueError, KeyError, IndexError):
            pass
        return server

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

