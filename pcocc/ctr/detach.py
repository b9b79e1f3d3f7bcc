"""``pcocc run --detach``: a pod that outlives the command and the shell that ran it.

The command writes the run request to a file (as a multi-node run does) and starts
``pcocc internal ctr-detached --report-fd N FILE`` in a session of its own (``setsid``: no
controlling terminal, so no SIGHUP when the shell goes), with /dev/null as its standard
streams: the apps' output goes only to their log files. That process supervises the pod
like a foreground ``pcocc run`` does, and reports on the pipe ``N``, one JSON object a line:

- ``{"say": TEXT}``: a message about a slow step (image import...), printed by the command
- ``{"started": UUID}``: every app runs its program; the command prints the UUID, exit 0
- ``{"error": TEXT, "hint": TEXT, "status": N}``: the pod could not start; the command
  fails with it (an app's start error is the runtime's last line)

then closes the pipe. A supervisor that ends without reporting fails the command too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pcocc import proc
from pcocc.errors import PcoccError

if TYPE_CHECKING:
    from pcocc.config import Config
    from pcocc.ctr.pod import Notify, RunRequest
    from pcocc.ctr.pods import PodRecord


def supervisor_argv(
    request: Path, report_fd: int, log_args: Sequence[str] = (), tasks: Sequence[str] = ()
) -> list[str]:
    from pcocc.selfcmd import pcocc_argv

    return [
        *pcocc_argv(), *log_args, "internal", "ctr-detached",
        "--report-fd", str(report_fd), *tasks, str(request),
    ]


def run_detached(
    request: RunRequest, notify: Notify, log_args: Sequence[str] = (), *,
    nodes: int | None = None, tasks: int | None = None,
) -> str:
    """Start the pod of ``request`` under a supervisor of its own; returns its UUID once
    its apps run. With ``nodes``/``tasks``, one pod per task of the current allocation
    (:mod:`pcocc.ctr.podgroup`), seen as one multi-node pod.

    :raise PcoccError: the pod failed to start (with the supervisor's error and status)
    """
    from dataclasses import replace

    from pcocc.ctr.multinode import write_request

    path = write_request(replace(request, options=replace(request.options, detach=True)))
    r, w = os.pipe()
    try:
        counts = [*(["--nodes", str(nodes)] if nodes else []),
                  *(["--tasks", str(tasks)] if tasks else [])]
        proc.spawn(supervisor_argv(path, w, log_args, counts), pass_fds=(w,), new_session=True)
    except BaseException:
        os.close(r)
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as reports:
        for line in reports:
            msg = parse_report(line)
            if "say" in msg:
                notify(str(msg["say"]))
            elif "started" in msg:
                return str(msg["started"])
            elif "error" in msg:
                err = PcoccError(str(msg["error"]), hint=msg.get("hint") or None)
                err.exit_status = int(msg.get("status") or 1)
                raise err
    path.unlink(missing_ok=True)  # the supervisor may have died before reading it
    raise PcoccError(
        "the detached pod's supervisor ended before its apps started",
        hint="run the same command with --debug and without --detach to see why",
    )


def parse_report(line: bytes) -> dict:
    """One report line of the supervisor; an unreadable one reads as an error."""
    try:
        msg = json.loads(line)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        return {"error": f"unreadable report from the pod's supervisor: {line[:200]!r}"}
    return msg


class Reporter:
    """The supervisor's end of the report pipe; reports ``started`` or ``error`` once."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def _send(self, msg: dict) -> bool:
        """False if the command no longer reads (interrupted)."""
        if self.fd is None:
            return False
        try:
            os.write(self.fd, json.dumps(msg).encode() + b"\n")
        except OSError:
            return False
        return True

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @property
    def done(self) -> bool:
        return self.fd is None

    def say(self, text: str) -> None:
        self._send({"say": text})

    def started(self, rec: PodRecord) -> None:
        """:raise PcoccError: the command is gone before it could print the UUID (Ctrl-C):
        the pod is stopped rather than left running unknown to the user"""
        told = self._send({"started": rec.uuid})
        self._close()
        if not told:
            raise PcoccError(
                f"the command that started pod {rec.uuid} is gone: stopping the pod"
            )

    def error(self, err: PcoccError) -> None:
        self._send({"error": str(err), "hint": err.hint, "status": err.exit_status})
        self._close()


def supervise(request_path: str, report_fd: int, config: Config) -> int:
    """The detached supervisor: run the pod of the request, report how its start went;
    returns the pod's exit status once it ends."""
    from pcocc.ctr.multinode import read_request
    from pcocc.ctr.pod import run_request

    def run(reporter: Reporter) -> int:
        request = read_request(request_path)
        Path(request_path).unlink(missing_ok=True)
        return run_request(request, config, reporter.say, on_started=reporter.started)

    return reporting(report_fd, run)


def reporting(report_fd: int, run: Callable[[Reporter], int]) -> int:
    """``run(reporter)`` with every error reported on ``report_fd`` (once); its status."""
    reporter = Reporter(report_fd)
    try:
        status = run(reporter)
    except PcoccError as err:
        reporter.error(err)
        return err.exit_status
    except BaseException as err:
        reporter.error(PcoccError(f"the pod's supervisor failed: {err!r}"))
        raise
    if not reporter.done:  # cannot happen: run_pod reports or raises
        reporter.error(PcoccError("the pod ended before it was reported started"))
    return status
