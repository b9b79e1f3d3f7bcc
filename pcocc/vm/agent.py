"""A minimal client of the QEMU guest agent, over the host side of its virtio-serial port.

QEMU listens on a unix socket (chardev ``qga0``); the agent in the guest reads and writes
JSON on the other end. Before the guest opens the port, what we send is lost and nothing
answers, so every exchange starts with ``guest-sync-delimited``: the agent answers with a
0xFF byte then the id we sent, which also discards stale replies.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pcocc.errors import PcoccError, ServiceUnavailable


class AgentError(PcoccError):
    """The guest agent answered with an error."""


class GuestAgent:
    """Talk to the guest agent of one VM; each call opens its own short connection, unless
    inside :meth:`kept`."""

    def __init__(self, socket_path: str | os.PathLike, *, label: str | None = None) -> None:
        self.socket_path = Path(socket_path)
        #: how messages name the socket (its real path when ``socket_path`` is a short
        #: /proc/self/fd/N alias)
        self.label = Path(label) if label else self.socket_path
        self._keep = False
        self._kept: tuple[socket.socket, AgentSession] | None = None

    @contextlib.contextmanager
    def kept(self) -> Iterator[GuestAgent]:
        """Inside, commands share one synchronised connection (each new one costs a
        synchronisation round trip, long under TCG). A connection on which a command
        got no answer is out of step: it is closed, and the next command opens a new one."""
        self._keep = True
        try:
            yield self
        finally:
            self._keep = False
            self.release()

    def release(self) -> None:
        """Close the kept connection now (QEMU serves one client at a time: another
        program may want the agent); a later command opens a new one."""
        if self._kept is not None:
            self._kept[0].close()
            self._kept = None

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout_s: float = 5.0) -> Any:
        """Run one agent command and return its ``return`` value.

        :raise ServiceUnavailable: the agent did not answer within ``timeout_s``
        :raise AgentError: the agent answered with an error
        """
        if not self._keep:
            with self.session(timeout_s) as session:
                return session.execute(command, arguments, timeout_s=timeout_s)
        if self._kept is None:
            sock = self._connect(timeout_s)
            try:
                self._kept = (sock, AgentSession(sock, self.label, timeout_s))
            except BaseException:
                sock.close()
                raise
        try:
            return self._kept[1].execute(command, arguments, timeout_s=timeout_s)
        except AgentError:
            raise  # an answer: the connection is still in step
        except BaseException:
            self.release()
            raise

    @contextlib.contextmanager
    def session(self, timeout_s: float = 5.0) -> Iterator[AgentSession]:
        """One connection for several commands (synchronised once, within ``timeout_s``).

        QEMU serves one client at a time on the socket: keep sessions short.

        :raise ServiceUnavailable: the agent did not answer the synchronisation in time
        """
        sock = self._connect(timeout_s)
        try:
            yield AgentSession(sock, self.label, timeout_s)
        finally:
            sock.close()

    def ping(self, timeout_s: float = 2.0) -> bool:
        """True when the agent answers within ``timeout_s``."""
        try:
            self.execute("guest-ping", timeout_s=timeout_s)
        except (ServiceUnavailable, AgentError):
            return False
        return True

    def exec(self, path: str, args: list[str] | None = None, *,
             timeout_s: float = 30.0) -> tuple[int, str, str]:
        """Run a program in the guest; return (exit code, stdout, stderr)."""
        deadline = time.monotonic() + timeout_s
        pid = self.execute("guest-exec", {"path": path, "arg": args or [],
                                          "capture-output": True})["pid"]
        while True:
            status = self.execute("guest-exec-status", {"pid": pid},
                                  timeout_s=max(0.5, deadline - time.monotonic()))
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                return int(status.get("exitcode", -1)), out, err
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"guest command {path} did not end in {timeout_s:g} s")
            time.sleep(0.1)

    def _connect(self, timeout_s: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(os.fspath(self.socket_path))
        except OSError as err:
            sock.close()
            raise ServiceUnavailable(
                f"cannot connect to the guest agent socket {self.label}: {err}"
            ) from err
        return sock


class AgentSession:
    """A synchronised connection to the agent: commands and their replies, in order."""

    def __init__(self, sock: socket.socket, path: Path, timeout_s: float) -> None:
        self.sock, self.path = sock, path
        self.reader = _Reader(sock, time.monotonic() + timeout_s, path)
        sync_id = secrets.randbelow(2**31)
        sock.sendall(b"\xff" + _encode("guest-sync-delimited", {"id": sync_id}))
        self.reader.skip_to_delimiter()
        while self.reader.message().get("return") != sync_id:
            pass

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout_s: float = 5.0) -> Any:
        """Run one agent command and return its ``return`` value.

        :raise ServiceUnavailable: no answer within ``timeout_s`` (the session is then
            out of step: end it)
        :raise AgentError: the agent answered with an error
        """
        self.reader.deadline = time.monotonic() + timeout_s
        try:
            self.sock.sendall(_encode(command, arguments))
        except OSError as err:
            raise ServiceUnavailable(f"guest agent socket {self.path}: {err}") from err
        reply = self.reader.message()
        if "error" in reply:
            err = reply["error"]
            desc = err.get("desc") if isinstance(err, dict) else err
            cls = err.get("class") if isinstance(err, dict) else "Error"
            raise AgentError(f"guest agent {command}: {cls}: {desc}")
        return reply.get("return")


def _encode(command: str, arguments: dict[str, Any] | None) -> bytes:
    msg: dict[str, Any] = {"execute": command}
    if arguments is not None:
        msg["arguments"] = arguments
    return json.dumps(msg).encode() + b"\n"


class _Reader:
    """Read JSON messages (one per line) from the agent socket before a deadline."""

    def __init__(self, sock: socket.socket, deadline: float, path: Path) -> None:
        self.sock, self.deadline, self.path = sock, deadline, path
        self.buf = b""

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceUnavailable(f"the guest agent on {self.path} did not answer in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError as err:
            raise ServiceUnavailable(
                f"the guest agent on {self.path} did not answer in time"
            ) from err
        except OSError as err:
            raise ServiceUnavailable(f"guest agent socket {self.path}: {err}") from err
        if not data:
            raise ServiceUnavailable(f"guest agent socket {self.path} was closed")
        self.buf += data

    def skip_to_delimiter(self) -> None:
        while b"\xff" not in self.buf:
            self.buf = b""
            self._fill()
        self.buf = self.buf[self.buf.index(b"\xff") + 1:]

    def message(self) -> dict[str, Any]:
        while True:
            line, sep, rest = self.buf.partition(b"\n")
            if sep:
                self.buf = rest
                line = line.replace(b"\xff", b"")  # a delimiter may precede any reply
                if line.strip():
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(msg, dict):
                        return msg
                continue
            self._fill()
