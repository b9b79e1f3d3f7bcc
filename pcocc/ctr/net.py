"""The network of a pod with ``--private-net``: loopback only, or slirp4netns.

Without ``--private-net`` a pod uses the host's network (what HPC applications want). With
it, the pod gets its own network namespace; when slirp4netns is installed (mode ``slirp``,
the default) the pod supervisor connects that namespace to the outside through a ``tap0``
device that slirp4netns serves from user space: address 10.0.2.100/24, gateway 10.0.2.2,
DNS 10.0.2.3. No privilege is needed. By default slirp4netns gets
``--disable-host-loopback``, so the pod cannot reach services listening on the host's
loopback through 10.0.2.2 (``allow_host_loopback`` lifts this). Mode ``loopback`` keeps
only ``lo``.

The app must not start before ``tap0`` is up, and slirp4netns needs the pid of a process in
the new namespace. So the first app of the pod waits at a *gate*: a Unix socket on which
the supervisor listens. For crun and runc a ``createRuntime`` hook (run once the namespaces
exist, before the app starts) connects and sends the container's pid; for the ``unshare``
backend, :mod:`pcocc.ctr.nsinit` connects itself and the supervisor takes its pid from the
socket's peer credentials. The supervisor starts slirp4netns on that pid, waits on its
``--ready-fd``, and answers ``go``; slirp4netns stops when the supervisor closes its
``--exit-fd`` (also when the supervisor dies).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import socket

from pcocc import proc
from pcocc.errors import PcoccError, UsageError

log = logging.getLogger(__name__)

#: values of ``--private-net=MODE``
NET_MODES = ("auto", "slirp", "loopback")
TAP_NAME = "tap0"
POD_ADDRESS = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
MTU = 65520
#: the annotation that tells :mod:`pcocc.ctr.nsinit` where the gate is
GATE_ANNOTATION = "org.pcocc.net-gate"
GATE_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PortForward:
    """``--port [HOSTADDR:]HOSTPORT:PODPORT[/tcp|/udp]``: a host port forwarded into the pod."""

    host_port: int
    pod_port: int
    host_addr: str = "0.0.0.0"
    proto: str = "tcp"

    def hostfwd_request(self) -> dict[str, Any]:
        """The slirp4netns API request that sets this forwarding up."""
        return {
            "execute": "add_hostfwd",
            "arguments": {
                "proto": self.proto,
                "host_addr": self.host_addr,
                "host_port": self.host_port,
                "guest_port": self.pod_port,
            },
        }


@dataclass(frozen=True)
class NetPlan:
    """What the pod's network is: ``host``, ``loopback`` or ``slirp``."""

    mode: str = "host"
    allow_host_loopback: bool = False
    ports: tuple[PortForward, ...] = ()


def parse_port(value: str) -> PortForward:
    """``[HOSTADDR:]HOSTPORT:PODPORT[/tcp|/udp]`` -> PortForward.

    :raise UsageError: naming the value and the expected form
    """
    spec, _, proto = value.partition("/")
    proto = proto or "tcp"
    parts = spec.rsplit(":", 2)
    bad = UsageError(
        f"--port: bad value '{value}'",
        hint="use [HOSTADDR:]HOSTPORT:PODPORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:8080:80",
    )
    if proto not in ("tcp", "udp") or len(parts) < 2:
        raise bad
    addr = parts[0] if len(parts) == 3 else "0.0.0.0"
    try:
        host_port, pod_port = int(parts[-2]), int(parts[-1])
    except ValueError:
        raise bad from None
    if not (0 < host_port < 65536 and 0 < pod_port < 65536) or not addr:
        raise bad
    return PortForward(host_port, pod_port, addr, proto)


def parse_net_mode(value: str) -> str:
    """A checked ``--private-net`` mode.

    :raise UsageError: unknown mode
    """
    if value not in NET_MODES:
        raise UsageError(
            f"--private-net: unknown mode '{value}'",
            hint=f"choose among {', '.join(NET_MODES)} (--private-net alone means auto)",
        )
    return value


def plan_network(
    private_net: bool,
    mode: str = "auto",
    *,
    allow_host_loopback: bool = False,
    ports: Sequence[str] = (),
    runtime_name: str = "",
    warn: Callable[[str], None] | None = None,
) -> NetPlan:
    """Decide the pod's network from the options and what is installed.

    ``auto`` is ``slirp`` when slirp4netns is installed, else ``loopback`` with a warning.
    The ``vm`` runtime has no network device: its apps see loopback only.

    :raise ToolMissing: mode ``slirp`` asked for explicitly, or ports to forward, and
        slirp4netns is missing
    :raise UsageError: options that need another mode; a bad ``--port``
    """
    forwards = tuple(parse_port(p) for p in ports)
    if forwards and not (private_net and mode in ("auto", "slirp") and runtime_name != "vm"):
        raise UsageError(
            "--port needs --private-net with slirp4netns",
            hint="add --private-net (auto or slirp); with the host network, the apps "
            "listen on the host's ports directly",
        )
    if not private_net:
        if allow_host_loopback:
            raise UsageError(
                "--allow-host-loopback needs --private-net",
                hint="the host network already reaches the host's loopback",
            )
        return NetPlan("host")
    mode = parse_net_mode(mode)
    if mode == "loopback" or runtime_name == "vm":
        return NetPlan("loopback")
    if mode == "slirp" or forwards:
        proc.which("slirp4netns")
    elif not is_slirp_installed():
        if warn:
            warn("slirp4netns is not installed: the pod's network has loopback only")
        return NetPlan("loopback")
    return NetPlan("slirp", allow_host_loopback, forwards)


def is_slirp_installed() -> bool:
    try:
        proc.which("slirp4netns")
    except PcoccError:
        return False
    return True


def slirp_argv(
    pid: int,
    *,
    ready_fd: int,
    exit_fd: int,
    allow_host_loopback: bool = False,
    api_socket: str | None = None,
    mtu: int = MTU,
    tap_name: str = TAP_NAME,
) -> list[str]:
    """The slirp4netns command line serving the network namespace of ``pid``."""
    argv = [
        proc.which("slirp4netns"),
        "--configure",
        f"--mtu={mtu}",
        f"--ready-fd={ready_fd}",
        f"--exit-fd={exit_fd}",
    ]
    if not allow_host_loopback:
        argv.append("--disable-host-loopback")
    if api_socket:
        argv.append(f"--api-socket={api_socket}")
    return [*argv, str(pid), tap_name]


def gate_hook(gate_path: str) -> dict[str, Any]:
    """The OCI ``createRuntime`` hook that makes crun/runc wait at the gate."""
    nsinit = Path(__file__).with_name("nsinit.py")
    return {
        "path": sys.executable,
        "args": [sys.executable, "-I", "-S", str(nsinit), "--net-hook", gate_path],
    }


def add_gate(spec: dict[str, Any], gate_path: str) -> dict[str, Any]:
    """``spec`` (a config.json dict, changed in place) waiting at ``gate_path`` first."""
    spec.setdefault("hooks", {}).setdefault("createRuntime", []).append(gate_hook(gate_path))
    spec.setdefault("annotations", {})[GATE_ANNOTATION] = gate_path
    return spec


class PodNetwork:
    """The supervisor's side: the gate, then slirp4netns for the life of the pod."""

    def __init__(
        self, plan: NetPlan, gate_path: Path, log_path: Path, api_path: Path | None = None
    ):
        self.plan = plan
        self.gate_path = gate_path
        #: slirp4netns's API socket (port forwarding); only when the plan forwards ports
        self.api_path = api_path if plan.ports else None
        self.log_path = log_path
        self._listener: socket.socket | None = None
        self._slirp: proc.Popen | None = None
        self._exit_w: int | None = None

    def open_gate(self) -> None:
        """Listen on the gate socket (before the first app starts)."""
        import socket

        self.gate_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.gate_path))
            sock.listen(1)
        except OSError as err:
            sock.close()
            raise PcoccError(f"cannot listen on {self.gate_path}: {err.strerror}") from err
        self._listener = sock

    def connect(self, app: proc.Popen, timeout_s: float = GATE_TIMEOUT_S) -> None:
        """Wait for the first app at the gate, start slirp4netns, then let the app go.

        :raise PcoccError: the app ended or never came, or slirp4netns failed (with the
            end of its log)
        """
        assert self._listener is not None
        conn = self._accept(app, timeout_s)
        try:
            pid = self._read_pid(conn, timeout_s)
            self._start_slirp(pid)
            for fwd in self.plan.ports:
                self._forward(fwd)
            conn.sendall(b"go\n")
        finally:
            conn.close()
            self._close_gate()

    def _accept(self, app: proc.Popen, timeout_s: float) -> socket.socket:
        import select

        deadline = time.monotonic() + timeout_s
        assert self._listener is not None
        while True:
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if ready:
                conn, _ = self._listener.accept()
                return conn
            if app.poll() is not None:
                raise PcoccError(
                    "the pod's first app ended before its network was set up",
                    hint="see the error above; try --private-net=loopback",
                )
            if time.monotonic() > deadline:
                raise PcoccError(
                    f"the pod's first app did not reach its network gate within {timeout_s:g} s"
                )

    @staticmethod
    def _read_pid(conn: socket.socket, timeout_s: float) -> int:
        """The pid the client sent, or 0: the client's own pid (from its credentials)."""
        import socket
        import struct

        conn.settimeout(timeout_s)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                break
            data += chunk
        try:
            pid = int(data.strip() or b"0")
        except ValueError:
            raise PcoccError(f"bad message at the network gate: {data[:40]!r}") from None
        if pid <= 0:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
        return pid

    def _start_slirp(self, pid: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        import select

        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        argv = slirp_argv(
            pid,
            ready_fd=ready_w,
            exit_fd=exit_r,
            allow_host_loopback=self.plan.allow_host_loopback,
            api_socket=str(self.api_path) if self.api_path else None,
        )
        if self.api_path:
            self.api_path.unlink(missing_ok=True)
        try:
            self._slirp = proc.spawn(argv, log_path=self.log_path, pass_fds=(ready_w, exit_r))
        except BaseException:
            for fd in (ready_r, ready_w, exit_r, exit_w):
                os.close(fd)
            raise
        os.close(ready_w)
        os.close(exit_r)
        self._exit_w = exit_w
        try:
            ready, _, _ = select.select([ready_r], [], [], timeout_s)
            data = os.read(ready_r, 16) if ready else b""
        finally:
            os.close(ready_r)
        if data.strip() != b"1":
            self.stop()
            tail = _tail(self.log_path)
            raise PcoccError(
                f"slirp4netns did not set up the pod's network{': ' + tail if tail else ''}",
                hint=f"see {self.log_path}, or use --private-net=loopback",
            )
        log.debug("slirp4netns %d serves the network of pid %d", self._slirp.pid, pid)

    def _forward(self, fwd: PortForward) -> None:
        """Ask slirp4netns to forward ``fwd``.

        :raise PcoccError: slirp4netns refused (port in use, ...), with its reason
        """
        import socket

        assert self.api_path is not None
        what = f"port {fwd.host_addr}:{fwd.host_port} -> {fwd.pod_port}/{fwd.proto}"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(self.api_path))
                s.sendall(json.dumps(fwd.hostfwd_request()).encode())
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            answer = json.loads(reply or b"{}")
        except (OSError, ValueError) as err:
            raise PcoccError(f"cannot forward {what}: slirp4netns API: {err}") from err
        if "return" not in answer:
            why = (answer.get("error") or {}).get("desc") or reply.decode(errors="replace")
            raise PcoccError(
                f"cannot forward {what}: {why}", hint="choose another host port with --port"
            )
        log.debug("forwarded %s", what)

    def _close_gate(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self.gate_path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop slirp4netns (closing its exit fd) and remove the gate. Idempotent."""
        self._close_gate()
        if self._exit_w is not None:
            os.close(self._exit_w)
            self._exit_w = None
        if self._slirp is not None:
            try:
                self._slirp.wait(timeout=5)
            except proc.TimeoutExpired:
                proc.stop(self._slirp)
            self._slirp = None
        if self.api_path is not None:
            self.api_path.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 2) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


def gate_path_for(runtime_dir: Path, pod_uuid: str, kind: str = "net") -> Path:
    """A short socket path (sun_path holds 107 bytes) for the pod's gate (``net``) or
    slirp4netns's API (``slirp``).

    Both sockets must stay out of other users' reach (one who reached the API socket could
    forward ports into the pod, one who reached the gate could stall it), so when the
    runtime directory is too deep they go to a private 0700 directory of ours in the
    temporary directory, never into the shared temporary directory itself.
    """
    name = f"{kind}-{pod_uuid[:12]}.sock"
    path = runtime_dir / name
    if len(os.fsencode(path)) > 100:
        from pcocc import paths

        path = paths.tmp_dir() / name
    return path


__all__: Sequence[str] = (
    "NetPlan",
    "PodNetwork",
    "PortForward",
    "add_gate",
    "parse_net_mode",
    "parse_port",
    "plan_network",
    "slirp_argv",
)
