"""Act on a running pod from outside its supervisor: ``pcocc pod stop``, ``pod logs --follow``.

Both work on any running pod of this node (detached or not), through its record: the apps'
runtime processes (pid and start time, to never signal a reused pid) and their log files.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from pcocc.ctr.pods import PodRecord, PodStore, process_start_ticks
from pcocc.errors import PcoccError, TimedOut

#: how long the supervisor gets to record the ends of apps killed with SIGKILL
KILL_WAIT_S = 30.0


def check_stoppable(rec: PodRecord) -> None:
    """:raise PcoccError: the pod does not run, or runs on another node"""
    if rec.state != "running":
        raise PcoccError(
            f"pod {rec.uuid} is {rec.state}, not running: nothing to stop",
            hint="see 'pcocc pod status'",
        )
    if not rec.nodes and rec.node != os.uname().nodename:  # a multi-node pod: any node
        raise PcoccError(
            f"pod {rec.uuid} runs on node {rec.node}", hint="run 'pcocc pod stop' there"
        )


def signal_apps(rec: PodRecord, signum: int) -> None:
    """Send ``signum`` to every app of the pod that still runs."""
    from pcocc.ctr.probe import get_runtime

    runtime = get_runtime(rec.runtime)
    for app in rec.apps:
        if app.pid and app.pid_start and process_start_ticks(app.pid) == app.pid_start:
            runtime.send_signal(app.container_id, app.pid, signum)


def stop_pod(
    store: PodStore, rec: PodRecord, *, timeout_s: float = 10.0, force: bool = False
) -> PodRecord:
    """SIGTERM to every app, up to ``timeout_s`` for the pod to end, then SIGKILL
    (``force``: SIGKILL at once). Returns the record of the ended pod."""
    check_stoppable(rec)
    if not force:
        signal_apps(rec, signal.SIGTERM)
        try:
            return store.wait(rec, timeout_s)
        except TimedOut:
            rec = store.load(rec.uuid)
    signal_apps(rec, signal.SIGKILL)
    return store.wait(rec, KILL_WAIT_S)


def follow_logs(
    store: PodStore,
    rec: PodRecord,
    app_names: list[str],
    write: Callable[[str, bytes], None],
    *,
    poll_s: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Copy what the apps ``app_names`` write to their logs to ``write(app, data)``, from
    the start, until the pod is no longer running and every log is read to its end."""
    logs = {name: store.log_path(rec.uuid, name) for name in app_names}
    follow_files(store, rec.uuid, logs, write, poll_s=poll_s, sleep=sleep)


def follow_files(
    store: PodStore,
    uuid: str,
    logs: Mapping[str, Path],
    write: Callable[[str, bytes], None],
    *,
    poll_s: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Copy what is appended to the files ``logs`` (label -> path) to ``write(label, data)``,
    from their start, until the pod ``uuid`` is no longer running and all are read."""
    files: dict[str, BinaryIO] = {}
    try:
        while True:
            now = store.load(uuid)
            running = now.state == "running" or (now.state == "prepared" and now.pid is not None)
            got = False
            for label, path in logs.items():
                f = files.get(label)
                if f is None:
                    try:
                        f = files[label] = open(path, "rb")  # noqa: SIM115
                    except FileNotFoundError:
                        continue
                data = f.read(65536)
                if data:
                    write(label, data)
                    got = True
            if not got:
                if not running:
                    return  # every log read after the pod ended
                sleep(poll_s)
    finally:
        for f in files.values():
            f.close()
