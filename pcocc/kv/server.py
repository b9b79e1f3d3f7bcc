"""A private, single-member etcd v3 server in a directory of its own, on free ports.

It listens on 127.0.0.1 and, when given one, on another address of this host (the one the
nodes of a multi-host job reach, see :mod:`pcocc.kv.private`); its endpoint is on that
address.

Used by local mode (``pcocc.kv.private``) and by the development cluster helpers. The server
is a plain child process in its own session; ``stop`` leaves no process behind, also when it
is called from another process (the pid is kept in ``<dir>/etcd.pid``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from pcocc import daemon, proc
from pcocc.errors import PcoccError, ServiceUnavailable

log = logging.getLogger(__name__)

_ADDRESS_IN_USE = "address already in use"
LOOPBACK = "127.0.0.1"


class EtcdServer:
    """Start, use, always stop: ``with EtcdServer(path) as etcd: etcd.endpoints``."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        start_timeout_s: float = 30.0,
        address: str = LOOPBACK,
    ):
        self.directory = Path(directory)
        #: the address of the endpoint (it listens on 127.0.0.1 too)
        self.address = address
        self.start_timeout_s = start_timeout_s
        self.client_port: int | None = None
        self.peer_port: int | None = None
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
    def endpoint(self) -> str:
        if self.client_port is None:
            raise PcoccError(f"etcd in {self.directory} is not started")
        return f"http://{self.address}:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint]

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        return daemon.read_pid_file(self.pid_path)

    # lifecycle -----------------------------------------------------------------------------
    def _argv(self, exe: str) -> list[str]:
        client = f"http://{self.address}:{self.client_port}"
        listen = client
        if self.address != LOOPBACK:
            listen += f",http://{LOOPBACK}:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            exe,
            "--name", "pcocc",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", listen,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"pcocc={peer}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"pcocc-{os.getpid()}-{self.peer_port}",
            # one member, no peer to wait for: elect it at once (the default 1 s election
            # timeout is most of etcd's start-up time)
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
        ]  # fmt: skip

    def start(self) -> EtcdServer:
        """Start etcd and wait until it answers its health check.

        :raise ToolMissing: etcd is not installed
        :raise ServiceUnavailable: it did not become healthy (names the log file)
        """
        exe = proc.which("etcd")
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.client_port, self.peer_port = daemon.free_ports(2, self.address)
            self.log_path.write_bytes(b"")
            # etcd reads ETCD_* variables as flags: do not let the caller's leak in
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
            self._proc = proc.spawn(self._argv(exe), env=env, log_path=self.log_path)
            self.pid_path.write_text(f"{self._proc.pid}\n")
            try:
                self._wait_healthy()
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

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"{self.endpoint}/health"
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                last = f"etcd {proc.ended(self._proc.returncode)}"
                break
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except (OSError, ValueError, urllib.error.URLError) as err:
                last = str(err)
            time.sleep(0.02)
        raise ServiceUnavailable(
            f"etcd in {self.directory} did not become healthy ({last})",
            hint=f"see {self.log_path}",
        )

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError, PcoccError):
            return False

    def stop(self) -> None:
        """Stop etcd (started here or by another process); no process is left behind."""
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
