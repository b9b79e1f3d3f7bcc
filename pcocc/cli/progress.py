"""Progress bars for long operations: drawn on stderr when it is a terminal, else nothing.

The bar only appears once an operation has lasted :data:`SHOW_AFTER_S`: importing rich costs
more than a quick operation (an image already in the store, a small copy), and a bar that
flashes for a fraction of a second tells nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from pcocc.repo.model import Progress, no_progress

#: Seconds an operation must last before its bar is drawn.
SHOW_AFTER_S = 0.3


@contextlib.contextmanager
def progress_bar(
    description: str, *, enabled: bool, show_after: float = SHOW_AFTER_S
) -> Iterator[Progress]:
    """Yield a ``progress(done_bytes, total_bytes)`` callback drawing a rich bar with bytes
    and rate (after ``show_after`` seconds); a callback doing nothing when not ``enabled``."""
    if not enabled:
        yield no_progress
        return
    lock = threading.Lock()
    state: dict[str, Any] = {"bar": None, "task": None, "last": (0, None), "closed": False}

    def start() -> None:
        with lock:
            if state["closed"]:
                return
            try:
                bar = _rich_bar()
                bar.start()
                done, total = state["last"]
                state["task"] = bar.add_task(description, total=total, completed=done)
                state["bar"] = bar
            except Exception:  # noqa: BLE001 - a bar that cannot be drawn is no error
                pass

    timer = threading.Timer(show_after, start)
    timer.daemon = True
    timer.start()

    def report(done_bytes: int, total_bytes: int | None) -> None:
        state["last"] = (done_bytes, total_bytes)
        bar = state["bar"]
        if bar is not None:
            bar.update(state["task"], completed=done_bytes, total=total_bytes)

    try:
        yield report
    finally:
        timer.cancel()
        with lock:  # waits for a bar being set up right now, then stops it
            state["closed"] = True
            bar = state["bar"]
        if bar is not None:
            bar.stop()


def _rich_bar() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )

    return RichProgress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )
