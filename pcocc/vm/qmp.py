"""A small synchronous QMP client on top of ``qemu.qmp`` (QMPClient).

Each ``QmpClient`` owns a private asyncio event loop and runs every call to completion in
it, so callers stay synchronous. Every ``qemu.qmp`` error is wrapped in a pcocc error that
names the socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Self

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from pcocc.errors import PcoccError, ServiceUnavailable

log = logging.getLogger(__name__)


class QmpError(PcoccError):
    """QEMU refused or failed a QMP command."""


class QmpClient:
    """Connect to the QMP socket of one VM and run commands, synchronously.

    Use as a context manager: ``with QmpClient(path, timeout_s=5) as qmp: qmp.execute(...)``.
    """

    def __init__(self, socket_path: str | os.PathLike, *, name: str = "vm",
                 timeout_s: float = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)
        self._connected = False

    def __enter__(self) -> Self:
        if not self._connected:
            try:
                self.connect()
            except BaseException:
                self.close()  # __exit__ will not run
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Any, what: str, timeout_s: float | None = None) -> Any:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            try:
                return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
            except BaseException:
                # a failed or cut-short connect leaves tasks (qemu.qmp's disconnect) behind;
                # once connected, the tasks on the loop are the live connection's own
                if not self._connected:
                    self._cancel_pending()
                raise
        except TimeoutError as err:
            raise ServiceUnavailable(
                f"QMP {what} on {self.socket_path} timed out after {timeout:g} s"
            ) from err
        except ExecuteError as err:
            raise QmpError(f"QMP {what} failed: {err.error_class}: {err}") from err
        except ConnectError as err:
            raise ServiceUnavailable(
                f"cannot connect to QMP socket {self.socket_path}: {err.exc}",
                hint="is the VM still running?",
            ) from err
        except (QMPError, OSError, EOFError) as err:
            raise ServiceUnavailable(f"QMP {what} on {self.socket_path} failed: {err}") from err

    def connect(self) -> None:
        """Connect and negotiate capabilities.

        :raise ServiceUnavailable: no QEMU answers on the socket within the timeout
        """
        if self._loop.is_closed():
            raise PcoccError(f"QMP client for {self.socket_path} is closed")
        self._run(self._client.connect(os.fspath(self.socket_path)), "connect")
        self._connected = True

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout_s: float | None = None) -> Any:
        """Run one QMP command and return its ``return`` value.

        :raise QmpError: QEMU answered with an error
        :raise ServiceUnavailable: the connection failed or timed out
        """
        log.debug("qmp %s: %s %s", self.socket_path, command, arguments or "")
        return self._run(self._client.execute(command, arguments), command, timeout_s)

    def send_fd(self, fd: int) -> None:
        """Pass ``fd`` to QEMU (SCM_RIGHTS); the next ``getfd`` or ``add-fd`` names it."""
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as err:
            raise ServiceUnavailable(f"cannot pass a file to QEMU on {self.socket_path}:"
                                     f" {err}") from err

    def query_status(self) -> str:
        """The run state of the VM ("running", "paused", ...)."""
        reply = self.execute("query-status")
        if not isinstance(reply, dict) or "status" not in reply:
            raise QmpError(f"unexpected reply to query-status: {reply!r}")
        return str(reply["status"])

    def system_reset(self) -> None:
        self.execute("system_reset")

    def human_monitor_command(self, command_line: str) -> str:
        """Run an HMP command (e.g. ``info block``) and return its text output."""
        return str(self.execute("human-monitor-command", {"command-line": command_line}))

    def quit(self) -> None:
        """Ask QEMU to exit; the connection drops as it does, which is not an error."""
        try:
            self.execute("quit")
        except ServiceUnavailable as err:
            log.debug("connection closed during quit: %s", err)

    def close(self) -> None:
        try:
            if self._connected:
                self._loop.run_until_complete(
                    asyncio.wait_for(self._client.disconnect(), self.timeout_s)
                )
        except (TimeoutError, QMPError, OSError, EOFError) as err:
            log.debug("QMP disconnect from %s: %s", self.socket_path, err)
        finally:
            self._connected = False
            self._cancel_pending()
            self._loop.close()

    def _cancel_pending(self) -> None:
        """Finish the tasks a failed call left on the loop: a loop closed or dropped under
        them makes asyncio print their tracebacks when the process exits."""
        for _ in range(3):  # cancelling a connect schedules its own disconnect task
            pending = asyncio.all_tasks(self._loop)
            if not pending:
                return
            for task in pending:
                task.cancel()
            try:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            except Exception as err:  # noqa: BLE001 - best effort while closing
                log.debug("QMP cleanup on %s: %s", self.socket_path, err)
